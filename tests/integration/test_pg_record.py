"""Recording through the sidecar: cycles, traces, sessions, and the inspection commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psycopg

from recorder.crypto import EnvelopeSealer
from recorder.keys import load_dev_private_key
from recorder.sqlite_store import SQLiteStore
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
COMMENT = f"/*traceparent='00-{TRACE}-{SPAN}-01'*/"


def test_queries_grouped_by_sqlcommenter_trace(sidecar: SidecarProcess) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute(f"INSERT INTO items VALUES (%s, %s) {COMMENT}", (1, "apple"))
        rows = conn.execute(f"SELECT name FROM items WHERE id = %s {COMMENT}", (1,)).fetchall()
        assert rows == [("apple",)]
        conn.execute("SELECT 42")  # no comment, no transaction: unattributed, but kept
    sidecar.wait_for(lambda s: s.get("events", 0) >= 5 and s.get("executions", 0) >= 1)

    listed = sidecar.flux_json("traces")
    assert [t["trace_id"] for t in listed] == [TRACE]
    assert listed[0]["queries"] == 2 and listed[0]["errors"] == 0

    trace = sidecar.flux_json("trace", TRACE[:8])
    assert trace["trace_id"] == TRACE
    queries = [e for e in trace["events"] if e["kind"] == "pg.query"]
    assert len(queries) == 2  # the INSERT's row also appears, as a mutation event
    insert, select = queries
    assert insert["parent_span_id"] == SPAN
    assert insert["attrs"]["tags"] == ["INSERT 0 1"]
    assert select["attrs"]["tags"] == ["SELECT 1"] and select["attrs"]["rows"] == 1
    assert select["attrs"]["statements"][0]["normalized"].startswith("select name from items")
    # Bind values and SQL with literals are payload, not plaintext attributes.
    assert select["payload"]["params"] == [[1]]  # psycopg sent it as a binary int2
    seqs = [e["seq"] for e in trace["events"]]
    assert seqs == sorted(seqs) and seqs[0] == 1

    stats = sidecar.stats()
    assert stats["unattributed"] >= 2  # the CREATE TABLE and SELECT 42, plus the session event
    text = sidecar.flux("trace", TRACE).stdout
    assert "select name from items" in text and "SELECT 1" in text


def test_transaction_attribution_sticks_until_the_end(sidecar: SidecarProcess) -> None:
    with psycopg.connect(sidecar.dsn()) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.commit()
        # BEGIN is sent by psycopg without a comment; the first commented statement attributes
        # the whole transaction, including the BEGIN before it and the COMMIT after it.
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute(f"INSERT INTO t VALUES (2) {COMMENT}")
        conn.execute("UPDATE t SET v = v + 1")
        conn.commit()
        conn.execute("SELECT count(*) FROM t")  # a new transaction: not this trace
        conn.commit()
    sidecar.wait_for(lambda s: s.get("executions", 0) >= 1 and s.get("events", 0) >= 10)
    events = [e for e in sidecar.flux_json("trace", TRACE)["events"] if e["kind"] == "pg.query"]
    tags = [e["attrs"]["tags"] for e in events]
    assert tags == [["BEGIN"], ["INSERT 0 1"], ["INSERT 0 1"], ["UPDATE 2"], ["COMMIT"]]
    sources = [e["attrs"]["trace_source"] for e in events]
    assert sources[2] == "comment" and set(sources) == {"comment", "transaction"}


def test_errors_are_recorded_and_marked(sidecar: SidecarProcess) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE u (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO u VALUES (1) {COMMENT}")
        try:
            conn.execute(f"INSERT INTO u VALUES (1) {COMMENT}")
        except psycopg.errors.UniqueViolation:
            pass
        else:
            raise AssertionError("the duplicate insert should fail")
    sidecar.wait_for(lambda s: s.get("executions", 0) >= 1 and s.get("events", 0) >= 4)
    listed = sidecar.flux_json("traces")
    assert listed[0]["errors"] == 1
    failed = [e for e in sidecar.flux_json("trace", TRACE)["events"] if e["kind"] == "pg.query"][-1]
    assert failed["error"] is True
    assert failed["attrs"]["sqlstate"] == "23505"
    assert failed["payload"]["error"]["C"] == "23505"
    assert "ERROR 23505" in sidecar.flux("trace", TRACE).stdout


def test_session_event_has_parameters_but_no_secrets(sidecar: SidecarProcess) -> None:
    assert sidecar.upstream is not None
    with psycopg.connect(sidecar.dsn(application_name="flux-test"), autocommit=True) as conn:
        conn.execute("SELECT 1")
    sidecar.wait_for_events(2)
    sidecar.stop()
    blob = b"".join(p.read_bytes() for p in sidecar.data_dir.iterdir() if p.is_file())
    assert b"flux-test" in blob  # the startup parameters are recorded...
    # ...but not the password, nor any SCRAM exchange that is derived from it.
    assert sidecar.upstream.password.encode() not in blob
    assert b"SCRAM-SHA-256" not in blob and b"n,,n=" not in blob


def test_named_statement_keeps_its_trace_only_inside_that_transaction(
    sidecar: SidecarProcess,
) -> None:
    async def run() -> None:
        info = sidecar.conninfo()
        info["database"] = info.pop("dbname")
        conn = await asyncpg.connect(**info)
        try:
            async with conn.transaction():
                # asyncpg prepares a named statement; the Parse carries the comment.
                stmt = await conn.prepare(f"SELECT $1::int + 1 {COMMENT}")
                assert await stmt.fetchval(1) == 2
                assert await stmt.fetchval(2) == 3  # Bind/Execute only: same transaction
            # After the transaction, executions of that statement are not that trace's.
            assert await stmt.fetchval(3) == 4
        finally:
            await conn.close()

    asyncio.run(run())
    sidecar.wait_for(lambda s: s.get("executions", 0) >= 1 and s.get("events", 0) >= 6)
    events = [e for e in sidecar.flux_json("trace", TRACE)["events"] if e["kind"] == "pg.query"]
    kinds = [e["attrs"]["statements"][0]["kind"] for e in events]
    assert kinds == ["begin", "select", "select", "commit"]
    # asyncpg pipelines Parse/Describe/Flush with the first Bind/Execute/Sync: one cycle.
    first, second = events[1:3]
    assert first["attrs"]["trace_source"] == "comment"
    # fetchval runs the portal with a row limit: PortalSuspended, one row, no command tag.
    assert [first["attrs"]["suspended"], first["attrs"]["rows"]] == [1, 1]
    assert first["payload"]["params"] == [[1]]
    # The second execution is Bind/Execute only: its SQL and types come from the session.
    assert second["attrs"]["trace_source"] == "prepared"
    assert second["payload"]["sql"] == [] and second["payload"]["params"] == [[2]]
    normalized = second["attrs"]["statements"][0]["normalized"]
    assert normalized == first["attrs"]["statements"][0]["normalized"] == "select $1::int + ?"
    # The third execution ran after COMMIT: not attributed to the trace at all.
    assert sum(1 for e in events if e["attrs"]["protocol"] == "extended") == 2


def test_prepended_comment_and_unquoted_values_attribute_too(sidecar: SidecarProcess) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute(f"/*traceparent='00-{other}-b7ad6b7169203331-01'*/ SELECT 1")
        conn.execute(f"SELECT 2 /*traceparent=00-{other}-b7ad6b7169203331-01*/;")
    sidecar.wait_for(lambda s: s.get("executions", 0) >= 1)
    events = [e for e in sidecar.flux_json("trace", other)["events"] if e["kind"] == "pg.query"]
    assert [e["attrs"]["tags"] for e in events] == [["SELECT 1"], ["SELECT 1"]]


def test_recorder_overload_drops_and_counts_but_traffic_flows(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    # A recorder buffer smaller than one cycle: every cycle is dropped, none delayed.
    sidecar = sidecar_factory(pg_db, "--recorder-buffer", "1")
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        results = [conn.execute("SELECT %s::int * 2", (i,)).fetchone() for i in range(200)]
    assert results == [(i * 2,) for i in range(200)]
    stats = sidecar.wait_for(lambda s: s.get("events.dropped", 0) >= 200)
    assert stats["events"] == 0


def test_kill_9_under_load_leaves_a_readable_store(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecar_factory(pg_db)
    done = threading.Event()
    acknowledged = []

    def load() -> None:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            i = 0
            while not done.is_set() and i < 100_000:
                try:
                    conn.execute(f"SELECT {i} {COMMENT}")
                except psycopg.OperationalError:
                    return
                acknowledged.append(i)
                i += 1

    worker = threading.Thread(target=load)
    worker.start()
    sidecar.wait_for(lambda s: s.get("events", 0) >= 200, timeout=30)
    pid = sidecar.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for victim in [pid, *map(int, children)]:  # the whole sidecar, recorder included
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    done.set()
    worker.join(10)
    time.sleep(0.2)
    db = sqlite3.connect(sidecar.data_dir / "flux.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = db.execute("SELECT count(*) FROM events WHERE kind = 'pg.query'").fetchone()[0]
    assert 200 <= stored <= len(acknowledged)
    # Every stored event is whole: its sealed payload opens (the dev key) and carries both
    # directions.
    sealer = EnvelopeSealer([], [key for key in [load_dev_private_key(sidecar.data_dir)] if key])
    with SQLiteStore(sidecar.data_dir / "flux.db", readonly=True, sealer=sealer) as store:
        for stored in store.events(kind="pg.query"):
            payload = stored.event.payload
            assert payload["frontend"] and payload["backend"]
