"""``flux why``, ``flux trace diff`` and ``flux tail`` on executions recorded by a real
sidecar: a small app behind the inbound proxy that queries PostgreSQL through the sidecar
and calls the HTTPS origin (and a closed port) through its forward proxy."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.fix_app import AppHandler, AppServer, closed_port, send, serve, start_recording
from tests.fix_http import Origin, Pki, recorded, traceparent
from tests.fix_pg import PgServer
from tests.fix_sidecar import REPO, SidecarProcess

pytestmark = pytest.mark.pg

SUFFIX = secrets.token_hex(4)
USERS, AUDIT, ORDERS, LEDGER = (
    f"{name}_{SUFFIX}" for name in ("users", "audit", "orders", "ledger")
)


class App(AppServer):
    """``POST /signup`` inserts an audit row and a user in one transaction (500 on a
    duplicate email); ``GET /pay`` calls an API that answers 503; ``GET /report`` calls a
    closed port; ``GET /orders/<n>`` reads an order, and from ``version`` 2 on also reads
    its status and calls the API. Every query and call carries the traceparent the app got."""

    dead_url = ""
    version = 1


class Handler(AppHandler):
    server: App

    def do_POST(self) -> None:
        email = json.loads(self.body())["email"]
        comment = f"/*traceparent='{self.traceparent}'*/"
        try:
            with psycopg.connect(self.server.dsn) as conn, conn.transaction():
                conn.execute(f"INSERT INTO {AUDIT} (what) VALUES (%s) {comment}".encode(),
                             ("signup",))  # fmt: skip
                conn.execute(f"INSERT INTO {USERS} (email) VALUES (%s) {comment}".encode(),
                             (email,))  # fmt: skip
        except psycopg.errors.UniqueViolation:
            self.reply(500, {"error": "signup failed"})
            return
        self.reply(200, {"email": email})

    def do_GET(self) -> None:
        app, tp = self.server, self.traceparent
        session = app.session()
        try:
            if self.path == "/pay":
                answer = session.get(f"{app.origin}/status/503", headers={"traceparent": tp})
                self.reply(502, {"upstream": answer.status_code})
            elif self.path == "/report":
                answer = session.get(app.dead_url, headers={"traceparent": tp})
                self.reply(502, {"upstream": answer.status_code})
            elif self.path.startswith("/orders/"):
                order = int(self.path.rsplit("/", 1)[1])
                columns = "id, total" if app.version == 1 else "id, total, status"
                with psycopg.connect(app.dsn, autocommit=True) as conn:
                    row = conn.execute(
                        f"SELECT {columns} FROM {ORDERS} WHERE id = %s "
                        f"/*traceparent='{tp}'*/".encode(),
                        (order,),
                    ).fetchone()
                if app.version >= 2:
                    session.get(f"{app.origin}/hello", headers={"traceparent": tp})
                self.reply(200, {"order": [str(v) for v in row or ()]})
            else:
                self.reply(404, {})
        finally:
            session.close()


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    with serve(App(Handler)) as server:
        yield server


@pytest.fixture(scope="module")
def tables(pg15: PgServer) -> Iterator[None]:
    with psycopg.connect(pg15.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {USERS} (id serial PRIMARY KEY, email text UNIQUE NOT NULL)")
        conn.execute(f"CREATE TABLE {AUDIT} (id serial PRIMARY KEY, what text NOT NULL)")
        conn.execute(f"CREATE TABLE {ORDERS} (id int PRIMARY KEY, total numeric, status text)")
        conn.execute(f"INSERT INTO {ORDERS} VALUES (1, 10.50, 'paid'), (2, 3.00, 'new')")
        conn.execute(f"CREATE TABLE {LEDGER} (id serial PRIMARY KEY, class int, value int)")
        conn.execute(f"INSERT INTO {LEDGER} (class, value) VALUES (1, 10), (1, 20), (2, 100)")
    yield
    with psycopg.connect(pg15.dsn(), autocommit=True) as conn:
        for table in (USERS, AUDIT, ORDERS, LEDGER):
            conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(scope="module")
def sidecar(
    tmp_path_factory: pytest.TempPathFactory,
    pg15: PgServer,
    tables: None,
    test_pki: Pki,
    app: App,
    origin: Origin,
) -> Iterator[SidecarProcess]:
    data_dir = tmp_path_factory.mktemp("debug-cmds") / "flux"
    process = start_recording(app, data_dir, pg15, test_pki, origin)
    app.dead_url = f"http://127.0.0.1:{closed_port()}/x"
    yield process
    process.stop()


def has(*checks: Callable[[dict[str, Any]], bool]) -> Callable[[list[dict[str, Any]]], bool]:
    """A ``recorded`` predicate: every check is met by some event."""
    return lambda events: all(any(check(e) for e in events) for check in checks)


def inbound(e: dict[str, Any]) -> bool:
    return e["kind"] == "http.inbound"


def why(sidecar: SidecarProcess, trace: str) -> dict[str, Any]:
    result: dict[str, Any] = sidecar.flux_json("why", trace)
    return result


# -- why ------------------------------------------------------------------------------------


def test_why_unique_violation(sidecar: SidecarProcess) -> None:
    email = f"dup-{secrets.token_hex(3)}@example.com"
    assert send(sidecar, "POST", "/signup", json={"email": email}).status_code == 200
    failed = send(sidecar, "POST", "/signup", json={"email": email})
    assert failed.status_code == 500
    trace = failed.headers["x-flux-trace-id"]
    events = recorded(sidecar, trace, 4, has(
        inbound,
        lambda e: e["attrs"].get("sqlstate") == "23505",
        lambda e: e["kind"] == "mutation" and e["attrs"].get("status") == "rolled_back",
    ))  # fmt: skip
    (failing,) = [e for e in events if e["attrs"].get("sqlstate") == "23505"]

    result = why(sidecar, trace)
    assert result["failed"] and result["outcome"] == "POST /signup → 500"
    cause = result["cause"]
    assert cause["span"]["span_id"] == failing["span_id"] and cause["span"]["kind"] == "pg.query"
    assert (cause["sqlstate"], cause["error_class"]) == ("23505", "unique_violation")
    assert "duplicate key value violates unique constraint" in cause["message"]
    assert email in cause["detail"]  # a value: shown because the data dir's key opens it
    assert cause["values"] == {"parameters": [[email]]}  # one list per Bind
    assert cause["statement"].startswith(f"INSERT INTO {USERS} (email) VALUES ($1)")
    assert cause["transaction"] is not None and cause["transaction"]["what"].upper() == "BEGIN"
    assert [a["kind"] for a in result["ancestors"]] == ["http.inbound"]
    assert any(p["what"].lower().startswith(f"insert into {AUDIT}") for p in result["preceding"])
    (row,) = result["mutations"]
    assert (row["table"], row["op"], row["status"]) == (f"public.{AUDIT}", "insert", "rolled_back")
    assert "ON CONFLICT" in cause["suggestion"]

    text = sidecar.flux("why", trace).stdout
    assert f"#{failing['seq']} pg.query" in text
    assert "unique violation (SQLSTATE 23505)" in text and "rolled back" in text
    assert "ON CONFLICT" in text


def test_why_serialization_failure(sidecar: SidecarProcess) -> None:
    (t1, _, tp1), (t2, _, tp2) = traceparent(), traceparent()
    first = psycopg.connect(sidecar.dsn(), autocommit=True)
    second = psycopg.connect(sidecar.dsn(), autocommit=True)
    failure: psycopg.Error | None = None
    try:
        # Write skew: each reads the other's class and writes its own; one must fail.
        first.execute(f"BEGIN ISOLATION LEVEL SERIALIZABLE /*traceparent='{tp1}'*/".encode())
        second.execute(f"BEGIN ISOLATION LEVEL SERIALIZABLE /*traceparent='{tp2}'*/".encode())
        steps = [
            (first, f"SELECT sum(value) FROM {LEDGER} WHERE class = 1"),
            (second, f"SELECT sum(value) FROM {LEDGER} WHERE class = 2"),
            (first, f"INSERT INTO {LEDGER} (class, value) VALUES (2, 30)"),
            (second, f"INSERT INTO {LEDGER} (class, value) VALUES (1, 300)"),
            (first, "COMMIT"),
            (second, "COMMIT"),
        ]
        for conn, sql in steps:
            try:
                conn.execute(sql.encode())
            except psycopg.errors.SerializationFailure as exc:
                failure = exc
                conn.execute(b"ROLLBACK")
                break
    finally:
        first.close()
        second.close()
    assert failure is not None, "the second transaction committed: no write skew detected"
    events = recorded(sidecar, t2, 4, has(
        lambda e: e["attrs"].get("sqlstate") == "40001",
        lambda e: e["kind"] == "mutation" and e["attrs"].get("status") == "rolled_back",
    ))  # fmt: skip
    (failing,) = [e for e in events if e["attrs"].get("sqlstate") == "40001"]

    result = why(sidecar, t2)
    cause = result["cause"]
    assert result["failed"] and result["root"] is None
    assert cause["span"]["span_id"] == failing["span_id"]
    assert cause["error_class"] == "serialization_failure"
    assert "could not serialize access" in cause["message"]
    assert cause["transaction"]["what"].upper().startswith("BEGIN ISOLATION LEVEL SERIALIZABLE")
    assert "retry the whole transaction" in cause["suggestion"]
    assert [(m["op"], m["status"]) for m in result["mutations"]] == [("insert", "rolled_back")]

    recorded(sidecar, t1, 4, has(lambda e: e["attrs"].get("tags") == ["COMMIT"]))
    committed = sidecar.flux("why", t1)
    assert "did not fail" in committed.stdout and committed.returncode == 0
    assert why(sidecar, t1)["failed"] is False


def test_why_upstream_503(sidecar: SidecarProcess) -> None:
    response = send(sidecar, "GET", "/pay")
    assert response.status_code == 502 and response.json() == {"upstream": 503}
    trace = response.headers["x-flux-trace-id"]
    events = recorded(sidecar, trace, 2, has(inbound, lambda e: e["kind"] == "http.outbound"))
    (call,) = [e for e in events if e["kind"] == "http.outbound"]

    result = why(sidecar, trace)
    cause = result["cause"]
    assert cause["span"]["span_id"] == call["span_id"]
    assert (cause["status"], cause["error_class"]) == (503, "upstream_5xx")
    assert cause["call"].startswith("GET https://127.0.0.1:") and "/status/503" in cause["call"]
    assert "retry idempotent calls with backoff" in cause["suggestion"]
    assert [c["kind"] for c in result["consequences"]] == ["http.inbound"]
    assert "upstream 503" in sidecar.flux("why", trace).stdout


def test_why_connection_refused(sidecar: SidecarProcess, app: App) -> None:
    response = send(sidecar, "GET", "/report")
    assert response.status_code == 502 and response.json() == {"upstream": 502}
    trace = response.headers["x-flux-trace-id"]
    events = recorded(sidecar, trace, 2, has(inbound, lambda e: e["kind"] == "http.outbound"))
    (call,) = [e for e in events if e["kind"] == "http.outbound"]

    cause = why(sidecar, trace)["cause"]
    assert cause["span"]["span_id"] == call["span_id"]
    assert (cause["error_kind"], cause["error_class"]) == (
        "connection_refused",
        "connection_refused",
    )
    port = app.dead_url.split(":")[2].split("/")[0]
    assert f"127.0.0.1:{port}" in cause["suggestion"]
    text = sidecar.flux("why", trace).stdout
    assert "connection refused" in text and f"#{call['seq']} http.outbound" in text


def test_why_on_a_success_and_on_an_unknown_id(sidecar: SidecarProcess) -> None:
    ok = send(sidecar, "GET", "/orders/2")
    trace = ok.headers["x-flux-trace-id"]
    recorded(sidecar, trace, 2, has(inbound, lambda e: e["kind"] == "pg.query"))
    result = sidecar.flux("why", trace)
    assert result.returncode == 0 and "did not fail" in result.stdout
    unknown = sidecar.flux("why", secrets.token_hex(16), check=False)
    assert unknown.returncode == 2 and "no execution" in unknown.stderr


# -- trace diff -----------------------------------------------------------------------------


def test_trace_diff_before_and_after_a_code_change(sidecar: SidecarProcess, app: App) -> None:
    traces = []
    for version in (1, 1, 2):
        app.version = version
        response = send(sidecar, "GET", "/orders/1")
        assert response.status_code == 200
        traces.append(response.headers["x-flux-trace-id"])
    app.version = 1
    wanted = (2, 2, 3)
    for trace, count in zip(traces, wanted, strict=True):
        recorded(sidecar, trace, count, lambda events: any(inbound(e) for e in events))
    before, again, after = traces

    # Latency is left out (the machine is shared): only what the code did is compared.
    same = sidecar.flux("trace", "diff", before, again, "--threshold", "600000", check=False)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no differences" in same.stdout

    result = sidecar.flux("trace", "diff", before, after, "--threshold", "600000",
                          "--output", "json", check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    diff = json.loads(result.stdout)
    assert diff["differs"] and (diff["a"], diff["b"]) == (before, after)
    (query,) = [s for s in diff["spans"] if (s["a"] or s["b"])["kind"] == "pg.query"]
    assert query["op"] == "changed"
    changes = {c["field"]: (c["a"], c["b"]) for c in query["changes"]}
    old, new = changes["statement"]
    assert f"select id, total from {ORDERS}" in old.lower()  # the normalized statements
    assert f"select id, total, status from {ORDERS}" in new.lower()
    assert changes["row 1"] == (["1", "10.50"], ["1", "10.50", "paid"])
    (added,) = [s for s in diff["spans"] if s["op"] == "only_b"]
    assert added["b"]["kind"] == "http.outbound" and "/hello" in added["b"]["what"]
    assert diff["summary"]["only_a"] == 0

    text = sidecar.flux("trace", "diff", before[:12], after[:12], check=False).stdout
    assert "~ " in text and "+ " in text and "/hello" in text
    assert "1 only in b" in text


def test_flux_trace_id_still_works_next_to_diff(sidecar: SidecarProcess) -> None:
    response = send(sidecar, "GET", "/orders/2")
    trace = response.headers["x-flux-trace-id"]
    recorded(sidecar, trace, 2)
    assert trace in sidecar.flux("trace", trace).stdout
    bad = sidecar.flux("trace", "diff", trace, check=False)
    assert bad.returncode == 2 and "flux trace diff" in bad.stderr


# -- tail -----------------------------------------------------------------------------------


class Tail:
    """``flux tail`` as a subprocess, started before the traffic it should report."""

    def __init__(self, sidecar: SidecarProcess, *args: str) -> None:
        command = [sys.executable, "-m", "flux_proxy", "tail", "--data-dir",
                   str(sidecar.data_dir), "--timeout", "90", *args]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        self.started = threading.Event()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        assert self.started.wait(60), f"tail did not start: {self.stderr}"

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("flux: following"):
                self.started.set()
        self.started.set()

    def lines(self) -> list[str]:
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        assert self.proc.returncode == 0, self.stderr
        return out.splitlines()


def test_tail_picks_up_an_execution_recorded_after_it_started(sidecar: SidecarProcess) -> None:
    earlier = send(sidecar, "GET", "/orders/2").headers["x-flux-trace-id"]
    recorded(sidecar, earlier, 2)
    tail = Tail(sidecar, "--output", "json", "--limit", "1")
    try:
        response = send(sidecar, "GET", "/orders/1")
        trace = response.headers["x-flux-trace-id"]
        (line,) = tail.lines()
    finally:
        tail.proc.kill()
    shown = json.loads(line)
    assert shown["trace_id"] == trace != earlier
    assert (shown["method"], shown["path"], shown["status"]) == ("GET", "/orders/1", 200)
    assert (shown["queries"], shown["calls"], shown["errors"]) == (1, 0, 0)
    assert shown["duration_ms"] > 0


def test_tail_filters(sidecar: SidecarProcess) -> None:
    tail = Tail(sidecar, "--output", "json", "--errors", "--path", "/p*", "--limit", "1")
    try:
        send(sidecar, "GET", "/orders/2")  # succeeds: filtered out
        send(sidecar, "GET", "/report")  # fails, but its path does not match
        failing = send(sidecar, "GET", "/pay").headers["x-flux-trace-id"]
        (line,) = tail.lines()
    finally:
        tail.proc.kill()
    shown = json.loads(line)
    assert (shown["trace_id"], shown["path"], shown["status"]) == (failing, "/pay", 502)
    assert shown["calls"] == 1 and shown["errors"] >= 1

    text = Tail(sidecar, "--since", "1h", "--path", "/pay", "--limit", "1").lines()
    assert len(text) == 1 and "GET /pay" in text[0] and "502" in text[0]
