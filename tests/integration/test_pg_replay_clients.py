"""Record, then replay, through real drivers and pools, with a different number of
connections at replay than at record, and the upstream replaced by a Sentinel that counts
every connection it is offered (none may reach it)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from tests.fix_pg import PgServer
from tests.fix_sentinel import Sentinel, stand_in_for
from tests.fix_sidecar import SidecarProcess, start_sidecar

TRACE = "5a1e0000000000000000000000000002"
COMMENT = f"/*traceparent='00-{TRACE}-00f067aa0ba902b7-01'*/"
SCHEMA = """
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE accounts (
    id int PRIMARY KEY, owner text NOT NULL, balance numeric, mood mood, tags text[],
    seen timestamptz
);
INSERT INTO accounts VALUES
    (1, 'ada', 100.50, 'calm', '{a,b}', '2024-01-02 03:04:05+00'),
    (2, 'grace', 7, 'busy', '{}', NULL),
    (3, 'edsger', 0.25, 'calm', '{x}', '1999-12-31 23:59:59+00');
"""
Workload = Callable[[str, str], Any]  # (dsn, "record" | "replay") -> what the client saw


@dataclass
class RoundTrip:
    recorded: Any
    replayed: Any
    replayer: SidecarProcess
    sentinel: Sentinel


@pytest.fixture
def round_trip(pg_db: PgServer, tmp_path: Path) -> Iterator[Callable[[Workload], RoundTrip]]:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    started: list[SidecarProcess] = []
    sentinels: list[Sentinel] = []

    def run(workload: Workload) -> RoundTrip:
        data_dir = tmp_path / "flux"
        for earlier in sentinels:  # a second round trip records against the real server
            earlier.close()
        pg_db.start()
        recorder = start_sidecar(data_dir, pg_db)
        started.append(recorder)
        first = workload(recorder.dsn(), "record")
        recorder.stop()
        # The upstream is stopped and a sentinel takes its port: replay must reach neither.
        sentinel = stand_in_for(pg_db)
        sentinels.append(sentinel)
        replayer = start_sidecar(data_dir, pg_db, mode="replay")
        started.append(replayer)
        second = workload(replayer.dsn(), "replay")
        return RoundTrip(first, second, replayer, sentinel)

    yield run
    for sidecar in started:
        sidecar.stop()
    for sentinel in sentinels:
        sentinel.close()


def assert_replayed(trip: RoundTrip) -> None:
    assert trip.replayed == trip.recorded
    assert trip.sentinel.connections == 0
    assert "no recorded answer" not in trip.replayer.stderr()


def test_psycopg_sync_one_connection_then_three(
    round_trip: Callable[[Workload], RoundTrip],
) -> None:
    by_id = f"SELECT owner, balance, mood, tags, seen FROM accounts WHERE id = %s {COMMENT}"

    def work(dsn: str, phase: str) -> list[Any]:
        conns = [psycopg.connect(dsn) for _ in range(1 if phase == "record" else 3)]
        try:
            out: list[Any] = []
            # Six runs of one statement: on one connection psycopg prepares it (a named
            # statement) from the fifth on; spread over three it stays unnamed.
            for n, i in enumerate((1, 2, 3, 1, 2, 3)):
                out.append(conns[n % len(conns)].execute(by_id, (i,)).fetchone())
            last = conns[-1]
            out.append(last.execute(f"SELECT sum(balance) FROM accounts {COMMENT}", prepare=True)
                       .fetchone())  # fmt: skip
            with last.transaction():
                cur = last.execute(
                    f"UPDATE accounts SET balance = balance * 2 WHERE id = %s {COMMENT}", (3,)
                )
                out.append(cur.rowcount)
                out.append(last.execute(by_id, (3,)).fetchone())
            for conn in conns:
                conn.commit()
            return out
        finally:
            for conn in conns:
                conn.close()

    trip = round_trip(work)
    assert trip.recorded[0] == ("ada", Decimal("100.50"), "calm", ["a", "b"], trip.recorded[0][4])
    assert trip.recorded[-1][1] == Decimal("0.50")  # the update's effect, as recorded
    assert_replayed(trip)


def test_psycopg_async_two_connections_then_four(
    round_trip: Callable[[Workload], RoundTrip],
) -> None:
    async def work(dsn: str, phase: str) -> list[Any]:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                 for _ in range(2 if phase == "record" else 4)]  # fmt: skip

        async def one(n: int) -> Any:
            conn = conns[n % len(conns)]
            cur = await conn.execute(
                f"SELECT id, owner, balance * %s FROM accounts WHERE id = %s {COMMENT}",
                (n, n % 3 + 1),
            )
            return await cur.fetchone()

        try:
            # Each connection runs its share concurrently with the others, one at a time.
            locks = [asyncio.Lock() for _ in conns]

            async def locked(n: int) -> Any:
                async with locks[n % len(conns)]:
                    return await one(n)

            return list(await asyncio.gather(*(locked(n) for n in range(12))))
        finally:
            for conn in conns:
                await conn.close()

    trip = round_trip(lambda dsn, phase: asyncio.run(work(dsn, phase)))
    assert trip.recorded[4] == (2, "grace", Decimal(28))
    assert_replayed(trip)


def test_psycopg_pipeline_one_connection_then_two(
    round_trip: Callable[[Workload], RoundTrip],
) -> None:
    def work(dsn: str, phase: str) -> list[Any]:
        conns = [
            psycopg.connect(dsn, autocommit=True) for _ in range(1 if phase == "record" else 2)
        ]
        out: list[Any] = []
        try:
            per_conn = 6 // len(conns)
            for c, conn in enumerate(conns):
                query = f"SELECT owner, %s::int FROM accounts WHERE id = %s {COMMENT}"
                with conn.pipeline():
                    shares = range(c * per_conn, (c + 1) * per_conn)
                    curs = [conn.execute(query, (n, n % 3 + 1)) for n in shares]
                out += [cur.fetchone() for cur in curs]
            return out
        finally:
            for conn in conns:
                conn.close()

    trip = round_trip(work)
    assert trip.recorded == [(("ada", "grace", "edsger")[n % 3], n) for n in range(6)]
    assert_replayed(trip)


def test_asyncpg_pool_of_one_then_three(round_trip: Callable[[Workload], RoundTrip]) -> None:
    async def work(dsn: str, phase: str) -> list[Any]:
        size = 1 if phase == "record" else 3
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        try:
            # A user-defined enum and an array: asyncpg introspects the types (catalog
            # queries of its own), decodes binary results, and caches prepared statements.
            query = (
                f"SELECT id, owner, balance, mood, tags, seen FROM accounts WHERE id = $1 {COMMENT}"
            )

            async def fetch(i: int) -> tuple[Any, ...]:
                return tuple(await pool.fetchrow(query, i))

            rows = list(await asyncio.gather(*(fetch(n % 3 + 1) for n in range(9))))
            async with pool.acquire() as conn:
                stmt = await conn.prepare(f"SELECT sum(balance), count(*) FROM accounts {COMMENT}")
                totals = tuple(await stmt.fetchrow())
                params = [(p.name, p.kind) for p in stmt.get_parameters()]
                columns = [(a.name, a.type.name) for a in stmt.get_attributes()]
                async with conn.transaction():
                    await conn.execute(
                        f"UPDATE accounts SET mood = $1 WHERE id = $2 {COMMENT}", "busy", 1
                    )
                    changed = await conn.fetchval(
                        f"SELECT mood FROM accounts WHERE id = 1 {COMMENT}"
                    )
            return [rows, totals, params, columns, changed]
        finally:
            await pool.close()

    trip = round_trip(lambda dsn, phase: asyncio.run(work(dsn, phase)))
    rows, totals, _, columns, changed = trip.recorded
    assert rows[0][:5] == (1, "ada", Decimal("100.50"), "calm", ["a", "b"])
    assert totals == (Decimal("107.75"), 3)
    assert columns == [("sum", "numeric"), ("count", "int8")]
    assert changed == "busy"
    assert_replayed(trip)


def test_psql_one_session_then_three(
    round_trip: Callable[[Workload], RoundTrip], pg_db: PgServer
) -> None:
    statements = [
        f"SELECT owner, balance FROM accounts ORDER BY id {COMMENT};",
        f"SELECT array_agg(mood ORDER BY id) FROM accounts {COMMENT};",
        f"SELECT 6 * 7 {COMMENT};",
    ]

    def psql(dsn: str, script: str) -> str:
        # A script on standard input: psql sends each statement as a Query of its own.
        result = subprocess.run(
            [str(pg_db.psql_bin), "-X", "-A", "-t", "-d", dsn, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    def work(dsn: str, phase: str) -> str:
        if phase == "record":
            return psql(dsn, "\n".join(statements))
        return "".join(psql(dsn, sql) for sql in statements)

    trip = round_trip(work)
    assert trip.recorded == "ada|100.50\ngrace|7\nedsger|0.25\n{calm,busy,calm}\n42\n"
    assert_replayed(trip)


class Base(orm.DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    owner: orm.Mapped[str]
    balance: orm.Mapped[Decimal | None]


def test_sqlalchemy_orm_pool_of_one_then_three(
    round_trip: Callable[[Workload], RoundTrip],
) -> None:
    """No comments here: an ORM's statements replay from every recording, in order."""

    def work(dsn: str, phase: str) -> list[Any]:
        size = 1 if phase == "record" else 3
        url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = sa.create_engine(url, pool_size=size, max_overflow=0, pool_timeout=30)
        out: list[Any] = []
        try:
            with orm.Session(engine) as session:
                session.add(Account(id=4, owner="barbara", balance=Decimal("12.5")))
                session.commit()
                out.append(
                    [
                        (a.id, a.owner)
                        for a in session.scalars(sa.select(Account).order_by(Account.id))
                    ]
                )
            # The pool's connections in use at once: each thread reads one account.
            found: dict[int, Any] = {}
            barrier = threading.Barrier(size)

            def read(ids: list[int]) -> None:
                with orm.Session(engine) as session:
                    session.connection()  # check a connection out before the others finish
                    barrier.wait(timeout=60)
                    for i in ids:
                        found[i] = session.get(Account, i).balance  # type: ignore[union-attr]

            threads = [threading.Thread(target=read, args=([i for i in range(1, 5) if i % size == t],))
                       for t in range(size)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            out.append(sorted(found.items()))
            out.append(engine.pool.size())
            return out
        finally:
            engine.dispose()

    trip = round_trip(work)
    assert trip.recorded[0] == [(1, "ada"), (2, "grace"), (3, "edsger"), (4, "barbara")]
    assert trip.recorded[1][3] == (4, Decimal("12.5"))
    assert (trip.recorded[2], trip.replayed[2]) == (1, 3)
    trip.replayed[2] = trip.recorded[2]
    assert_replayed(trip)
