"""Real clients through the sidecar: psycopg 3 (sync, async, pipeline, COPY), asyncpg, psql.

Each scenario runs once direct and once through the sidecar against the same database;
whatever the client sees must be equal, and must also be what we expect (so two equally
broken runs do not pass).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.fix_pg import PgServer

# Fixtures: the shared sidecar per server (``sidecar``).
from tests.fix_shared import (  # noqa: F401
    asyncpg_kwargs,
    shared_pg_sidecar,
    shared_sidecars,
    upstream_of,
)
from tests.fix_sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(90)


def _both(sidecar: SidecarProcess) -> dict[str, str]:
    """The direct DSN and the DSN through the sidecar, for the same database and role."""
    return {"direct": upstream_of(sidecar).dsn(), "proxied": sidecar.dsn()}


# ---------------------------------------------------------------------------
# psycopg 3, sync and async
# ---------------------------------------------------------------------------

ACCOUNTS = [(1, "ann", Decimal("10.50")), (2, "bob", Decimal("0.00")), (3, "cy", Decimal("99.99"))]


def _psycopg_sync_scenario(dsn: str) -> list[Any]:
    seen: list[Any] = []
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute(
            "CREATE TEMP TABLE acct"
            " (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2))"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO acct VALUES (%s, %s, %s)", ACCOUNTS)
        conn.commit()
        cur = conn.execute(
            "SELECT id, owner, balance FROM acct WHERE balance >= %s AND owner <> %s ORDER BY id",
            (Decimal("0.01"), "nobody"),
        )
        seen.append([d.name for d in cur.description or ()])
        seen.append(cur.fetchall())
        seen.append(cur.statusmessage)
        # The same query with binary results and a prepared statement (prepare=True).
        with conn.cursor(binary=True) as bcur:
            for owner in ("ann", "cy", "zed"):
                bcur.execute("SELECT id, balance FROM acct WHERE owner = %s", (owner,),
                             prepare=True)  # fmt: skip
                seen.append(bcur.fetchall())
        conn.commit()
        # A transaction rolled back: nothing of it stays.
        conn.execute("UPDATE acct SET balance = balance + %s", (Decimal("1000"),))
        conn.execute("DELETE FROM acct WHERE id = %s", (2,))
        seen.append(conn.info.transaction_status.name)
        seen.append(conn.execute("SELECT count(*), sum(balance) FROM acct").fetchone())
        conn.rollback()
        seen.append(conn.execute("SELECT count(*), sum(balance) FROM acct").fetchone())
        conn.commit()
        # An error inside a transaction aborts it until the rollback.
        try:
            conn.execute("INSERT INTO acct VALUES (%s, %s, %s)", (1, "dup", Decimal("1")))
        except psycopg.errors.UniqueViolation as exc:
            seen.append(("error", exc.sqlstate, exc.diag.message_primary, exc.diag.message_detail))
        try:
            conn.execute("SELECT 1")
        except psycopg.errors.InFailedSqlTransaction as exc:
            seen.append(("error", exc.sqlstate, exc.diag.message_primary))
        seen.append(conn.info.transaction_status.name)
        conn.rollback()
        # A transaction block with a savepoint rolled back inside it.
        with conn.transaction():
            conn.execute("UPDATE acct SET owner = upper(owner) WHERE id = 1")
            with conn.transaction():
                conn.execute("UPDATE acct SET owner = 'X' WHERE id = 3")
                raise psycopg.Rollback()
        seen.append(conn.execute("SELECT id, owner FROM acct ORDER BY id").fetchall())
    return seen


EXPECTED_SYNC = [
    ["id", "owner", "balance"],
    [(1, "ann", Decimal("10.50")), (3, "cy", Decimal("99.99"))],
    "SELECT 2",
    [(1, Decimal("10.50"))],
    [(3, Decimal("99.99"))],
    [],
    "INTRANS",
    (2, Decimal("2110.49")),
    (3, Decimal("110.49")),
    ("error", "23505", 'duplicate key value violates unique constraint "acct_pkey"',
     "Key (id)=(1) already exists."),
    ("error", "25P02",
     "current transaction is aborted, commands ignored until end of transaction block"),
    "INERROR",
    [(1, "ANN"), (2, "bob"), (3, "cy")],
]  # fmt: skip


def test_psycopg_sync_same_as_direct(sidecar: SidecarProcess) -> None:
    results = {name: _psycopg_sync_scenario(dsn) for name, dsn in _both(sidecar).items()}
    assert results["proxied"] == results["direct"]
    assert results["proxied"] == EXPECTED_SYNC


async def _psycopg_async_scenario(dsn: str) -> list[Any]:
    seen: list[Any] = []
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn:
        await conn.execute(
            "CREATE TEMP TABLE acct"
            " (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2))"
        )
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO acct VALUES (%s, %s, %s)", ACCOUNTS)
        await conn.commit()
        cur = await conn.execute(
            "SELECT id, owner, balance FROM acct WHERE balance >= %s AND owner <> %s ORDER BY id",
            (Decimal("0.01"), "nobody"),
        )
        seen.append([d.name for d in cur.description or ()])
        seen.append(await cur.fetchall())
        seen.append(cur.statusmessage)
        async with conn.cursor(binary=True) as bcur:
            for owner in ("ann", "cy", "zed"):
                await bcur.execute("SELECT id, balance FROM acct WHERE owner = %s", (owner,),
                                   prepare=True)  # fmt: skip
                seen.append(await bcur.fetchall())
        await conn.commit()
        await conn.execute("UPDATE acct SET balance = balance + %s", (Decimal("1000"),))
        await conn.execute("DELETE FROM acct WHERE id = %s", (2,))
        seen.append(conn.info.transaction_status.name)
        seen.append(
            await (await conn.execute("SELECT count(*), sum(balance) FROM acct")).fetchone()
        )
        await conn.rollback()
        seen.append(
            await (await conn.execute("SELECT count(*), sum(balance) FROM acct")).fetchone()
        )
        await conn.commit()
        try:
            await conn.execute("INSERT INTO acct VALUES (%s, %s, %s)", (1, "dup", Decimal("1")))
        except psycopg.errors.UniqueViolation as exc:
            seen.append(("error", exc.sqlstate, exc.diag.message_primary, exc.diag.message_detail))
        try:
            await conn.execute("SELECT 1")
        except psycopg.errors.InFailedSqlTransaction as exc:
            seen.append(("error", exc.sqlstate, exc.diag.message_primary))
        seen.append(conn.info.transaction_status.name)
        await conn.rollback()
        async with conn.transaction():
            await conn.execute("UPDATE acct SET owner = upper(owner) WHERE id = 1")
            async with conn.transaction():
                await conn.execute("UPDATE acct SET owner = 'X' WHERE id = 3")
                raise psycopg.Rollback()
        seen.append(await (await conn.execute("SELECT id, owner FROM acct ORDER BY id")).fetchall())
    return seen


async def test_psycopg_async_same_as_direct(sidecar: SidecarProcess) -> None:
    results = {name: await _psycopg_async_scenario(dsn) for name, dsn in _both(sidecar).items()}
    assert results["proxied"] == results["direct"]
    assert results["proxied"] == EXPECTED_SYNC


# ---------------------------------------------------------------------------
# psycopg pipeline mode
# ---------------------------------------------------------------------------

PIPELINE_FIRST = [
    "INSERT INTO pl VALUES (1) RETURNING id",
    "INSERT INTO pl VALUES (2) RETURNING id",
    "INSERT INTO pl VALUES (1) RETURNING id",  # duplicate key: fails
    "INSERT INTO pl VALUES (3) RETURNING id",  # aborted
    "SELECT count(*) FROM pl",  # aborted
]
PIPELINE_SECOND = [
    "INSERT INTO pl VALUES (4) RETURNING id",
    "SELECT array_agg(id ORDER BY id) FROM pl",
]


def _cursor_outcome(cur: psycopg.Cursor[Any]) -> Any:
    if cur.pgresult is None:
        return ("no result", cur.statusmessage)
    try:
        return (cur.statusmessage, cur.fetchall())
    except psycopg.Error as exc:
        return (type(exc).__name__, exc.sqlstate)


def _pipeline_scenario(dsn: str) -> list[Any]:
    """Where psycopg raises a pipeline's error depends on when the results arrive (the
    server flushes an ErrorResponse at once), so errors are collected from every step;
    what must not vary is which statements ran, which were aborted, and the data."""
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE pl (id int PRIMARY KEY)")
        first = [conn.cursor() for _ in PIPELINE_FIRST]
        second = [conn.cursor() for _ in PIPELINE_SECOND]
        errors: list[Any] = []

        def step(action: Callable[[], object]) -> None:
            try:
                action()
            except psycopg.Error as exc:
                errors.append((type(exc).__name__, exc.sqlstate, exc.diag.message_primary))

        def run() -> None:
            with conn.pipeline() as pipeline:
                for cur, stmt in zip(first, PIPELINE_FIRST, strict=True):
                    step(partial(cur.execute, stmt))
                step(pipeline.sync)
                for cur, stmt in zip(second, PIPELINE_SECOND, strict=True):
                    step(partial(cur.execute, stmt))

        step(run)
        seen.append(errors[:1])
        # Later ones, if any, only say "aborted"; how many surface is a matter of timing.
        assert {e[0] for e in errors[1:]} <= {"PipelineAborted"}, errors
        seen.append([_cursor_outcome(c) for c in first])
        seen.append([_cursor_outcome(c) for c in second])
        seen.append(conn.execute("SELECT array_agg(id ORDER BY id) FROM pl").fetchone())
        # Many statements in one pipeline, all fine.
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(200)]
        seen.append([c.fetchone() for c in curs])
    return seen


def test_psycopg_pipeline_with_error_same_as_direct(sidecar: SidecarProcess) -> None:
    results = {name: _pipeline_scenario(dsn) for name, dsn in _both(sidecar).items()}
    assert results["proxied"] == results["direct"]
    error, first, second, final, many = results["proxied"]
    # The first error raised is the third statement's.
    assert error == [("UniqueViolation", "23505",
                      'duplicate key value violates unique constraint "pl_pkey"')]  # fmt: skip
    # Statements before it ran, the ones after it up to the Sync were aborted...
    assert first[0] == ("INSERT 0 1", [(1,)]) and first[1] == ("INSERT 0 1", [(2,)])
    assert [o[0] for o in first[2:]] == ["no result"] * 3
    # ...and the implicit transaction up to the Sync was rolled back; after it, all is fine.
    assert second == [("INSERT 0 1", [(4,)]), ("SELECT 1", [([4],)])]
    assert final == ([4],)
    assert many == [(i * 2,) for i in range(200)]


# ---------------------------------------------------------------------------
# asyncpg
# ---------------------------------------------------------------------------

ASYNCPG_SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text, m mood);
CREATE TABLE ap_items (id int8 PRIMARY KEY, label text, tags text[], feeling mood, p pair);
"""

