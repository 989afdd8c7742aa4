"""``flux trace debug``: the Textual view driven by keys through Textual's own pilot.

The first tests build the view from events made here (no server), for the layout
logic; the rest open a recording made through the real sidecar in front of a real
PostgreSQL and a real HTTPS origin, the way ``flux trace debug`` loads it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from textual.widgets import DataTable, Static

from flux_proxy import cli, cmd_tui
from flux_proxy.tui import DetailsPane, SpanTree, TraceDebugApp
from protocols import pgwire
from recorder.model import Event, StoredEvent
from recorder.store import SEALED_MARKER
from tests.fix_app import AppHandler, AppServer, send, serve, start_recording
from tests.fix_http import Origin, Pki, recorded
from tests.fix_pg import PgServer
from tests.fix_sidecar import REPO

SIZE = (160, 50)

# -- reading the screen ---------------------------------------------------------------------


def shown(app: TraceDebugApp, selector: str) -> str:
    content = app.screen.query_one(selector, Static).content
    return str(content)


def cursor(app: TraceDebugApp) -> StoredEvent:
    node = app.screen.query_one(SpanTree).cursor_node
    assert node is not None and node.data is not None
    return node.data


def table_cells(table: DataTable[Any]) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def result_tables(app: TraceDebugApp) -> list[tuple[list[str], list[list[str]]]]:
    tables = app.screen.query("#results DataTable").results(DataTable)
    return [([str(c.label) for c in t.ordered_columns], table_cells(t)) for t in tables]


def mutations(app: TraceDebugApp) -> list[list[str]]:
    table = app.screen.query_one("#mutations", DataTable)
    return table_cells(table) if table.display else []


def tree_lines(app: TraceDebugApp) -> list[tuple[int, str]]:
    """(depth, label) of each span in the tree, in display order."""
    out = []
    for node in app.nodes:
        depth, parent = 0, node.parent
        while parent is not None and parent.parent is not None:
            depth, parent = depth + 1, parent.parent
        out.append((depth, str(node.label)))
    return out


# -- events made here ---------------------------------------------------------------------

INBOUND, SELECT, UPDATE, INSERT, CALL, ROW = (f"{n:016x}" for n in range(1, 7))


def event(seq: int, kind: str, span: str, parent: str | None, **fields: Any) -> StoredEvent:
    fields.setdefault("start_ns", 1_700_000_000_000_000_000 + seq * 1_000_000)
    fields.setdefault("duration_ns", 500_000)
    return StoredEvent(
        id=seq,
        seq=seq,
        event=Event(kind=kind, trace_id="ab" * 16, span_id=span, parent_span_id=parent,
                    conn_id="c1", **fields),
    )  # fmt: skip


def backend(*messages: Any) -> bytes:
    return b"".join(pgwire.encode(m) for m in messages)


def made_events(*, seal: bool = False) -> list[StoredEvent]:
    def payload(values: dict[str, Any]) -> dict[str, Any]:
        return {SEALED_MARKER: "k1"} if seal else values

    fields = tuple(
        pgwire.FieldDescription(name=name, type_oid=oid, type_size=-1, format=0)
        for name, oid in (("id", 23), ("item", 25))
    )
    rows = backend(
        pgwire.RowDescription(fields=fields),
        pgwire.DataRow(values=(b"1", b"[tea]")),
        pgwire.DataRow(values=(b"2", None)),
        pgwire.CommandComplete(tag="SELECT 2"),
    )
    error = {"S": "ERROR", "V": "ERROR", "C": "23505", "M": 'duplicate key value violates unique constraint "orders_pkey"', "D": "Key (id)=(1) already exists."}  # fmt: skip
    return [
        event(1, "http.inbound", INBOUND, None, error=True, duration_ns=9_000_000,
              attrs={"method": "POST", "path": "/orders", "status": 500, "http_version": "HTTP/1.1",
                     "request_headers": [["content-type", "application/json"], ["authorization", None]],
                     "response_headers": [["content-length", "12"]], "request_body_size": 9,
                     "response_body_size": 12},
              payload=payload({"request_secrets": ["Bearer s3cret"], "request_body": b'{"qty":3}',
                               "response_body": b'{"ok":false}'})),
        event(2, "pg.query", SELECT, INBOUND, fingerprint="f1",
              attrs={"statements": [{"normalized": "SELECT id, item FROM orders WHERE qty > $1"}],
                     "tags": ["SELECT 2"], "rows": 2, "protocol": "extended"},
              payload=payload({"sql": ["SELECT id, item FROM orders WHERE qty > $1"],
                               "params": [[0]], "backend": rows})),
        event(3, "pg.query", UPDATE, INBOUND,
              attrs={"statements": [{"normalized": "UPDATE orders SET qty = ? WHERE id = ?"}],
                     "tags": ["UPDATE 1"], "rows": 1, "protocol": "simple"},
              payload=payload({"sql": ["UPDATE orders SET qty = 3 WHERE id = 1"], "params": []})),
        event(4, "mutation", ROW, UPDATE,
              attrs={"table": "public.orders", "op": "update", "key_columns": ["id"],
                     "changed": ["qty"], "status": "committed"},
              payload=payload({"key": {"id": "1"}, "before": '{"id": 1, "qty": 2}',
                               "after": '{"id": 1, "qty": 3}'})),
        event(5, "pg.query", INSERT, INBOUND, error=True,
              attrs={"statements": [{"normalized": "INSERT INTO orders VALUES (?)"}], "tags": [],
                     "rows": 0, "sqlstate": "23505", "severity": "ERROR", "protocol": "simple"},
              payload=payload({"sql": ["INSERT INTO orders VALUES (1)"], "params": [], "error": error})),
        event(6, "http.outbound", CALL, INBOUND,
              attrs={"method": "GET", "scheme": "https", "host": "api.example", "port": 443,
                     "path": "/stock", "status": 503, "request_headers": [], "response_headers": []},
              error=True, payload=payload({"query": "sku=42"})),
    ]  # fmt: skip


async def test_tree_nests_spans_and_selection_shows_details() -> None:
    app = TraceDebugApp("ab" * 16, made_events())
    async with app.run_test(size=SIZE) as pilot:
        lines = tree_lines(app)
        assert [depth for depth, _ in lines] == [0, 1, 1, 2, 1, 1]
        assert lines[0][1].startswith("✗ http.inbound POST /orders → 500")
        assert lines[3][1].startswith("mutation update public.orders")
        assert cursor(app).event.span_id == INBOUND
        request = shown(app, "#request")
        assert "POST /orders HTTP/1.1" in request
        assert "authorization: Bearer s3cret" in request and '{"qty":3}' in request
        assert '{"ok":false}' in shown(app, "#response")
        # the inbound request's mutations are those of every span under it
        assert mutations(app) == [["public.orders", "update", "id=1", "committed", "qty: 2 → 3"]]

        await pilot.press("j")
        assert cursor(app).event.span_id == SELECT
        assert "SQL: SELECT id, item FROM orders WHERE qty > $1" in shown(app, "#request")
        assert "parameters (execution 1): $1=0" in shown(app, "#request")
        assert "command tag: SELECT 2" in shown(app, "#response")
        # markup-like values ("[tea]") are data, shown as they are
        assert result_tables(app) == [(["id", "item"], [["1", "[tea]"], ["2", "NULL"]])]
        assert mutations(app) == []

        await pilot.press("down")
        assert cursor(app).event.span_id == UPDATE
        assert result_tables(app) == []
        assert mutations(app) == [["public.orders", "update", "id=1", "committed", "qty: 2 → 3"]]
        await pilot.press("k", "up")
        assert cursor(app).event.span_id == INBOUND


async def test_error_jumps_tab_and_collapse() -> None:
    app = TraceDebugApp("ab" * 16, made_events())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        assert cursor(app).event.span_id == INSERT
        response = shown(app, "#response")
        assert "ERROR SQLSTATE 23505 (ERROR)" in response
        assert "detail: Key (id)=(1) already exists." in response
        await pilot.press("slash")
        assert cursor(app).event.span_id == CALL
        assert "status: 503" in shown(app, "#response")
        assert "GET https://api.example:443/stock?sku=42" in shown(app, "#request")
        await pilot.press("n")  # wraps around to the first error span
        assert cursor(app).event.span_id == INBOUND
        await pilot.press("p")
        assert cursor(app).event.span_id == CALL

        # collapsed parents are opened on the way to an error span
        await pilot.press("k", "k", "k", "k", "k")
        assert cursor(app).event.span_id == INBOUND
        await pilot.press("space")
        assert len(tree_lines(app)) == 6 and not app.nodes[0].is_expanded
        await pilot.press("j")  # nothing below a collapsed root
        assert cursor(app).event.span_id == INBOUND
        await pilot.press("enter")
        assert app.nodes[0].is_expanded
        await pilot.press("space", "n")
        assert app.nodes[0].is_expanded and cursor(app).event.span_id == INSERT

        tree, pane = app.screen.query_one(SpanTree), app.screen.query_one(DetailsPane)
        assert tree.has_focus
        await pilot.press("tab")
        assert pane.has_focus and not tree.has_focus
        await pilot.press("j")  # keys go to the pane now: the cursor stays
        assert cursor(app).event.span_id == INSERT
        await pilot.press("tab")
        assert tree.has_focus

        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_sealed_values_show_as_encrypted() -> None:
    app = TraceDebugApp("ab" * 16, made_events(seal=True), ["6 payload(s) show as [encrypted]"])
    async with app.run_test(size=SIZE) as pilot:
        assert "6 payload(s) show as [encrypted]" in shown(app, "#summary")
        request = shown(app, "#request")
        assert (
            "authorization: [encrypted]" in request and "content-type: application/json" in request
        )
        assert "s3cret" not in request
        await pilot.press("j")
        request, response = shown(app, "#request"), shown(app, "#response")
        assert "SQL (literals stripped): SELECT id, item FROM orders WHERE qty > $1" in request
        assert "SQL text and parameters: [encrypted]" in request
        assert "command tag: SELECT 2" in response and "result rows: [encrypted]" in response
        assert result_tables(app) == []
        await pilot.press("j")
        assert mutations(app) == [
            ["public.orders", "update", "id=[encrypted]", "committed", "qty: [encrypted]"]
        ]


async def test_empty_trace() -> None:
    app = TraceDebugApp("cd" * 16, [])
    async with app.run_test(size=SIZE) as pilot:
        assert "no events recorded" in shown(app, "#title")
        await pilot.press("j", "n", "q")
        await pilot.pause()
        assert not app.is_running


async def test_several_result_sets_and_other_kinds() -> None:
    one = pgwire.FieldDescription(name="n", type_oid=23, type_size=4, format=1)
    cycle = backend(
        pgwire.RowDescription(fields=(one,)),
        pgwire.DataRow(values=((7).to_bytes(4, "big"),)),  # binary int4
        pgwire.CommandComplete(tag="SELECT 1"),
        pgwire.RowDescription(
            fields=(pgwire.FieldDescription(name="t", type_oid=25, type_size=-1),)
        ),
        pgwire.CommandComplete(tag="SELECT 0"),
    )
    events = [
        event(1, "pg.query", SELECT, None,
              attrs={"statements": [{"normalized": "select ?"}, {"normalized": "select t"}],
                     "tags": ["SELECT 1", "SELECT 0"], "rows": 1, "protocol": "simple"},
              payload={"sql": ["SELECT 7; SELECT t FROM empty"], "params": [], "backend": cycle}),
        event(2, "udp", CALL, None,
              attrs={"dns": True, "qname": "db.internal.", "qtype": "A", "rcode": "NOERROR",
                     "answers": ["192.0.2.7"]},
              payload={"request": b"\x00\x01", "responses": [b"\x00\x02\x03"]}),
    ]  # fmt: skip
    app = TraceDebugApp("ef" * 16, events)
    async with app.run_test(size=SIZE) as pilot:
        assert [depth for depth, _ in tree_lines(app)] == [0, 0]
        assert "2 statements" in shown(app, "#title")
        assert result_tables(app) == [(["n"], [["7"]]), (["t"], [])]
        await pilot.press("j")
        assert "DNS A db.internal. → NOERROR 192.0.2.7" in tree_lines(app)[1][1]
        request = shown(app, "#request")
        assert "qname: db.internal." in request and "request: <2 bytes>" in request
        assert 'responses: ["<3 bytes>"]' in request
        assert result_tables(app) == [] and mutations(app) == []


# -- a recording made through the real sidecar ----------------------------------------------


class Handler(AppHandler):
    """``POST /orders/<n>``: reads the orders, adds one to order n, asks the stock API
    (HTTPS, through the sidecar's proxy), then inserts order n again, which fails with a
    unique violation: the app answers 500. Every statement carries the traceparent."""

    def do_POST(self) -> None:
        app = self.server
        self.body()  # not used, but read off the connection
        tp = self.traceparent
        comment = f"/*traceparent='{tp}'*/"
        order = int(self.path.rsplit("/", 1)[1])
        status, body = 200, dict[str, Any](ok=True)
        with psycopg.connect(app.dsn, autocommit=True) as conn:
            conn.execute(
                f"SELECT id, item, qty FROM orders WHERE qty >= %s ORDER BY id {comment}", (1,)
            ).fetchall()
            conn.execute(f"UPDATE orders SET qty = qty + 1 WHERE id = %s {comment}", (order,))
            with app.session() as session:
                session.get(f"{app.origin}/hello?sku={order}", headers={"traceparent": tp}).close()
            try:
                conn.execute(
                    f"INSERT INTO orders (id, item, qty) VALUES (%s, 'again', 1) {comment}",
                    (order,),
                )
            except psycopg.errors.UniqueViolation as exc:
                status, body = 500, {"ok": False, "error": exc.sqlstate}
        self.reply(status, body)


@pytest.fixture(scope="module")
def app() -> Iterator[AppServer]:
    with serve(AppServer(Handler)) as server:
        yield server


def record(data_dir: Path, pg_db: PgServer, app: AppServer, test_pki: Pki, origin: Origin) -> str:
    """Records one failing ``POST /orders/1`` and stops the sidecar; the trace id."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, qty int NOT NULL)"
        )
        conn.execute("INSERT INTO orders VALUES (1, 'tea', 2), (2, '[coffee]', 5)")
    sidecar = start_recording(app, data_dir, pg_db, test_pki, origin)
    try:
        response = send(sidecar, "POST", "/orders/1", json={"qty": 1})
        assert response.status_code == 500 and response.json()["error"] == "23505"
        trace = response.headers["x-flux-trace-id"]
        kinds = {"http.inbound", "pg.query", "http.outbound", "mutation"}
        recorded(sidecar, trace, 6, lambda events: kinds <= {e["kind"] for e in events})
    finally:
        sidecar.stop()
    return trace


