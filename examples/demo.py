"""The README's demo: record a failing request, fix the bug, prove the fix by replay.

    bash scripts/demo.sh        (sets up the machine, then runs this)

It starts a throwaway PostgreSQL, a payment API over HTTPS with a CA of its own
(examples/payments.py), the sidecar in record mode, and the order service of
examples/shop behind it: DATABASE_URL points at the sidecar's PostgreSQL port,
HTTPS_PROXY at its forward proxy, REQUESTS_CA_BUNDLE at its CA, and requests reach
the service through the sidecar's inbound proxy. OpenTelemetry in the service
carries each request's traceparent into its SQL (sqlcommenter) and its HTTPS calls.

One order fails: the payment API asks for 3-D Secure above 100 EUR, and the service
assumed every charge comes back with a receipt. After showing what the sidecar
recorded, the demo stops PostgreSQL and the payment API, restarts the service from a
patched copy (examples/shop/fix-receipt.patch), and replays the failed request with
every query and call answered from the recording. Everything is kept in ./.flux-demo.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
import requests  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from recorder.store import StoreError, open_store  # noqa: E402
from tests.fix_http import make_pki  # noqa: E402
from tests.fix_pg import PgServer, PgUnavailable, free_port, start_pg_server  # noqa: E402
from tests.fix_sidecar import SidecarProcess, run_flux, start_sidecar  # noqa: E402

SHOP = REPO / "examples" / "shop"
FIX = SHOP / "fix-receipt.patch"
PAYMENTS = REPO / "examples" / "payments.py"
WORK = Path(os.environ.get("FLUX_DEMO_DIR") or REPO / ".flux-demo").resolve()
START_TIMEOUT_S = 30.0
COLUMNS = "150"

console = Console(highlight=False, width=None if sys.stdout.isatty() else int(COLUMNS))

# (method, path, body): the last order is above the payment API's 3-D Secure threshold.
REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/orders", {"customer": "ada@example.com", "items": [{"sku": "tea", "qty": 2}]}),
    ("GET", "/orders/1", None),
    ("POST", "/orders", {"customer": "linus@example.com", "items": [{"sku": "mug", "qty": 3}]}),
    ("POST", "/orders", {"customer": "grace@example.com",
                         "items": [{"sku": "grinder", "qty": 1}, {"sku": "tea", "qty": 1}]}),
]  # fmt: skip


BEGAN = time.monotonic()


def step(text: str) -> None:
    console.print()
    console.rule(f"[bold]{text}[/]  [dim]{time.monotonic() - BEGAN:.1f}s[/]", align="left")


def flux(*args: str, title: str = "") -> subprocess.CompletedProcess[str]:
    """Runs and shows a flux command; the store, admin URL and token come from the env."""
    console.print(
        f"\n[bold cyan]$ flux {' '.join(args)}[/]" + (f"   [dim]# {title}[/]" if title else "")
    )
    result = run_flux(*args, check=False, env={"COLUMNS": COLUMNS}, timeout=120)
    out = (result.stdout.rstrip() + "\n" + result.stderr.rstrip()).strip()
    print(out, flush=True)
    return result


def start_pg() -> PgServer:
    for version in (15, 18):
        try:
            return start_pg_server(version)
        except PgUnavailable:
            continue
    raise SystemExit("no PostgreSQL 15 or 18 found: run `bash scripts/setup.sh`")


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A child process with its output in ``log``, stopped on the way out."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=out, text=True, cwd=REPO, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def start_payments(
    stack: contextlib.ExitStack, pki_dir: Path
) -> tuple[subprocess.Popen[str], str, Path]:
    pki = make_pki(pki_dir, "demo payments")
    proc = stack.enter_context(
        process(
            [sys.executable, str(PAYMENTS), "--cert", str(pki.cert_path), "--key",
             str(pki.key_path)],
            WORK / "payments.log",
        )
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"payments: listening (\S+)", line)
    if match is None:
        raise SystemExit(f"the payment API did not start: {(WORK / 'payments.log').read_text()}")
    return proc, match[1], pki.ca_path


def shop_env(
    sidecar: SidecarProcess, flux_ca: Path, payments_url: str, port: int
) -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    env.update(
        DATABASE_URL=sidecar.dsn(),
        HTTPS_PROXY=sidecar.url("http"),
        REQUESTS_CA_BUNDLE=str(flux_ca),
        PAYMENTS_URL=payments_url,
        PAYMENTS_KEY="sk_test_" + secrets.token_hex(12),
        PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_for_app(proc: subprocess.Popen[str], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return
        time.sleep(0.1)
    raise SystemExit(f"the shop did not start:\n{log.read_text()[-3000:]}")


def send_requests(inbound: str) -> tuple[list[str], str]:
    """Sends the requests through the inbound proxy: their trace ids, and the failed one's."""
    session = requests.Session()
    session.trust_env = False
    traces, failed = [], ""
    for method, path, body in REQUESTS:
        response = session.request(method, inbound + path, json=body, timeout=30)
        trace_id = response.headers.get("x-flux-trace-id", "?")
        traces.append(trace_id)
        what = f"{method:4} {path}"
        if body is not None:
            items = ", ".join(f"{i['qty']} x {i['sku']}" for i in body["items"])
            what += f"  {body['customer']}: {items}"
        colour = "green" if response.status_code < 400 else "red"
        answer = response.text.strip()
        answer = answer if len(answer) <= 60 else answer[:59] + "…"
        console.print(
            f"  {what:54} → [{colour}]{response.status_code}[/]  [dim]trace {trace_id[:8]}[/]"
            f"  {escape(answer)}"
        )
        if response.status_code >= 500 and not failed:
            failed = trace_id
    session.close()
    return traces, failed