TYPED_QUERY = """
SELECT $1::int8 AS i8, $2::numeric AS num, $3::timestamptz AS ts, $4::uuid AS u,
       $5::jsonb AS j, $6::bytea AS b, $7::int4[] AS ia, $8::text[] AS ta,
       $9::pair AS p, $10::mood AS m, $11::mood[] AS ma,
       ARRAY[[1, 2], [3, NULL]]::int8[] AS i2d, NULL::pair AS np
"""

TS = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


async def _asyncpg_scenario(conninfo: dict[str, Any]) -> list[Any]:
    seen: list[Any] = []
    conn = await asyncpg.connect(**asyncpg_kwargs(conninfo))
    try:
        args = (
            -(2**63), Decimal("-12345678901234567890.000000000000000001"), TS, UUID,
            '{"k": [1, 2.5, null, "x"]}', bytes(range(256)), [1, None, -3], ["a", "", None, "é"],
            (7, "seven", "happy"), "ok", ["sad", "happy"],
        )  # fmt: skip
        row = await conn.fetchrow(TYPED_QUERY, *args)
        assert row is not None
        seen.append(list(row.keys()))
        seen.append(tuple(row.values()))
        # The composite comes back as a Record: compare its fields.
        seen.append(tuple(row["p"].values()))

        # Prepared statements, executed several times with different arguments.
        stmt = await conn.prepare("SELECT $1::int * 2 AS d, $2::mood AS m")
        seen.append([tuple(r) for r in [await stmt.fetchrow(i, "sad") for i in range(5)]])
        seen.append([a.name for a in stmt.get_attributes()])
        seen.append(await stmt.fetchval(21, "ok"))

        # executemany with enum, array and composite parameters.
        rows = [(i, f"item {i}", [f"t{i}", "x"], ("sad", "ok", "happy")[i % 3], (i, str(i), "ok"))
                for i in range(1, 301)]  # fmt: skip
        await conn.executemany("INSERT INTO ap_items VALUES ($1, $2, $3, $4, $5)", rows)
        seen.append(await conn.fetchval("SELECT count(*) FROM ap_items"))

        # A cursor inside a transaction, with prefetch: Execute with a row limit, so the
        # server answers with PortalSuspended several times.
        got: list[int] = []
        async with conn.transaction():
            async for r in conn.cursor("SELECT id FROM ap_items ORDER BY id", prefetch=37):
                got.append(r["id"])
            cur = await conn.cursor(
                "SELECT id, feeling FROM ap_items WHERE id > $1 ORDER BY id", 250
            )
            first = await cur.fetch(5)
            moved = await cur.forward(10)
            after = await cur.fetchrow()
        seen.append(got)
        seen.append(([tuple(r) for r in first], moved, tuple(after) if after else None))

        # COPY in (binary) and out.
        await conn.execute("CREATE TEMP TABLE ap_copy (id int, label text, feeling mood)")
        copied = [(i, f"line\t{i}\n\\", ("sad", "ok", "happy")[i % 3]) for i in range(2000)]
        status = await conn.copy_records_to_table("ap_copy", records=copied)
        seen.append(status)
        out = io.BytesIO()
        status_out = await conn.copy_from_query(
            "SELECT id, label, feeling FROM ap_copy WHERE id % $1 = 0 ORDER BY id", 7,
            output=out, format="csv",
        )  # fmt: skip
        seen.append(status_out)
        seen.append(hashlib.sha256(out.getvalue()).hexdigest())
        seen.append(out.getvalue()[:60])
    finally:
        await conn.close()
    return seen


