"""``flux replay``, ``flux incident replay`` and ``flux resume`` against a real app.

One recording serves the module: the app (``tests/replay_app.py``, version 1) behind
a recording sidecar, in front of a PostgreSQL cluster of its own and an HTTPS origin
of its own. Then both upstreams are stopped and sentinels take their ports, the app
restarts as version 2 (the code change), and each test replays through the same
sidecar, asserting at the end that no sentinel saw a connection.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from recorder.keys import generate_keypair
from recorder.model import HTTP_INBOUND
from recorder.store import open_store
from tests.fix_http import Origin, Pki, export_ca, no_proxy_env
from tests.fix_pg import PgServer, PgUnavailable, start_pg_server
from tests.fix_sentinel import Sentinel
from tests.fix_sidecar import REPO, SidecarProcess, run_flux, start_sidecar

TOKEN = "replay-cli-token-5d0c"
ACCOUNTS = [(1, "ada", "100.50", 25), (2, "grace", "7.00", 0), (3, "edsger", "0.00", 10)]
NO_REQUEST = "5a1e" + "0" * 24 + "c0de"  # a trace with queries and no inbound request
COMMENTED = f"00-{NO_REQUEST}-00f067aa0ba902b7-01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class App:
    """``tests/replay_app.py`` as a process; ``restart(version)`` is the deploy."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port, self.env = port, env
        self.proc: subprocess.Popen[str] | None = None

    def start(self, version: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.replay_app", str(self.port)],
            cwd=REPO, env={**self.env, "APP_VERSION": str(version)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", "the app did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class World:
    sidecar: SidecarProcess
    app: App
    traces: dict[str, str]
    window: str  # the incident: ISO FROM..TO
    incident: list[str]
    sentinels: list[Sentinel]

    def flux(self, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {"FLUX_ADMIN_URL": self.sidecar.admin_url, "FLUX_ADMIN_TOKEN": token or ""}
        return run_flux(*args, "--data-dir", str(self.sidecar.data_dir), check=False, env=env)

    def replay(self, name: str, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.flux("replay", self.traces[name], "--output", "json", *args)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)

    def mode(self) -> str:
        return str(httpx.get(f"{self.sidecar.admin_url}/mode", timeout=10).json()["mode"])

    def assert_quiet(self) -> None:
        assert [s.connections for s in self.sentinels] == [0] * len(self.sentinels)


def call(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.request(method, base + path, **kw)


def seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric, fee_cents int)"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO accounts VALUES (%s, %s, %s, %s)", ACCOUNTS)


def record(sidecar: SidecarProcess, requests: list[tuple[str, str, str]]) -> dict[str, str]:
    traces = {}
    for name, method, path in requests:
        response = call(sidecar.url("inbound"), method, path)
        assert response.headers["x-app-version"] == "1", response.text
        traces[name] = response.headers["x-flux-trace-id"]
    return traces


def wait_for_inbound(data_dir: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        store = open_store(data_dir, readonly=True)
        try:
            found = sum(1 for _ in store.events(kind=HTTP_INBOUND))
        finally:
            store.close()
        if found >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{found} inbound requests recorded, wanted {count}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, test_pki: Pki) -> Iterator[World]:
    try:
        pg = start_pg_server(18)  # its own cluster: the test stops it
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    origin = Origin(test_pki)
    origin.start()
    origin_up = True
    tmp = tmp_path_factory.mktemp("replay-cli")
    app_port = free_port()
    started: list[Any] = []
    try:
        seed(pg.dsn())
        sidecar = start_sidecar(
            tmp / "flux", pg, "--upstream-ca", str(test_pki.ca_path),
            env={"FLUX_ADMIN_TOKEN": TOKEN}, expect=("pg", "http", "inbound"),
            app_url=f"http://127.0.0.1:{app_port}",
        )  # fmt: skip
        started.append(sidecar)
        env = no_proxy_env(
            DATABASE_URL=sidecar.dsn(), HTTPS_PROXY=sidecar.url("http"),
            REQUESTS_CA_BUNDLE=str(export_ca(sidecar)), ORIGIN_URL=origin.url(""),
        )  # fmt: skip
        app = App(app_port, env)
        started.append(app)
        app.start(version=1)
        traces = record(sidecar, [
            ("same", "GET", "/accounts/1"), ("fixed", "GET", "/quote/2?amount=10"),
            ("quote_ok", "GET", "/quote/1?amount=10"), ("regressed", "GET", "/report"),
            ("differs", "GET", "/profile/1"), ("volatile", "GET", "/stamp/3"),
            ("broken", "GET", "/broken"), ("pay", "GET", "/pay/1"),
        ])  # fmt: skip
        # Queries outside any request, attributed by their comment: a trace with no
        # inbound request to send again.
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            conn.execute(f"SELECT 1 /*traceparent='{COMMENTED}'*/")
        start = datetime.now().astimezone()
        incident = [("GET", f"/accounts/{1 + n % 3}") for n in range(20)]
        incident[13] = ("GET", "/broken")
        window_traces = record(sidecar, [(str(n), m, p) for n, (m, p) in enumerate(incident)])
        end = datetime.now().astimezone()
        wait_for_inbound(sidecar.data_dir, len(traces) + len(incident))
        # The upstreams go away; sentinels count whatever would still reach them.
        app.stop()
        pg.stop()
        origin.stop()
        origin_up = False
        sentinels = [Sentinel(pg.port), Sentinel(origin.https_port), Sentinel(origin.http_port)]
        started += sentinels
        app.start(version=2)
        yield World(
            sidecar=sidecar, app=app, traces=traces,
            window=f"{start.isoformat()}..{end.isoformat()}",
            incident=[window_traces[str(n)] for n in range(20)], sentinels=sentinels,
        )  # fmt: skip
    finally:
        for thing in reversed(started):
            if isinstance(thing, Sentinel):
                thing.close()
            else:
                thing.stop()
        if origin_up:
            origin.stop()
        pg.destroy()


def test_verdicts_and_exit_codes(world: World) -> None:
    code, same = world.replay("same")
    assert same["verdict"] == "same", same
    assert (code, same["verdict"], same["passing"]) == (0, "same", True)
    assert same["recorded"]["status"] == same["new"]["status"] == 200
    assert same["misses"] == [] and same["hits"] >= 1
    # The cookie's value is new each time; its name is what is compared.
    assert same["differences"] == []

    code, fixed = world.replay("fixed")
    assert (code, fixed["verdict"]) == (0, "fixed")
    assert (fixed["recorded"]["status"], fixed["new"]["status"]) == (500, 200)
    assert "GET /quote/2 → 500" in fixed["recorded"]["failures"]
    changes = {d["where"]: d for d in fixed["differences"]}
    assert changes["$.fee"] == {"where": "$.fee", "change": "added", "new": "0"}
    assert "DivisionByZero" in changes["$.error"]["recorded"]

    code, differs = world.replay("differs")
    assert (code, differs["verdict"]) == (1, "differs")
    assert {(d["where"], str(d["recorded"]), str(d["new"])) for d in differs["differences"]} == {
        ("$.owner", "ada", "Ada"),
        ("$.balance", "100.50", "100.5"),
    }

    code, broken = world.replay("broken")  # still failing, the same way
    assert (code, broken["verdict"], broken["passing"]) == (0, "same", False)
    world.assert_quiet()


def test_changed_query_regresses_with_a_miss_naming_the_recorded_statement(world: World) -> None:
    code, regressed = world.replay("regressed")
    assert (code, regressed["verdict"]) == (1, "regressed")
    assert (regressed["recorded"]["status"], regressed["new"]["status"]) == (200, 500)
    (miss,) = regressed["misses"]
    assert miss["kind"] == "pg.query" and "max(balance)" in miss["request"]
    assert "sum(balance)" in miss["closest"] and "max" not in miss["closest"]
    text = world.flux("replay", world.traces["regressed"])
    assert text.returncode == 1
    assert "regressed" in text.stdout and "closest recorded:" in text.stdout
    assert "sum(balance)" in text.stdout
    world.assert_quiet()


def test_ignore_paths_and_volatile_values(world: World) -> None:
    code, stamped = world.replay("volatile")
    assert (code, stamped["verdict"]) == (1, "differs")
    looks = {d["where"]: d.get("volatile") for d in stamped["differences"]}
    assert looks == {"$.served_at": "timestamp", "$.request_id": "uuid"}
    text = world.flux("replay", world.traces["volatile"])
    # Rich wraps at the terminal's width (COLUMNS when there is no terminal).
    assert "looks like a timestamp; --ignore '$.served_at'" in " ".join(text.stdout.split())
    code, ignored = world.replay("volatile", "--ignore", "$.served_at", "--ignore", "$..request_id")
    assert (code, ignored["verdict"], ignored["ignored"]) == (0, "same", 2)
    bad = world.flux("replay", world.traces["volatile"], "--ignore", "served_at")
    assert bad.returncode == 2 and "starts with $" in bad.stderr
    world.assert_quiet()


def test_https_call_answered_from_the_recording(world: World) -> None:
    code, paid = world.replay("pay")
    assert (code, paid["verdict"]) == (0, "same"), paid
    assert paid["hits"] >= 2 and paid["misses"] == []  # the query and the call
    world.assert_quiet()


def test_mode_is_restored_unless_asked_to_stay(world: World) -> None:
    assert world.mode() == "record"
    world.replay("quote_ok")
    assert world.mode() == "record"
    code, _ = world.replay("quote_ok", "--stay")
    assert code == 0 and world.mode() == "replay"
    # Already replaying: a new run, scoped to the next trace, with fresh consumption.
    code, again = world.replay("quote_ok")
    assert code == 0 and again["misses"] == [] and world.mode() == "replay"
    run_flux("mode", "record", "--admin", world.sidecar.admin_url, env={"FLUX_ADMIN_TOKEN": TOKEN})
    assert world.mode() == "record"
    world.assert_quiet()


def test_what_cannot_be_replayed_exits_2(world: World) -> None:
    unknown = world.flux("replay", "ab" * 16)
    assert unknown.returncode == 2 and "no execution with trace id" in unknown.stderr
    no_request = world.flux("replay", NO_REQUEST)
    assert no_request.returncode == 2 and "no recorded inbound request" in no_request.stderr
    no_token = world.flux("replay", world.traces["same"], token=None)
    assert no_token.returncode == 2 and "admin token" in no_token.stderr
    wrong_token = world.flux("replay", world.traces["same"], token="nope")
    assert wrong_token.returncode == 2 and "401" in wrong_token.stderr
    no_admin = run_flux(
        "replay", world.traces["same"], "--data-dir", str(world.sidecar.data_dir),
        "--admin", f"http://127.0.0.1:{free_port()}", check=False,
        env={"FLUX_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    assert no_admin.returncode == 2 and "cannot reach the admin API" in no_admin.stderr
    # Sealed to the sidecar's key: another private key cannot open the request.
    other = generate_keypair()[0].to_text()
    sealed = world.flux("replay", world.traces["fixed"], "--private-key", other)
    assert sealed.returncode == 2 and "sealed to key id" in sealed.stderr
    world.app.stop()
    try:
        no_app = world.flux("replay", world.traces["same"])
        assert no_app.returncode == 2 and "app behind the sidecar is unreachable" in no_app.stderr
        assert world.mode() == "record"  # put back even though the run failed
    finally:
        world.app.start(version=2)
    world.assert_quiet()


def test_incident_window(world: World) -> None:
    result = world.flux("incident", "replay", world.window)
    assert result.returncode == 1, result.stderr
    assert "19/20 passing" in result.stdout
    failing = world.incident[13]
    assert failing in result.stdout and "the ledger is still broken" in result.stdout
    as_json = world.flux("incident", "replay", world.window, "--output", "json")
    report = json.loads(as_json.stdout)
    assert (report["total"], report["passing"]) == (20, 19)
    assert [r["trace_id"] for r in report["results"]] == world.incident  # oldest first
    assert [r["trace_id"] for r in report["results"] if not r["passing"]] == [failing]
    empty = world.flux("incident", "replay", "2001-01-01T00:00..2001-01-01T00:05")
    assert empty.returncode == 2 and "no recorded request" in empty.stderr
    world.assert_quiet()


def test_admin_api_replay_endpoints(world: World) -> None:
    base = world.sidecar.admin_url
    info = httpx.get(f"{base}/info", timeout=10).json()
    host, port = world.sidecar.listeners["inbound"]
    assert info["listeners"]["inbound"] == f"{host}:{port}"
    assert info["app_url"] == f"http://127.0.0.1:{world.app.port}"
    before = info["replay"]["generation"]
    trace = world.traces["same"]
    for token in (None, "wrong"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        refused = httpx.post(f"{base}/replay", json={"trace": trace}, headers=headers, timeout=10)
        assert refused.status_code == 401
        assert httpx.get(f"{base}/replay", headers=headers, timeout=10).status_code == 401
    assert world.mode() == "record"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body in ({"trace": "xyz"}, {"trace": "0" * 32}, {}, ["x"]):
        bad = httpx.post(f"{base}/replay", json=body, headers=auth, timeout=10)
        assert bad.status_code == 400, body
    run = httpx.post(f"{base}/replay", json={"trace": trace.upper()}, headers=auth, timeout=10)
    assert run.json() == {
        "mode": "replay", "previous": "record", "epoch": run.json()["epoch"],
        "scope": trace, "generation": before + 1,
    }  # fmt: skip
    report = httpx.get(f"{base}/replay", headers=auth, timeout=10).json()
    assert (report["scope"], report["generation"], report["hits"]) == (trace, before + 1, 0)
    again = httpx.post(f"{base}/replay", json={"trace": None}, headers=auth, timeout=10).json()
    assert (again["previous"], again["scope"], again["generation"]) == ("replay", None, before + 2)
    httpx.post(f"{base}/mode", json={"mode": "record"}, headers=auth, timeout=10)
    world.assert_quiet()


def test_replay_endpoints_refused_without_a_configured_token(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path / "flux", None, expect=(), env={"FLUX_ADMIN_TOKEN": ""})
    try:
        base = sidecar.admin_url
        body = {"trace": "ab" * 16}
        auth = {"Authorization": "Bearer anything"}
        assert httpx.post(f"{base}/replay", json=body, headers=auth, timeout=10).status_code == 403
        assert httpx.get(f"{base}/replay", headers=auth, timeout=10).status_code == 403
        assert httpx.get(f"{base}/info", timeout=10).json()["mode"] == "record"
        no_app = run_flux("replay", "ab" * 16, "--admin", base, "--data-dir",
                          str(sidecar.data_dir), check=False, env={"FLUX_ADMIN_TOKEN": "x"})  # fmt: skip
        assert no_app.returncode == 2 and "no inbound listener" in no_app.stderr
    finally:
        sidecar.stop()


def test_resume_reruns_live_as_a_new_execution(
    pg_db: PgServer, origin: Origin, tmp_path: Path
) -> None:
    seed(pg_db.dsn())
    port = free_port()
    sidecar = start_sidecar(
        tmp_path / "flux", pg_db, env={"FLUX_ADMIN_TOKEN": TOKEN},
        expect=("pg", "http", "inbound"), app_url=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    env = no_proxy_env(DATABASE_URL=sidecar.dsn(), ORIGIN_URL=origin.url(""))
    app = App(port, env)
    try:
        app.start(version=2)
        charged = call(sidecar.url("inbound"), "POST", "/charge/1", json={"amount": "1.50"})
        assert charged.json() == {"id": 1, "balance": "99.00"}
        old = charged.headers["x-flux-trace-id"]
        wait_for_inbound(sidecar.data_dir, 1)
        flux_env = {"FLUX_ADMIN_URL": sidecar.admin_url, "FLUX_ADMIN_TOKEN": TOKEN}
        data = ("--data-dir", str(sidecar.data_dir))
        # No terminal to ask on (stdin is not a TTY here): refused, nothing re-run.
        refused = run_flux("resume", old, *data, check=False, env=flux_env)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert balance(pg_db) == "99.00"
        # From replay mode: resume records in record mode, then puts replay back.
        run_flux("mode", "replay", "--admin", sidecar.admin_url, env=flux_env)
        resumed = run_flux("resume", old, "--yes", *data, env=flux_env)
        new = resumed.stdout.split("as new trace ", 1)[1].split()[0]
        assert new != old and f"recorded as {new}: 200" in resumed.stdout
        assert balance(pg_db) == "97.50"  # real IO: the charge ran again
        assert httpx.get(f"{sidecar.admin_url}/mode", timeout=10).json()["mode"] == "replay"
        trace = json.loads(sidecar.flux("trace", new, "--output", "json").stdout)
        (inbound,) = [e for e in trace["events"] if e["kind"] == HTTP_INBOUND]
        headers = {name.lower(): value for name, value in inbound["attrs"]["request_headers"]}
        assert headers["x-flux-resumed-from"] == old
        assert any(e["kind"] == "pg.query" for e in trace["events"])
    finally:
        app.stop()
        sidecar.stop()


def balance(pg: PgServer) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()
    assert row is not None
    return str(row[0])