def wait_for_recordings(
    data_dir: Path, traces: list[str], failed: str, timeout: float = 30.0
) -> None:
    """The recorder writes in batches: wait until every request is in the store with its
    queries and calls (read in place: cheaper than a flux command per poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(StoreError):
            store = open_store(data_dir, readonly=True)
            try:
                rows = {r.trace_id: r for r in store.list_executions(limit=len(traces) + 10)}
            finally:
                store.close()
            # A request's root event is written once its response is complete.
            if all(t in rows and rows[t].method is not None for t in traces) and (
                rows[failed].queries and rows[failed].calls
            ):
                return
        time.sleep(0.2)
    raise SystemExit("the recordings did not reach the store in time")


def last_error(log: Path) -> list[str]:
    """The innermost frame of the last traceback in ``log``, and the exception."""
    lines = log.read_text(errors="replace").splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not frames:
        return []
    out = []
    for line in lines[frames[-1] :]:
        out.append(line)
        if not line.startswith(" "):  # the exception line ends the traceback
            break
    return out


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def apply_fix(target: Path) -> None:
    shutil.copytree(SHOP, target)
    for cmd in (["patch", "-p1", "--quiet"], ["git", "apply", "-p1", "-"]):
        if shutil.which(cmd[0]) is None:
            continue
        subprocess.run(cmd, cwd=target, input=FIX.read_text(), text=True, check=True)
        return
    raise SystemExit("applying the fix needs `patch` or `git`")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    data_dir = WORK / "flux"
    token = secrets.token_hex(16)
    console.print(
        "[bold]flux demo[/]: an order service records through the sidecar, one "
        "request fails, and replay proves the fix without PostgreSQL or the payment API."
    )
    with contextlib.ExitStack() as stack:
        step("1. start PostgreSQL, the payment API, the sidecar and the shop")
        pg = start_pg()
        stack.callback(pg.destroy)
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute((SHOP / "schema.sql").read_text().encode())
        console.print(
            f"  PostgreSQL {pg.version}      127.0.0.1:{pg.port} (schema: examples/shop/schema.sql)"
        )
        payments, payments_url, payments_ca = start_payments(stack, WORK / "pki")
        console.print(
            f"  payment API        {payments_url} (HTTPS, certificate from a CA of its own)"
        )
        app_port = free_port()
        sidecar = start_sidecar(
            data_dir, pg, "--upstream-ca", str(payments_ca), "--admin-token", token,
            mode="record", app_url=f"http://127.0.0.1:{app_port}", timeout=60,
        )  # fmt: skip
        stack.callback(sidecar.stop)
        os.environ.update(
            FLUX_DATA_DIR=str(data_dir), FLUX_ADMIN_URL=sidecar.admin_url, FLUX_ADMIN_TOKEN=token
        )
        ports = {name: port for name, (_, port) in sidecar.listeners.items()}
        console.print(
            f"  sidecar (record)   postgres {ports['pg']}, https proxy {ports['http']}, "
            f"inbound {ports['inbound']}, admin {ports['admin']}"
        )
        flux_ca = WORK / "flux-ca.pem"
        flux_ca.write_text(run_flux("ca", "export").stdout)
        console.print(
            f"  [cyan]$ flux ca export > {shown(flux_ca)}[/]   [dim]# the shop trusts it[/]"
        )
        env = shop_env(sidecar, flux_ca, payments_url, app_port)
        shop_log = WORK / "shop.log"
        shop = stack.enter_context(process([sys.executable, str(SHOP / "app.py")], shop_log, env))
        wait_for_app(shop, app_port, shop_log)
        console.print(
            f"  shop               examples/shop/app.py on 127.0.0.1:{app_port}, "
            f"reached through {sidecar.url('inbound')}"
        )

        step("2. four requests through the sidecar")
        traces, failed = send_requests(sidecar.url("inbound"))
        if not failed:
            raise SystemExit("no request failed: the bug the demo shows did not happen")
        wait_for_recordings(data_dir, traces, failed)

        step("3. what the sidecar recorded")
        flux("traces", title="recent executions, newest first")
        flux("trace", failed, title="the failed request, span by span")
        flux("why", failed, title="its root cause")
        console.print(f"\n[bold]the shop's log ({shown(shop_log)}) says:[/]")
        for line in last_error(shop_log) or ["(no traceback)"]:
            console.print("  " + escape(line))

        step("4. stop PostgreSQL and the payment API: from now on nothing reaches them")
        pg.stop()
        stop(payments)
        stop(shop)
        console.print("  PostgreSQL stopped, payment API stopped, buggy shop stopped")

        step(f"5. the fix: {shown(FIX)}, applied to a copy of the shop")
        fixed_dir = WORK / "shop-fixed"
        apply_fix(fixed_dir)
        print(FIX.read_text()[FIX.read_text().index("--- ") :].rstrip())
        fixed = stack.enter_context(
            process([sys.executable, str(fixed_dir / "app.py")], WORK / "shop-fixed.log", env)
        )
        wait_for_app(fixed, app_port, WORK / "shop-fixed.log")
        console.print(f"  the fixed shop runs from {shown(fixed_dir)} on 127.0.0.1:{app_port}")

        step("6. replay the failed request against the fixed shop")
        flux("mode", "replay", title="answer every query and call from the recording")
        result = flux("replay", failed, title="re-run the recorded request, compare the response")
        console.print(
            f"\n[bold]flux replay exited {result.returncode}[/]; the recording is in "
            f"{shown(data_dir)} (try: .venv/bin/flux trace {failed[:8]} "
            f"--data-dir {shown(data_dir)})"
        )
    console.print(f"[dim]demo finished in {time.monotonic() - BEGAN:.1f}s[/]")
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
