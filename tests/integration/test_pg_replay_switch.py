"""Mode switches reaching open PostgreSQL sessions, under load, through real clients.

Record → replay: each session is handed to the replay server at its next idle point and
goes on answered from recordings (the client's pool keeps its connections, and its
prepared statements); the upstream backends end. Replay → record: each session is closed
at its next idle point with FATAL 57P01 and pools reconnect through the upstream.

The Sentinel cannot stand in for the upstream here (recording needs it), so the upstream's
own pg_stat_activity tells whether the sidecar still holds backends there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import sqlalchemy as sa

from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess

pytestmark = pytest.mark.parametrize("pg", ["18"], indirect=True)

TOKEN = "tok-switch-8d1e5b7c20a94f36"
APP = "flux-switch-test"
QUERY = "SELECT v, %s::int FROM tick"
POOL_QUERY = "SELECT v, $1::int, 'pool' FROM tick"
CLIENTS = 4  # psycopg connections, each in a thread of its own
POOL = 2  # asyncpg pool size
ROUNDS = 120  # queries per client and phase: bounded
SWITCH_AFTER = 15  # every client has run this many live queries when the switch is asked

Factory = Callable[..., SidecarProcess]


def switch(sidecar: SidecarProcess, mode: str) -> None:
    response = httpx.post(
        f"{sidecar.admin_url}/mode",
        json={"mode": mode},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def upstream_backends(pg: PgServer) -> int:
    rows = pg._superuser_query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
    )
    return int(rows[0][0])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def setup_tick(pg_db: PgServer) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE tick (v int)")
        conn.execute("INSERT INTO tick VALUES (1)")


class PoolThread:
    """An asyncpg pool on an event loop that runs all along in a thread of its own, as in an
    async app: the pool sees connections close while they sit idle in it."""

    def __init__(self, dsn: str, size: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> asyncpg.Pool:  # in the loop: a pool is bound to the running loop
            return await asyncpg.create_pool(
                dsn, min_size=size, max_size=size, server_settings={"application_name": APP}
            )

        self.pool: asyncpg.Pool = self.call(make())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.call(self.pool.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def set_tick(pg_db: PgServer, value: int) -> None:
    """Changes the upstream behind the sidecar's back: live answers now differ from the
    recorded ones, so every answer tells where it came from."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("UPDATE tick SET v = %s", (value,))


class Loop:
    """One client's bounded loop: the value each answer carried, and whether the switch
    had been made (the admin API had answered) before the query was sent."""

    def __init__(self, switched: threading.Event) -> None:
        self.switched = switched
        self.answers: list[tuple[bool, int]] = []
        self.errors: list[BaseException] = []

    def before(self, j: int) -> bool:
        """Called before sending round ``j``: whether the switch was made already."""
        if j == ROUNDS // 2 and not self.switched.is_set():
            self.switched.wait(120)  # a fast client must still have queries after the switch
        return self.switched.is_set()

    def check(self, count: int = ROUNDS) -> None:
        assert self.errors == []
        assert len(self.answers) == count
        values = [v for _, v in self.answers]
        first_replayed = values.index(1)
        # Live answers (2) until the session's idle point, recorded ones (1) from then on,
        # and every query sent after the switch was answered from recordings.
        assert values == [2] * first_replayed + [1] * (count - first_replayed)
        assert all(v == 1 for after, v in self.answers if after)


def psycopg_client(dsn: str, prepare: bool) -> tuple[psycopg.Connection[Any], Callable[..., Any]]:
    conn = psycopg.connect(dsn, autocommit=True)

    def run(loop: Loop | None) -> None:
        for j in range(ROUNDS):
            if loop is None:
                conn.execute(QUERY, (j,), prepare=prepare)
                continue
            try:
                after = loop.before(j)
                row = conn.execute(QUERY, (j,), prepare=prepare).fetchone()
                assert row is not None
                loop.answers.append((after, row[0]))
            except BaseException as exc:  # reported by Loop.check
                loop.errors.append(exc)
                return

    return conn, run


