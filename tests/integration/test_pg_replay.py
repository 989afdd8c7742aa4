"""Record, then replay with the upstream gone: same answers, zero connections upstream."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest

from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sentinel import Sentinel, stand_in_for
from tests.fix_sidecar import SidecarProcess, start_sidecar

TRACE = "5a1e0000000000000000000000000001"
COMMENT = f"/*traceparent='00-{TRACE}-00f067aa0ba902b7-01'*/"
TOKEN = "tok-replay-report-51c0e9a2d7"
VOLATILE = (
    "SELECT count(*) FROM accounts WHERE {ts}::timestamptz < now() + interval '1 day' "
    f"AND {{id}}::uuid IS NOT NULL {COMMENT}"
)


def replay_report(sidecar: SidecarProcess) -> dict[str, Any]:
    """The current run's report, from the admin API (what `flux replay` reads)."""
    response = httpx.get(
        f"{sidecar.admin_url}/replay", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


@pytest.fixture
def recorded(
    pg_db: PgServer, tmp_path: Path
) -> Iterator[Callable[..., tuple[Any, Any, SidecarProcess, Sentinel]]]:
    """Runs a workload through a recording sidecar, then again through a replaying one
    (started with the extra arguments given)."""
    started: list[SidecarProcess] = []
    sentinels: list[Sentinel] = []
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ada', 100.50), (2, 'grace', 7)")

    def run(
        workload: Callable[[str], Any], *args: str
    ) -> tuple[Any, Any, SidecarProcess, Sentinel]:
        data_dir = tmp_path / "flux"
        for earlier in sentinels:  # a second round trip records against the real server
            earlier.close()
        pg_db.start()
        recorder = start_sidecar(data_dir, pg_db)
        started.append(recorder)
        first = workload(recorder.dsn())
        recorder.stop()
        # The upstream is stopped and a sentinel takes its port: replay must reach neither.
        sentinel = stand_in_for(pg_db)
        sentinels.append(sentinel)
        replayer = start_sidecar(data_dir, pg_db, *args, mode="replay")
        started.append(replayer)
        second = workload(replayer.dsn())
        return first, second, replayer, sentinel

    yield run
    for sidecar in started:
        sidecar.stop()
    for sentinel in sentinels:
        sentinel.close()


def psycopg_workload(dsn: str) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(dsn) as conn:
        out.append(
            conn.execute(f"SELECT owner, balance FROM accounts ORDER BY id {COMMENT}").fetchall()
        )
        out.append(
            conn.execute(f"SELECT balance FROM accounts WHERE id = %s {COMMENT}", (2,)).fetchone()
        )
        cur = conn.execute(
            f"UPDATE accounts SET balance = balance + 1 WHERE id = %s {COMMENT}", (1,)
        )
        out.append(cur.rowcount)
        conn.commit()
        with conn.pipeline():
            a = conn.execute(f"SELECT count(*) FROM accounts {COMMENT}")
            b = conn.execute(f"SELECT max(id) FROM accounts {COMMENT}")
        out += [a.fetchone(), b.fetchone()]
        conn.commit()
    return out


def test_psycopg_sync_and_pipeline_replay_without_upstream(recorded: Any) -> None:
    first, second, replayer, sentinel = recorded(psycopg_workload)
    assert second == first
    assert first[0] == [("ada", first[0][0][1]), ("grace", first[0][1][1])]
    assert sentinel.connections == 0
    samples = metrics(replayer.admin_url)
    assert samples["flux_pg_replay_hits_total"] >= 4
    assert samples.get("flux_pg_replay_misses_total", 0) == 0


def test_asyncpg_prepared_binary_replay_without_upstream(recorded: Any) -> None:
    async def work(dsn: str) -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            stmt = await conn.prepare(
                f"SELECT id, owner, balance FROM accounts WHERE id = $1 {COMMENT}"
            )
            rows = [tuple(await stmt.fetchrow(i)) for i in (1, 2)]
            async with conn.transaction():
                total = await conn.fetchval(f"SELECT sum(balance) FROM accounts {COMMENT}")
            return [rows, total]
        finally:
            await conn.close()

    first, second, _, sentinel = recorded(lambda dsn: asyncio.run(work(dsn)))
    assert second == first
    assert sentinel.connections == 0


def test_psql_simple_protocol_replay(recorded: Any, pg_db: PgServer) -> None:
    def work(dsn: str) -> str:
        sql = f"SELECT owner FROM accounts ORDER BY id {COMMENT}; SELECT 40 + 2 {COMMENT};"
        result = subprocess.run(
            [str(pg_db.psql_bin), "-X", "-A", "-t", "-d", dsn, "-c", sql],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout + result.stderr

    first, second, _, sentinel = recorded(work)
    assert second == first and "ada" in first and "42" in first
    assert sentinel.connections == 0


def test_changed_query_is_a_miss_naming_the_recorded_statement(recorded: Any) -> None:
    calls = {"n": 0}

    def work(dsn: str) -> Any:
        calls["n"] += 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            if calls["n"] == 1:
                return conn.execute(
                    f"SELECT owner FROM accounts WHERE id = %s {COMMENT}", (1,)
                ).fetchall()
            # The "new code" asks for another column: no recording answers it.
            try:
                conn.execute(f"SELECT owner, balance FROM accounts WHERE id = %s {COMMENT}", (1,))
            except psycopg.Error as exc:
                return exc
            return None

    _, error, replayer, sentinel = recorded(work)
    assert isinstance(error, psycopg.Error)
    assert error.sqlstate == "R9001"
    assert "select owner from accounts where id = $1" in str(error)
    assert sentinel.connections == 0
    assert "no recorded answer" in replayer.stderr()
    assert metrics(replayer.admin_url)["flux_pg_replay_misses_total"] == 1


def test_changed_prepared_statement_is_a_miss_naming_the_recorded_one(recorded: Any) -> None:
    """asyncpg prepares first (Parse, Describe): the miss comes at the Describe."""
    calls = {"n": 0}

    async def work(dsn: str) -> Any:
        calls["n"] += 1
        conn = await asyncpg.connect(dsn)
        try:
            if calls["n"] == 1:
                return await conn.fetchval(f"SELECT owner FROM accounts WHERE id = $1 {COMMENT}", 1)
            try:
                await conn.fetchrow(
                    f"SELECT owner, balance FROM accounts WHERE id = $1 {COMMENT}", 1
                )
            except asyncpg.PostgresError as exc:
                return exc
            return None
        finally:
            await conn.close()

    first, error, replayer, sentinel = recorded(
        lambda dsn: asyncio.run(work(dsn)), "--admin-token", TOKEN
    )
    assert first == "ada"
    assert isinstance(error, asyncpg.PostgresError) and error.sqlstate == "R9001"
    assert "select owner from accounts where id = $1" in str(error)
    (miss,) = replay_report(replayer)["misses"]
    assert miss["closest"] == "select owner from accounts where id = $1"
    assert miss["trace"] == TRACE
    assert sentinel.connections == 0


def test_changed_simple_query_is_a_miss_naming_the_recorded_one(
    recorded: Any, pg_db: PgServer
) -> None:
    calls = {"n": 0}

    def work(dsn: str) -> str:
        calls["n"] += 1
        columns = "owner" if calls["n"] == 1 else "owner, balance"
        result = subprocess.run(
            [str(pg_db.psql_bin), "-X", "-A", "-t", "-d", dsn, "-c",
             f"SELECT {columns} FROM accounts WHERE id = 2 {COMMENT}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return result.stdout + result.stderr

    first, second, _, sentinel = recorded(work)
    assert first == "grace\n"
    assert "flux replay: no recorded answer for 'select owner, balance from accounts" in second
    assert "the closest recorded statement is 'select owner from accounts where id = ?'" in second
    assert sentinel.connections == 0


def test_volatile_parameters_still_match(recorded: Any) -> None:
    def work(dsn: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Each run sends a different timestamp and a fresh UUID.
            return conn.execute(
                VOLATILE.format(ts="%s", id="%s"),
                (datetime.datetime.now(datetime.UTC), uuid.uuid4()),
            ).fetchone()

    first, second, replayer, sentinel = recorded(work, "--admin-token", TOKEN)
    assert second == first == (2,)
    report = replay_report(replayer)
    assert report["misses"] == []
    (entry,) = report["volatile"]
    assert entry["trace"] == TRACE and "$1::timestamptz" in entry["request"]
    # Both values differed, and the report says which and how.
    assert [where for where, _, _ in entry["differences"]] == [0, 1]
    for _, before, now in entry["differences"]:
        assert before != now
    assert uuid.UUID(entry["differences"][1][1]) != uuid.UUID(entry["differences"][1][2])
    assert sentinel.connections == 0


def test_volatile_binary_parameters_still_match(recorded: Any) -> None:
    """asyncpg sends its parameters in binary: the recorded types tell they are volatile."""

    async def work(dsn: str) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(
                VOLATILE.format(ts="$1", id="$2"), datetime.datetime.now(datetime.UTC), uuid.uuid4()
            )
        finally:
            await conn.close()

    first, second, replayer, sentinel = recorded(
        lambda dsn: asyncio.run(work(dsn)), "--admin-token", TOKEN
    )
    assert second == first == 2
    (entry,) = replay_report(replayer)["volatile"]
    assert [where for where, _, _ in entry["differences"]] == [0, 1]
    assert sentinel.connections == 0


def test_replay_needs_no_upstream_and_live_modes_refuse_without_one(
    pg_db: PgServer, tmp_path: Path
) -> None:
    """An imported bundle replays on a laptop that has no database: with no --upstream-db
    the replay listener still answers; switched to record, new sessions get 08001."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ada', 100.50), (2, 'grace', 7)")
    data_dir = tmp_path / "flux"
    recorder = start_sidecar(data_dir, pg_db)
    try:
        recorded = psycopg_workload(recorder.dsn())
    finally:
        recorder.stop()
    replayer = start_sidecar(data_dir, None, mode="replay", env={"FLUX_ADMIN_TOKEN": "t0k"})
    try:
        dsn = pg_db.dsn(host=replayer.host, port=replayer.port)
        assert psycopg_workload(dsn) == recorded
        assert "no upstream" in "".join(replayer.stdout_lines)
        switched = httpx.post(
            f"{replayer.admin_url}/mode",
            json={"mode": "record"},
            headers={"authorization": "Bearer t0k"},
            timeout=10,
        )
        assert switched.status_code == 200, switched.text
        with pytest.raises(psycopg.OperationalError, match="no upstream database"):
            psycopg.connect(dsn, connect_timeout=10).close()
    finally:
        replayer.stop()


def test_copy_out_replays_from_the_recording(recorded: Any) -> None:
    """COPY TO STDOUT: CopyOutResponse, CopyData and CopyDone come back as recorded."""

    def work(dsn: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            with cur.copy(
                f"COPY (SELECT id, owner FROM accounts ORDER BY id) TO STDOUT {COMMENT}"
            ) as copy:
                rows = [bytes(chunk) for chunk in copy]
            return rows, cur.statusmessage

    first, second, _, sentinel = recorded(work)
    assert first[0] and b"ada" in b"".join(first[0])
    assert second == first
    assert sentinel.connections == 0