@pytest.fixture
def recording(
    tmp_path: Path, pg_db: PgServer, app: AppServer, test_pki: Pki, origin: Origin
) -> tuple[Path, str]:
    data_dir = tmp_path / "flux"
    return data_dir, record(data_dir, pg_db, app, test_pki, origin)


def loaded_app(*argv: str) -> TraceDebugApp:
    """The view as ``flux trace debug ARGV...`` builds it."""
    args = cli.build_parser().parse_args(["trace", "debug", *argv])
    loaded = cmd_tui.load(args)
    return TraceDebugApp(loaded.trace_id, loaded.events, loaded.notes)


async def press_until(pilot: Any, app: TraceDebugApp, key: str, wanted: Any) -> StoredEvent:
    for _ in range(len(app.nodes)):
        if wanted(cursor(app)):
            return cursor(app)
        await pilot.press(key)
    raise AssertionError(f"no span found pressing {key}")


async def test_recorded_execution_stepped_through(recording: tuple[Path, str]) -> None:
    data_dir, trace = recording
    app = loaded_app(trace[:10], "--data-dir", str(data_dir))
    async with app.run_test(size=SIZE) as pilot:
        assert app.trace_id == trace
        lines = tree_lines(app)
        assert lines[0][0] == 0 and lines[0][1].startswith("✗ http.inbound POST /orders/1 → 500")
        children = [label for depth, label in lines if depth == 1]
        assert [label.lstrip("✗ ").split()[0] for label in children].count("pg.query") == 3
        assert any(label.startswith("http.outbound GET https://127.0.0.1:") for label in children)
        assert cursor(app).event.kind == "http.inbound"
        assert '"error": "23505"' in shown(app, "#response")
        assert mutations(app) == [["public.orders", "update", "id=1", "committed", "qty: 2 → 3"]]

        await pilot.press("down")
        select = cursor(app)
        assert select.event.kind == "pg.query"
        request = shown(app, "#request")
        assert "SQL: SELECT id, item, qty FROM orders WHERE qty >= $1 ORDER BY id" in request
        assert "parameters (execution 1): $1=1" in request
        assert "command tag: SELECT 2" in shown(app, "#response")
        assert result_tables(app) == [
            (["id", "item", "qty"], [["1", "tea", "2"], ["2", "[coffee]", "5"]])
        ]

        update = await press_until(pilot, app, "j", lambda s: "UPDATE" in str(s.event.attrs))
        assert "command tag: UPDATE 1" in shown(app, "#response")
        assert mutations(app) == [["public.orders", "update", "id=1", "committed", "qty: 2 → 3"]]
        await pilot.press("j")  # the mutation, nested under its statement
        row = cursor(app)
        assert row.event.kind == "mutation" and row.event.parent_span_id == update.event.span_id

        call = await press_until(pilot, app, "j", lambda s: s.event.kind == "http.outbound")
        assert call.event.attrs["status"] == 200
        assert f"GET {origin_url(call)}/hello?sku=1" in shown(app, "#request")
        assert '"path": "/hello"' in shown(app, "#response")

        await pilot.press("n")
        failed = cursor(app)
        assert failed.event.kind == "pg.query" and failed.event.error
        response = shown(app, "#response")
        assert "ERROR SQLSTATE 23505 (ERROR)" in response
        assert 'message: duplicate key value violates unique constraint "orders_pkey"' in response
        assert "detail: Key (id)=(1) already exists." in response
        assert "INSERT INTO orders (id, item, qty) VALUES ($1, 'again', 1)" in shown(
            app, "#request"
        )
        await pilot.press("n")  # the only other error span: the request that answered 500
        assert cursor(app).event.kind == "http.inbound"

        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