async def test_asyncpg_types_prepared_cursor_copy_same_as_direct(sidecar: SidecarProcess) -> None:
    upstream = upstream_of(sidecar)
    direct = await asyncpg.connect(**asyncpg_kwargs(upstream.conninfo()))
    try:
        await direct.execute(ASYNCPG_SETUP)
    finally:
        await direct.close()
    proxied = await _asyncpg_scenario(sidecar.conninfo())
    direct = await asyncpg.connect(**asyncpg_kwargs(upstream.conninfo()))
    try:
        await direct.execute("TRUNCATE ap_items")
    finally:
        await direct.close()
    direct_seen = await _asyncpg_scenario(upstream.conninfo())
    assert proxied == direct_seen

    keys, values, pair, prepared, attrs, val21, count, got, cursor, st_in, st_out, _, head = proxied
    assert keys == ["i8", "num", "ts", "u", "j", "b", "ia", "ta", "p", "m", "ma", "i2d", "np"]
    assert values[:8] == (
        -(2**63), Decimal("-12345678901234567890.000000000000000001"), TS, UUID,
        '{"k": [1, 2.5, null, "x"]}', bytes(range(256)), [1, None, -3], ["a", "", None, "é"],
    )  # fmt: skip
    assert pair == (7, "seven", "happy")
    assert values[9:] == ("ok", ["sad", "happy"], [[1, 2], [3, None]], None)
    assert prepared == [(i * 2, "sad") for i in range(5)] and attrs == ["d", "m"]
    assert val21 == 42 and count == 300
    assert got == list(range(1, 301))
    assert cursor == ([(i, ("sad", "ok", "happy")[i % 3]) for i in range(251, 256)], 10,
                      (266, ("sad", "ok", "happy")[266 % 3]))  # fmt: skip
    assert st_in == "COPY 2000" and st_out == "COPY 286"
    assert head.startswith(b'0,"line\t0\n\\",sad\n7,')


