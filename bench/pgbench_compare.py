"""pgbench through the sidecar vs direct vs PgBouncer, in one run.

    .venv/bin/python bench/pgbench_compare.py [--duration 10] [--clients 1,8]

Starts a throwaway PostgreSQL 15 cluster, PgBouncer (session pooling) and the
sidecar in passthrough and in record mode, then for every protocol mode
(simple, extended, prepared) and client count runs pgbench against each target
back to back, so the ratios compare runs made under the same machine load.
Prints TPS, the ratios sidecar/direct and sidecar/PgBouncer, and the sidecar's
peak resident memory; writes the same as JSON and text under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
        "--workloads", default="select-only", help="comma list of: " + ", ".join(WORKLOADS)
    )
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--sidecar-args", default="", help="extra flags for both sidecars")
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
        server = start_pg_server(15, {"max_connections": "100", "shared_buffers": "128MB"})
        stack.callback(server.destroy)
        pgbench(server, server.host, server.port, ["-i", "-q", "-s", str(args.scale)], 600)
        bouncer_dir = work / "pgbouncer"
        bouncer_dir.mkdir()
        bouncer, bouncer_port = start_pgbouncer(server, bouncer_dir)
        stack.callback(bouncer.kill)
        forwarder, forwarder_port = start_forwarder(server)
        stack.callback(forwarder.kill)
        sidecars: dict[str, SidecarProcess] = {}
        for mode in ("passthrough", "record"):
            sidecar = start_sidecar(work / f"flux-{mode}", server, *extra, mode=mode)
            stack.callback(sidecar.stop)
            sidecars[mode] = sidecar
        targets = {
            "direct": (server.host, server.port),
            "pgbouncer": ("127.0.0.1", bouncer_port),
            "uvloop-forwarder": ("127.0.0.1", forwarder_port),
            "flux-passthrough": (sidecars["passthrough"].host, sidecars["passthrough"].port),
            "flux-record": (sidecars["record"].host, sidecars["record"].port),
        }
        for workload in workloads:
            for protocol in protocols:
                for n in clients:
                    row: dict[str, object] = {
                        "workload": workload,
                        "protocol": protocol,
                        "clients": n,
                    }
                    for name, (host, port) in targets.items():
                        out = pgbench(
                            server,
                            host,
                            port,
                            [
                                *WORKLOADS[workload],
                                "-M",
                                protocol,
                                "-c",
                                str(n),
                                "-j",
                                str(n),
                                "-T",
                                str(args.duration),
                                "-n",
                            ],
                            args.duration * 3 + 60,
                        )
                        match = _TPS.search(out)
                        row[name] = float(match[1]) if match else float("nan")
                    results.append(row)
                    print(_format_row(row), flush=True)
        for mode, sidecar in sidecars.items():
            memory[mode] = peak_rss_mb(sidecar.proc.pid)
        recorded = sidecars["record"].stats()

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": args.duration,
        "scale": args.scale,
        "sidecar_args": extra,
        "results": results,
        "sidecar_peak_rss_mb": memory,
        "record_store": {k: recorded.get(k) for k in ("events", "events.dropped", "file_bytes")},
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
    def tps(name: str) -> float:
        value = row[name]
        assert isinstance(value, float)
        return value

    direct, bouncer = tps("direct"), tps("pgbouncer")
    cells = [
        f"{row['workload']:<11} {row['protocol']:<8} c={row['clients']:<2}",
        f"direct {direct:9.0f}",
        f"pgbouncer {bouncer:9.0f}",
    ]
    for name in ("flux-passthrough", "flux-record"):
        value = tps(name)
        cells.append(
            f"{name} {value:7.0f} ({value / direct:.2f}x direct, {value / bouncer:.2f}x bouncer)"
        )
    return " | ".join(cells)


def render(report: dict[str, object]) -> str:
    lines = [
        f"pgbench comparison, {report['date']}, {report['duration_s']}s per run, "
        f"scale {report['scale']}, machine {report['machine']}"
    ]
    results = report["results"]
    assert isinstance(results, list)
    lines += [_format_row(row) for row in results]
    lines.append(f"sidecar peak RSS (MB): {report['sidecar_peak_rss_mb']}")
    lines.append(f"record-mode store: {report['record_store']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