def origin_url(call: StoredEvent) -> str:
    attrs = call.event.attrs
    return f"https://{attrs['host']}:{attrs['port']}"


async def test_recorded_execution_without_the_key(
    recording: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, trace = recording
    elsewhere = tmp_path / "no-key"  # the store read where the private key is not
    app = loaded_app(trace, "--store", str(data_dir), "--data-dir", str(elsewhere))
    async with app.run_test(size=SIZE) as pilot:
        assert "show as [encrypted]" in shown(app, "#summary")
        assert "POST /orders/1" in shown(app, "#request")
        assert "body:\n[encrypted]" in shown(app, "#response")
        assert mutations(app) == [
            ["public.orders", "update", "id=[encrypted]", "committed", "qty: [encrypted]"]
        ]
        await pilot.press("j")
        request = shown(app, "#request")
        assert (
            "SQL (literals stripped): select id, item, qty from orders where qty >= $1 order by id"
            in request
        )
        assert "SQL text and parameters: [encrypted]" in request
        assert "result rows: [encrypted]" in shown(app, "#response")
        assert result_tables(app) == []
        assert "coffee" not in shown(app, "#response") + request
        await pilot.press("n")
        response = shown(app, "#response")
        assert "ERROR SQLSTATE 23505 (ERROR)" in response and "message: [encrypted]" in response
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


def test_command_in_a_terminal(recording: tuple[Path, str]) -> None:
    """``flux trace debug`` as typed, in a pseudo-terminal (as over SSH): draws, then q quits."""
    data_dir, trace = recording
    command = [
        sys.executable,
        "-m",
        "flux_proxy",
        "trace",
        "debug",
        trace,
        "--data-dir",
        str(data_dir),
    ]
    piped = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert piped.returncode == 2 and "needs a terminal" in piped.stderr

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    proc = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, cwd=REPO, env=env)
    os.close(child)
    screen = b""
    try:
        deadline = time.monotonic() + 60
        while b"http.inbound" not in screen or b"next error" not in screen:
            assert time.monotonic() < deadline, screen[-2000:]
            if select.select([main], [], [], 0.5)[0]:
                screen += os.read(main, 65536)
        os.write(main, b"q")
        while proc.poll() is None and time.monotonic() < deadline + 30:
            if select.select([main], [], [], 0.5)[0]:
                try:
                    screen += os.read(main, 65536)
                except OSError:  # the terminal closed with the process
                    break
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main)
