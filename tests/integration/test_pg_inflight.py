"""Queries that carry no trace belong to the one inbound request in flight, when only one is:
when they are recorded, and when they are replayed.

A small real app behind the sidecar's inbound proxy runs, for each request, a query outside
any transaction and a transaction, none of them with a sqlcommenter comment.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.fix_http import recorded as trace_events
from tests.fix_pg import PgServer
from tests.fix_sentinel import Sentinel
from tests.fix_sidecar import SidecarProcess, start_sidecar

pytestmark = pytest.mark.parametrize("pg", ["15"], indirect=True)


class App(ThreadingHTTPServer):
    daemon_threads = True
    dsn = ""


class Handler(BaseHTTPRequestHandler):
    """``/pay/<id>``: reads the balance, then adds one to it in a transaction."""

    server: App

    def do_GET(self) -> None:
        account = int(self.path.rsplit("/", 1)[1])
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT balance FROM accounts WHERE id = %s", (account,)).fetchone()
            assert row is not None
            with conn.transaction():
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (account,))
                owner = conn.execute("SELECT owner FROM accounts WHERE id = %s", (account,))
                name = owner.fetchone()
        data = json.dumps({"balance": str(row[0]), "owner": name[0] if name else None}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def app() -> Iterator[App]:
    server = App(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pay(sidecar: SidecarProcess, account: int, traceparent: str | None = None) -> tuple[str, Any]:
    headers = {"traceparent": traceparent} if traceparent else {}
    response = requests.get(f"{sidecar.url('inbound')}/pay/{account}", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-flux-trace-id"], response.json()


def test_queries_without_a_trace_belong_to_the_request_in_flight(
    pg_db: PgServer, app: App, tmp_path: Path
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ada', 10)")
    app_url = f"http://127.0.0.1:{app.server_address[1]}"
    data_dir = tmp_path / "flux"
    sidecars: list[SidecarProcess] = []
    sentinel = Sentinel()
    try:
        recorder = start_sidecar(data_dir, pg_db, expect=("pg", "inbound"), app_url=app_url)
        sidecars.append(recorder)
        app.dsn = recorder.dsn()
        # One request at a time: each is the only one in flight while its queries run.
        first, first_seen = pay(recorder, 1)
        second, second_seen = pay(recorder, 1)
        assert (first_seen["balance"], second_seen["balance"]) == ("10", "11")
        for trace in (first, second):
            events = trace_events(recorder, trace, 6)
            (inbound,) = [e for e in events if e["kind"] == "http.inbound"]
            queries = [e for e in events if e["kind"] == "pg.query"]
            # The read, BEGIN, UPDATE, SELECT and COMMIT: every one the request's child.
            assert len(queries) == 5, queries
            assert {q["attrs"]["trace_source"] for q in queries} == {"inflight"}
            assert {q["parent_span_id"] for q in queries} == {inbound["span_id"]}
        recorder.stop()

        replayer = start_sidecar(
            data_dir, replace(pg_db, port=sentinel.port), mode="replay",
            expect=("pg", "inbound"), app_url=app_url,
        )  # fmt: skip
        sidecars.append(replayer)
        app.dsn = replayer.dsn()
        # The second request first: its queries are the same statements with the same
        # parameters as the first's, and only the request in flight tells them apart.
        again, seen = pay(replayer, 1, f"00-{second}-00f067aa0ba902b7-01")
        assert again == second and seen == second_seen
        again, seen = pay(replayer, 1, f"00-{first}-00f067aa0ba902b7-01")
        assert again == first and seen == first_seen
        assert Decimal(seen["balance"]) == 10
        assert "no recorded answer" not in replayer.stderr()
        assert sentinel.connections == 0
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        sentinel.close()
