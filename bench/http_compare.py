"""HTTP through the sidecar vs plain mitmproxy vs direct, in one run.

    .venv/bin/python bench/http_compare.py [--duration 10] [--connections 1,8] [--rounds 3]

Starts nginx (Debian's nginx-light) serving a small response, plain mitmproxy
(``mitmdump``, regular mode, the venv's) and the sidecar in record mode (its
forward proxy; payloads sealed, as by default). wrk drives each with keep-alive
connections: through a proxy it sends absolute-form requests (``GET http://...``)
as HTTP proxy clients do for plain HTTP. Each round runs the three targets back
to back so they see the same machine load; medians over rounds are compared.

Prints requests/second, the latency each proxy adds per request over direct
(p50 and p99 differences), and the ratios sidecar/mitmproxy; writes the same as
JSON and text under bench/results/. The targets (issue 4): the sidecar within
10 % of mitmproxy's throughput, and p50 added latency under 2 ms with keep-alive.
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

from tests.fix_pg import free_port  # noqa: E402
from tests.fix_sidecar import start_sidecar  # noqa: E402

BODY = "x" * 512  # a small JSON-API-sized answer: per-request cost dominates, not bytes
_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_PCT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def start_nginx(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    (work / "logs").mkdir(parents=True)
    conf = work / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n"
        f"pid {work}/nginx.pid;\n"
        f"error_log {work}/logs/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  access_log off;\n"
        "  keepalive_requests 10000000;\n"  # keep-alive for the whole run, as the clients do
        "  keepalive_timeout 300s;\n"
        f"  client_body_temp_path {work}/body;\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f'    location / {{ default_type application/json; return 200 \'{{"v":"{BODY}"}}\'; }}\n'
        "  }\n"
        "}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


def start_mitmdump(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "mitmdump"), "-q", "--mode", f"regular@127.0.0.1:{port}",
         "--set", f"confdir={work / 'mitmproxy'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc, timeout=60)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM, not SIGKILL: nginx's master must live long enough to stop its workers.
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wrk(
    target: int, origin: int, connections: int, duration: int, work: Path, proxied: bool
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if proxied:
        # An HTTP proxy client's request: absolute-form target, Host of the origin.
        script = work / f"proxy-{origin}.lua"
        script.write_text(
            f'wrk.path = "http://127.0.0.1:{origin}/"\nwrk.headers["Host"] = "127.0.0.1:{origin}"\n'
        )
        command += ["-s", str(script)]
    command.append(f"http://127.0.0.1:{target}/")
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration * 3 + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    if "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        raise RuntimeError(f"wrk saw errors through port {target}:\n{out.stdout}")
    rps = _RPS.search(out.stdout)
    pct = {p: float(v) * _UNIT[u] for p, v, u in _PCT.findall(out.stdout)}
    return {
        "rps": float(rps[1]) if rps else float("nan"),
        "p50_ms": pct.get("50", float("nan")),
        "p99_ms": pct.get("99", float("nan")),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,8", help="keep-alive connections per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target (medians)")
    parser.add_argument("--sidecar-args", default="", help="extra flags for the sidecar")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (
        shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
    ):
        print("needs wrk and nginx (Debian: wrk, nginx-light; scripts/setup.sh installs them)")
        return 2
    connections = [int(c) for c in args.connections.split(",")]

    results: list[dict[str, object]] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="flux-http-bench-") as tmp:
        work = Path(tmp)
        nginx, origin = start_nginx(work / "nginx")
        stack.callback(stop, nginx)
        mitm, mitm_port = start_mitmdump(work)
        stack.callback(stop, mitm)
        sidecar = start_sidecar(work / "flux", None, *args.sidecar_args.split(), expect=("http",))
        stack.callback(sidecar.stop)
        ports = {
            "direct": origin,
            "mitmproxy": mitm_port,
            "flux-record": sidecar.listeners["http"][1],
        }
        for port in ports.values():  # warm up: connections, code paths
            wrk(port, origin, 1, 1, work, proxied=port != origin)
        for n in connections:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
            for i in range(args.rounds):
                names = list(ports) if i % 2 == 0 else [*reversed(ports)]
                for name in names:
                    samples[name].append(wrk(ports[name], origin, n, args.duration, work,
                                             proxied=name != "direct"))  # fmt: skip
            row: dict[str, object] = {"connections": n, "samples": samples}
            for name, runs in samples.items():
                row[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results.append(row)
            print(format_row(row), flush=True)
        memory = {"flux-record": peak_rss_mb(sidecar.proc.pid), "mitmproxy": peak_rss_mb(mitm.pid)}
        time.sleep(2)  # the recorder writes in batches
        store = sidecar.stats()

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": args.duration,
        "rounds": args.rounds,
        "response_bytes": len(BODY) + 8,
        "sidecar_args": args.sidecar_args.split(),
        "results": results,
        "peak_rss_mb": memory,
        "record_store": {k: store.get(k) for k in ("events", "events.dropped", "file_bytes")},
    }
    text = render(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (out / f"http-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"http-{stamp}.txt").write_text(text + "\n")
    return 0


def ratios(row: dict[str, object]) -> dict[str, float]:
    direct, mitm, flux = (row[k] for k in ("direct", "mitmproxy", "flux-record"))
    assert isinstance(direct, dict) and isinstance(mitm, dict) and isinstance(flux, dict)
    return {
        "rps_flux_over_mitmproxy": flux["rps"] / mitm["rps"],
        "rps_flux_over_direct": flux["rps"] / direct["rps"],
        "added_p50_ms_flux": flux["p50_ms"] - direct["p50_ms"],
        "added_p99_ms_flux": flux["p99_ms"] - direct["p99_ms"],
        "added_p50_ms_mitmproxy": mitm["p50_ms"] - direct["p50_ms"],
        "added_p99_ms_mitmproxy": mitm["p99_ms"] - direct["p99_ms"],
        "added_p50_flux_over_mitmproxy": (flux["p50_ms"] - direct["p50_ms"])
        / max(mitm["p50_ms"] - direct["p50_ms"], 1e-9),
    }


def format_row(row: dict[str, object]) -> str:
    r = ratios(row)
    parts = [f"c={row['connections']}"]
    for name in ("direct", "mitmproxy", "flux-record"):
        m = row[name]
        assert isinstance(m, dict)
        parts.append(f"{name} {m['rps']:.0f} req/s p50 {m['p50_ms']:.2f}ms p99 {m['p99_ms']:.2f}ms")
    parts.append(f"flux/mitmproxy req/s {r['rps_flux_over_mitmproxy']:.2f}")
    return " | ".join(parts)


def render(report: dict[str, object]) -> str:
    lines = [
        f"HTTP benchmark {report['date']}  ({report['machine']}, {report['duration_s']} s x "  # type: ignore[index]
        f"{report['rounds']} rounds per target, medians; keep-alive; plain HTTP)",
        "",
        f"{'conns':>5} {'direct req/s':>13} {'mitmproxy req/s':>16} {'flux req/s':>11} "
        f"{'flux/mitm':>9} {'flux/direct':>11}   added latency p50 / p99 (ms): mitmproxy | flux",
    ]
    results = report["results"]
    assert isinstance(results, list)
    for row in results:
        r = ratios(row)
        direct, mitm, flux = (row[k]["rps"] for k in ("direct", "mitmproxy", "flux-record"))
        lines.append(
            f"{row['connections']:>5} {direct:>13.0f} {mitm:>16.0f} "
            f"{flux:>11.0f} {r['rps_flux_over_mitmproxy']:>9.2f} "
            f"{r['rps_flux_over_direct']:>11.2f}   "
            f"{r['added_p50_ms_mitmproxy']:.2f} / {r['added_p99_ms_mitmproxy']:.2f} | "
            f"{r['added_p50_ms_flux']:.2f} / {r['added_p99_ms_flux']:.2f}"
        )
    lines += [
        "",
        "targets: flux/mitm req/s >= 0.90; flux added p50 < 2 ms with keep-alive",
        f"peak RSS MB: {report['peak_rss_mb']}",
        f"sidecar store after the run: {report['record_store']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
