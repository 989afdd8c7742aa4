"""pgbench through the sidecar vs direct vs PgBouncer, in one run.

    .venv/bin/python bench/pgbench_compare.py [--duration 10] [--clients 1,8]

Starts a throwaway PostgreSQL 15 (or ``--server-version 18``) cluster, PgBouncer
(session pooling) and the
sidecar in passthrough mode, in record mode (payloads sealed to a 3072-bit key,
as in production) and in record mode with ``--no-encrypt``; then for every protocol mode
(simple, extended, prepared) and client count runs pgbench against each target
back to back, so the ratios compare runs made under the same machine load.
Prints TPS, the ratios sidecar/direct and sidecar/PgBouncer, what encryption
costs record mode (1 - sealed/plain TPS; the budget is 10 %), and the sidecar's
peak resident memory; writes the same as JSON and text under bench/results/.
Workloads: pgbench's read-only ``select-only`` and its default TPC-B-like ``tpcb``
(three UPDATEs, a SELECT and an INSERT per transaction), whose writes record mode
captures as mutations; the record-mode/PgBouncer ratios of both are listed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recorder.keys import generate_keypair  # noqa: E402
from tests.fix_pg import PgServer, _chown, free_port, start_pg_server  # noqa: E402
from tests.fix_sidecar import SidecarProcess, start_sidecar  # noqa: E402

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
WORKLOADS = {"select-only": ["-S"], "tpcb": []}


def pgbench(server: PgServer, host: str, port: int, args: list[str], timeout: float) -> str:
    env = {**os.environ, "PGPASSWORD": server.password}
    command = [
        str(server.bin_dir / "pgbench")
        if (server.bin_dir / "pgbench").exists()
        else shutil.which("pgbench") or "pgbench",
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        server.user,
        *args,
        server.dbname,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return result.stdout


def tps(server: PgServer, target: tuple[str, int], command: list[str], duration: int) -> float:
    out = pgbench(server, *target, command, duration * 3 + 60)
    match = _TPS.search(out)
    return float(match[1]) if match else float("nan")


def start_pgbouncer(server: PgServer, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{server.dbname} = host={server.host} port={server.port} dbname={server.dbname} "
        f"user={server.user} password={server.password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir = {workdir}\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'users.txt'}\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    (workdir / "users.txt").write_text(f'"{server.user}" ""\n')
    _chown(workdir, server.run_as)
    kwargs: dict[str, object] = {}
    if server.run_as is not None:
        kwargs = {"user": server.run_as.uid, "group": server.run_as.gid}
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    proc = subprocess.Popen(
        [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pgbench(server, "127.0.0.1", port, ["-S", "-t", "1", "-n"], 10)
            return proc, port
        except RuntimeError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(
        f"pgbouncer did not start: {(workdir / 'pgbouncer.log').read_text()[-2000:]}"
    )


def start_forwarder(server: PgServer) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "uvloop_forwarder.py"),
            "0",
            server.host,
            str(server.port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.rsplit(":", 1)[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorder_pid(sidecar: SidecarProcess) -> int:
    pid = sidecar.proc.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"recorder.ingest" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError("the sidecar has no recorder process")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--protocols", default="simple,extended,prepared")
    parser.add_argument(
        "--workloads",
        default="select-only,tpcb",
        help="comma list of: " + ", ".join(WORKLOADS) + " (tpcb: pgbench's default TPC-B-like "
        "script, whose writes record mode captures as mutations)",
    )
    parser.add_argument(
        "--server-version", type=int, default=15, choices=(15, 18),
        help="PostgreSQL major version (18 captures with RETURNING old/new, 15 with a CTE)",
    )  # fmt: skip
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--sidecar-args", default="", help="extra flags for both sidecars")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of flux-record and flux-record-plain each (alternating; medians compared)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    protocols = args.protocols.split(",")
    workloads = args.workloads.split(",")
    extra = args.sidecar_args.split()

    results: list[dict[str, object]] = []
    memory: dict[str, float] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the servers run as an unprivileged user when we are root
        server = start_pg_server(
            args.server_version, {"max_connections": "100", "shared_buffers": "128MB"}
        )
        stack.callback(server.destroy)
        pgbench(server, server.host, server.port, ["-i", "-q", "-s", str(args.scale)], 600)
        bouncer_dir = work / "pgbouncer"
        bouncer_dir.mkdir()
        bouncer, bouncer_port = start_pgbouncer(server, bouncer_dir)
        stack.callback(bouncer.kill)
        forwarder, forwarder_port = start_forwarder(server)
        stack.callback(forwarder.kill)
        sidecars: dict[str, SidecarProcess] = {}
        public = generate_keypair()[1].to_text()  # the private half is not needed to record
        for name, mode, flags in (
            ("passthrough", "passthrough", []),
            ("record", "record", []),
            ("record-plain", "record", ["--no-encrypt"]),
        ):
            sidecar = start_sidecar(
                work / f"flux-{name}", server, *extra, *flags, mode=mode,
                env={"FLUX_PUBLIC_KEY": public},
            )  # fmt: skip
            stack.callback(sidecar.stop)
            sidecars[name] = sidecar
        targets = {
            "direct": (server.host, server.port),
            "pgbouncer": ("127.0.0.1", bouncer_port),
            "uvloop-forwarder": ("127.0.0.1", forwarder_port),
            "flux-passthrough": (sidecars["passthrough"].host, sidecars["passthrough"].port),
            "flux-record": (sidecars["record"].host, sidecars["record"].port),
            # Right after flux-record, so the two see the same machine load.
            "flux-record-plain": (sidecars["record-plain"].host, sidecars["record-plain"].port),
        }
        for workload in workloads:
            for protocol in protocols:
                for n in clients:
                    row: dict[str, object] = {
                        "workload": workload,
                        "protocol": protocol,
                        "clients": n,
                    }
                    command = [*WORKLOADS[workload], "-M", protocol, "-c", str(n), "-j", str(n),
                               "-T", str(args.duration), "-n"]  # fmt: skip
                    for name in targets:
                        if name not in ENCRYPTION_PAIR:
                            row[name] = tps(server, targets[name], command, args.duration)
                    # Sealed and plain alternate, --repeat times, and the medians are
                    # compared: the difference is small next to a shared machine's noise.
                    samples: dict[str, list[float]] = {name: [] for name in ENCRYPTION_PAIR}
                    for i in range(args.repeat):
                        for name in ENCRYPTION_PAIR[:: 1 if i % 2 == 0 else -1]:
                            samples[name].append(tps(server, targets[name], command, args.duration))
                    for name, values in samples.items():
                        row[name] = statistics.median(values)
                    row["encryption_samples"] = samples
                    results.append(row)
                    print(_format_row(row), flush=True)
        for mode, sidecar in sidecars.items():
            memory[mode] = peak_rss_mb(sidecar.proc.pid)
        recorded: dict[str, dict[str, float]] = {
            name: dict(sidecars[name].stats()) for name in ("record", "record-plain")
        }
        # Robust to a shared machine's noise, unlike TPS: what the recorder process spent
        # per stored event (decoding, sealing, SQLite), sealed and plain.
        for name, stats in recorded.items():
            cpu = cpu_seconds(recorder_pid(sidecars[name]))
            stats["recorder_us_per_event"] = round(cpu / max(stats.get("events", 0), 1) * 1e6, 1)

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": args.duration,
        "server_version": args.server_version,
        "repeat": args.repeat,
        "scale": args.scale,
        "sidecar_args": extra,
        "results": results,
        "sidecar_peak_rss_mb": memory,
        "record_store": {
            name: {
                k: stats.get(k)
                for k in ("events", "events.dropped", "file_bytes", "recorder_us_per_event")
            }
            for name, stats in recorded.items()
        },
        "encryption_cost": encryption_cost(results),
    }
    text = render(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (out / f"pgbench-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"pgbench-{stamp}.txt").write_text(text + "\n")
    return 0


def _format_row(row: dict[str, object]) -> str:
    def rate(name: str) -> float:
        value = row[name]
        assert isinstance(value, float)
        return value

    direct, bouncer = rate("direct"), rate("pgbouncer")
    cells = [
        f"{row['workload']:<11} {row['protocol']:<8} c={row['clients']:<2}",
        f"direct {direct:9.0f}",
        f"pgbouncer {bouncer:9.0f}",
    ]
    for name in ("uvloop-forwarder", "flux-passthrough", "flux-record"):
        value = rate(name)
        cells.append(
            f"{name} {value:7.0f} ({value / direct:.2f}x direct, {value / bouncer:.2f}x bouncer)"
        )
    plain = rate("flux-record-plain")
    cells.append(
        f"unencrypted {plain:7.0f} (encryption costs {1 - rate('flux-record') / plain:.1%})"
    )
    return " | ".join(cells)


ENCRYPTION_BUDGET = 0.10  # issue 6: at most 10 % of record-mode throughput
ENCRYPTION_PAIR = ("flux-record", "flux-record-plain")


def encryption_cost(results: list[dict[str, object]]) -> dict[str, float]:
    """1 - sealed/plain record-mode TPS: the mean over rows, and the worst row."""
    costs = [
        1 - float(str(row["flux-record"])) / float(str(row["flux-record-plain"])) for row in results
    ]
    return {
        "mean": sum(costs) / len(costs) if costs else float("nan"),
        "max": max(costs, default=0),
    }


def _record_vs_bouncer(results: list[dict[str, object]]) -> list[str]:
    """flux-record / PgBouncer per protocol and client count, the workloads side by side:
    what recording (and, for writes, mutation capture) costs against a plain pooler."""
    ratios: dict[tuple[object, object], list[str]] = {}
    for row in results:
        ratio = float(str(row["flux-record"])) / float(str(row["pgbouncer"]))
        key = (row["protocol"], row["clients"])
        ratios.setdefault(key, []).append(f"{row['workload']} {ratio:.2f}x")
    return [
        f"record-mode vs pgbouncer, {protocol} c={clients}: {', '.join(cells)}"
        for (protocol, clients), cells in ratios.items()
    ]


def render(report: dict[str, object]) -> str:
    lines = [
        f"pgbench comparison, {report['date']}, PostgreSQL {report.get('server_version', 15)}, "
        f"{report['duration_s']}s per run, scale {report['scale']}, machine {report['machine']}"
    ]
    results = report["results"]
    assert isinstance(results, list)
    lines += [_format_row(row) for row in results]
    lines += _record_vs_bouncer(results)
    lines.append(f"sidecar peak RSS (MB): {report['sidecar_peak_rss_mb']}")
    lines.append(f"record-mode store: {report['record_store']}")
    cost = report["encryption_cost"]
    assert isinstance(cost, dict)
    verdict = "within" if cost["mean"] <= ENCRYPTION_BUDGET else "OVER"
    lines.append(
        f"encryption cost in record mode: mean {cost['mean']:.1%}, max {cost['max']:.1%} "
        f"({verdict} the {ENCRYPTION_BUDGET:.0%} budget)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