# ---------------------------------------------------------------------------
# psql
# ---------------------------------------------------------------------------


def run_psql(server: PgServer, host: str, port: int, *args: str, stdin: str = "",
             timeout: float = 30) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=server.password, PGCONNECT_TIMEOUT="10", PGAPPNAME="psql-test",
               LC_ALL="C", LANG="C")  # fmt: skip
    cmd = [str(server.psql_bin), "-X", "-h", host, "-p", str(port), "-U", server.user,
           "-d", server.dbname, *args]  # fmt: skip
    return subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def test_psql_multi_statement_query_same_as_direct(sidecar: SidecarProcess) -> None:
    upstream = upstream_of(sidecar)
    query = "SELECT 1; SELECT 'two', 2.5; SELECT generate_series(3, 5); VALUES (NULL), ('six')"
    direct = run_psql(upstream, upstream.host, upstream.port, "-A", "-t", "-c", query)
    proxied = run_psql(upstream, sidecar.host, sidecar.port, "-A", "-t", "-c", query)
    assert (proxied.returncode, proxied.stdout, proxied.stderr) == (
        direct.returncode,
        direct.stdout,
        direct.stderr,
    )
    assert proxied.returncode == 0
    assert proxied.stdout == "1\ntwo|2.5\n3\n4\n5\n\nsix\n"
    # A multi-statement Query that fails in its middle: the earlier results were sent.
    bad = "SELECT 'before'; SELECT 1/0; SELECT 'after'"
    direct = run_psql(upstream, upstream.host, upstream.port, "-A", "-t", "-c", bad)
    proxied = run_psql(upstream, sidecar.host, sidecar.port, "-A", "-t", "-c", bad)
    assert (proxied.returncode, proxied.stdout, proxied.stderr) == (
        direct.returncode,
        direct.stdout,
        direct.stderr,
    )
    assert proxied.returncode == 1
    assert proxied.stdout == "before\n" and "division by zero" in proxied.stderr