def test_record_to_replay_under_load_keeps_every_connection(
    pg_db: PgServer, sidecar_factory: Factory
) -> None:
    setup_tick(pg_db)
    sidecar = sidecar_factory(pg_db, "--admin-token", TOKEN, expect=("pg", "admin"))
    dsn = sidecar.dsn(application_name=APP)
    # Half of the psycopg clients prepare their statement (a named one, made in the live
    # session); asyncpg prepares everything and keeps it in its statement cache.
    clients = [psycopg_client(dsn, prepare=k % 2 == 0) for k in range(CLIENTS)]
    pooled = PoolThread(dsn, POOL)

    async def pool_round(j: int) -> int:
        row = await pooled.pool.fetchrow(POOL_QUERY, j)
        assert row is not None
        return int(row[0])

    def run_pool(loop: Loop | None) -> None:
        async def body() -> None:
            for j in range(ROUNDS):
                after = loop.before(j) if loop is not None else False
                # Two at a time, so both pooled connections carry traffic.
                answers = await asyncio.gather(pool_round(j), pool_round(j))
                if loop is not None:
                    loop.answers += [(after, v) for v in answers]

        try:
            pooled.call(body())
        except BaseException as exc:  # reported by Loop.check
            assert loop is not None
            loop.errors.append(exc)

    try:
        # Record: every answer carries v = 1.
        for _, run in clients:
            run(None)
        run_pool(None)
        sidecar.wait_for(lambda s: s.get("events", 0) >= (CLIENTS + 2) * ROUNDS, timeout=60)
        set_tick(pg_db, 2)
        assert upstream_backends(pg_db) == CLIENTS + POOL

        switched = threading.Event()
        loops = [Loop(switched) for _ in clients]
        pool_loop_state = Loop(switched)
        threads = [
            threading.Thread(target=run, args=(loop,))
            for (_, run), loop in zip(clients, loops, strict=True)
        ]
        threads.append(threading.Thread(target=run_pool, args=(pool_loop_state,)))
        for thread in threads:
            thread.start()
        wait_until(
            lambda: (
                all(len(loop.answers) >= SWITCH_AFTER for loop in loops)
                and len(pool_loop_state.answers) >= SWITCH_AFTER
            ),
            "every client ran live queries",
        )
        switch(sidecar, "replay")
        switched.set()
        for thread in threads:
            thread.join(180)
        assert not any(thread.is_alive() for thread in threads)

        for loop in loops:
            loop.check()
        pool_loop_state.check(2 * ROUNDS)
        # The sidecar's backends are gone from the upstream; the clients kept every
        # connection, now answered by the replay server.
        wait_until(lambda: upstream_backends(pg_db) == 0, "the upstream lost every backend")
        samples = metrics(sidecar.admin_url)
        assert samples["flux_pg_handovers_total"] == CLIENTS + POOL
        assert samples['flux_open_connections{listener="pg"}'] == CLIENTS + POOL
        assert all(not conn.closed for conn, _ in clients)
        log = sidecar.stderr()
        assert "no recorded answer" not in log
        assert log.count("answered from recordings from now on") == CLIENTS + POOL
    finally:
        for conn, _ in clients:
            conn.close()
        pooled.close()


def test_replay_to_record_closes_with_57P01_and_pools_reconnect(
    pg_db: PgServer, sidecar_factory: Factory
) -> None:
    setup_tick(pg_db)
    sidecar = sidecar_factory(pg_db, "--admin-token", TOKEN, expect=("pg", "admin"))
    dsn = sidecar.dsn(application_name=APP)
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url, pool_size=2, max_overflow=0, pool_pre_ping=True)
    plain = psycopg.connect(dsn, autocommit=True)
    in_txn = psycopg.connect(dsn)  # transactions: its idle point is after COMMIT
    pooled = PoolThread(dsn, 2)

    def through_all(j: int) -> list[int]:
        with engine.connect() as conn:
            orm_v = conn.execute(sa.text("SELECT v, :j AS j FROM tick"), {"j": j}).one()[0]
        row = pooled.call(pooled.pool.fetchrow(POOL_QUERY, j))
        assert row is not None
        plain_row = plain.execute(QUERY, (j,)).fetchone()
        txn_row = in_txn.execute(QUERY, (j,)).fetchone()
        in_txn.commit()
        assert plain_row is not None and txn_row is not None
        return [orm_v, row[0], plain_row[0], txn_row[0]]

    try:
        assert through_all(0) == [1, 1, 1, 1]
        assert through_all(1) == [1, 1, 1, 1]
        sidecar.wait_for(lambda s: s.get("events", 0) >= 8, timeout=60)
        set_tick(pg_db, 2)
        switch(sidecar, "replay")
        assert through_all(0) == [1, 1, 1, 1]  # recorded answers: the upstream says 2
        wait_until(lambda: upstream_backends(pg_db) == 0, "the upstream lost every backend")

        # A transaction open at the switch goes on from recordings until it ends.
        assert in_txn.execute(QUERY, (1,)).fetchone() == (1, 1)
        switch(sidecar, "record")
        assert in_txn.execute(QUERY, (1,)).fetchone() == (1, 1)  # still answered by replay
        in_txn.commit()  # the idle point: the session ends right after it
        # Idle sessions end at once, as a server shutting down ends them.
        handed_over = metrics(sidecar.admin_url)["flux_pg_handovers_total"]
        assert handed_over >= 5  # the ORM's, the pool's two, and the two plain connections
        wait_until(
            lambda: sidecar.stderr().count("closed with 57P01") == handed_over,
            "every replayed session was closed",
        )
        for conn in (plain, in_txn):
            with pytest.raises(psycopg.OperationalError) as ended:
                conn.execute(QUERY, (5,))
            assert ended.value.sqlstate == "57P01", ended.value
            assert "left replay mode" in str(ended.value)
        # The pools notice and reconnect, through the upstream: live answers again.
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT v FROM tick")).scalar() == 2
        assert pooled.call(pooled.pool.fetchval("SELECT v FROM tick")) == 2
        assert upstream_backends(pg_db) >= 2
        assert metrics(sidecar.admin_url)["flux_pg_replay_sessions_ended_total"] == handed_over
    finally:
        plain.close()
        in_txn.close()
        engine.dispose()
        pooled.close()