# ---------------------------------------------------------------------------
# COPY with psycopg
# ---------------------------------------------------------------------------


def _copy_row(i: int) -> tuple[Any, ...]:
    return (i, f"row {i}\twith tab, newline\n and backslash \\ é", None if i % 10 == 0 else i * 0.5)


COPY_OUT_TEXT = "COPY (SELECT * FROM copy_rt ORDER BY id) TO STDOUT"
COPY_OUT_BINARY = "COPY (SELECT * FROM copy_rt ORDER BY id) TO STDOUT (FORMAT BINARY)"


def _copy_out(cur: psycopg.Cursor[Any], statement: str) -> bytes:
    with cur.copy(statement) as copy:
        return b"".join(bytes(block) for block in copy)


def test_psycopg_copy_in_and_out(sidecar: SidecarProcess) -> None:
    rows = [_copy_row(i) for i in range(10_000)]
    with psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE copy_rt (id int PRIMARY KEY, label text, half float8)")
        with conn.cursor() as cur:
            with cur.copy("COPY copy_rt (id, label, half) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == 10_000
            with cur.copy("COPY copy_rt TO STDOUT") as copy:
                copy.set_types(["int4", "text", "float8"])
                back = list(copy.rows())
            assert cur.rowcount == 10_000
            assert sorted(back) == sorted(rows, key=lambda r: r[0]) == rows
            # The raw text stream is byte-for-byte what the server sends direct.
            proxied_text = _copy_out(cur, COPY_OUT_TEXT)
            proxied_bin = _copy_out(cur, COPY_OUT_BINARY)  # binary COPY out as well
    with psycopg.connect(upstream_of(sidecar).dsn(), autocommit=True, connect_timeout=10) as conn:
        with conn.cursor() as cur:
            direct_text = _copy_out(cur, COPY_OUT_TEXT)
            direct_bin = _copy_out(cur, COPY_OUT_BINARY)
        count = conn.execute("SELECT count(*), sum(id) FROM copy_rt").fetchone()
        assert count == (10_000, 49_995_000)
    assert proxied_text == direct_text and proxied_bin == direct_bin
    assert proxied_text.count(b"\n") == 10_000
    assert proxied_text.startswith(b"0\trow 0\\twith tab, newline\\n and backslash \\\\ ")


def _failing_copy(dsn: str) -> list[Any]:
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE cpf (id int, label text)")
        try:
            with conn.cursor() as cur, cur.copy("COPY cpf FROM STDIN") as copy:
                for i in range(5000):
                    copy.write(f"{i}\tgood {i}\n")
                copy.write("not-a-number\tbad\n")
                for i in range(5000, 10_000):
                    copy.write(f"{i}\tgood {i}\n")
        except psycopg.Error as exc:
            seen.append((type(exc).__name__, exc.sqlstate, exc.diag.message_primary,
                         exc.diag.context))  # fmt: skip
        else:
            seen.append("no error")
        seen.append(conn.info.transaction_status.name)
        seen.append(conn.execute("SELECT count(*) FROM cpf").fetchone())
        with conn.cursor() as cur, cur.copy("COPY cpf FROM STDIN") as copy:
            copy.write_row((1, "after"))
        seen.append(conn.execute("SELECT * FROM cpf").fetchall())
    return seen


def test_psycopg_copy_in_failing_mid_stream(sidecar: SidecarProcess) -> None:
    results = {name: _failing_copy(dsn) for name, dsn in _both(sidecar).items()}
    assert results["proxied"] == results["direct"]
    assert results["proxied"] == [
        ("InvalidTextRepresentation", "22P02",
         'invalid input syntax for type integer: "not-a-number"',
         'COPY cpf, line 5001, column id: "not-a-number"'),
        "IDLE", (0,), [(1, "after")],
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# LISTEN / NOTIFY
# ---------------------------------------------------------------------------


def test_listen_notify_through_the_sidecar(sidecar: SidecarProcess) -> None:
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as listener,
        psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as notifier,
    ):
        listener.execute('LISTEN "flux chan"')
        notifier_pid = notifier.info.backend_pid
        notifier.execute("SELECT pg_notify('flux chan', %s)", ("payload ✓ 1",))
        notifier.execute("""NOTIFY "flux chan", 'second'""")
        got = [(n.channel, n.payload, n.pid)
               for n in listener.notifies(timeout=10.0, stop_after=2)]  # fmt: skip
        assert got == [("flux chan", "payload ✓ 1", notifier_pid),
                       ("flux chan", "second", notifier_pid)]  # fmt: skip
        # The listener's session is still in sync after the asynchronous messages.
        assert listener.execute("SELECT 'still fine'").fetchone() == ("still fine",)


async def test_asyncpg_listener_through_the_sidecar(sidecar: SidecarProcess) -> None:
    kwargs = asyncpg_kwargs(sidecar.conninfo())
    listener = await asyncpg.connect(**kwargs)
    notifier = await asyncpg.connect(**kwargs)
    try:
        received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        await listener.add_listener("jobs", lambda _c, pid, ch, payload: received.put_nowait(
            (pid, ch, payload)))  # fmt: skip
        await notifier.execute("SELECT pg_notify('jobs', 'job-42')")
        got = await asyncio.wait_for(received.get(), timeout=5)
        assert got == (notifier.get_server_pid(), "jobs", "job-42")
        assert await listener.fetchval("SELECT 7") == 7
    finally:
        await listener.close()
        await notifier.close()
