"""An UPDATE blocked by a concurrent writer under READ COMMITTED changes the same rows
through the sidecar as direct, on PostgreSQL 15 (the locking CTE) and 18 (RETURNING
old/new), and its before image is the row version it overwrote.

One session changes a row (its key, another column, or so that it no longer matches)
and holds its transaction open; a second session's UPDATE, direct or through the
sidecar, waits on that row's lock until the first commits, then follows the row to its
new version. The second session's command tag and the final table must be the same
both ways. A rewrite that joined the CTE's locked rows back to the UPDATE's scan on the
key, or on the whole row for a table without one, skipped exactly those rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from flux_proxy.keysetup import reader_sealer
from recorder.store import open_store
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess

SETUP = """
CREATE TABLE k (id int PRIMARY KEY, v int);
CREATE TABLE n (a int, b int);
"""
RESET = """
TRUNCATE k, n;
INSERT INTO k VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO n VALUES (1, 1), (2, 2), (3, 3);
"""
# (name, the concurrent change, the UPDATE that waits for it, the table)
CASES = [
    ("key changed", "UPDATE k SET id = 10 WHERE id = 1", "UPDATE k SET v = v + 10 WHERE v >= 0", "k"),
    ("value changed", "UPDATE k SET v = 100 WHERE id = 1", "UPDATE k SET v = v + 10 WHERE v >= 0", "k"),
    ("no longer matches", "UPDATE k SET v = -5 WHERE id = 1", "UPDATE k SET v = v + 10 WHERE v >= 0", "k"),
    ("deleted", "DELETE FROM k WHERE id = 2", "UPDATE k SET v = v + 10 WHERE v >= 0 RETURNING id, v", "k"),
    ("keyless changed", "UPDATE n SET b = 100 WHERE a = 1", "UPDATE n SET b = b + 10 WHERE a >= 0", "n"),
    ("keyless now matches", "UPDATE n SET a = 7 WHERE a = 3", "UPDATE n SET b = 0 WHERE a < 5", "n"),
    ("key assigned", "UPDATE k SET v = 50 WHERE id = 3", "UPDATE k SET id = id + 100 WHERE v > 2", "k"),
]  # fmt: skip
WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
)


def _blocked_update(db: PgServer, dsn: str, app: str, blocker: str, sql: str, table: str) -> Any:
    """``blocker`` in an open transaction, ``sql`` from another session until it waits on
    the blocker's lock, then the blocker commits. Returns (tag, rows, final table)."""
    with psycopg.connect(db.dsn(), autocommit=True) as admin:
        admin.execute(RESET.encode())
        holder = psycopg.connect(db.dsn())
        try:
            holder.execute(blocker.encode())
            result: dict[str, Any] = {}

            def update() -> None:
                try:
                    with psycopg.connect(dsn, autocommit=True, application_name=app) as conn:
                        cur = conn.execute(sql.encode())
                        result["tag"] = cur.statusmessage
                        result["rows"] = sorted(cur.fetchall()) if cur.description else None
                except BaseException as exc:  # reported below
                    result["error"] = exc

            thread = threading.Thread(target=update)
            thread.start()
            deadline = time.monotonic() + 60
            while admin.execute(WAITING.encode(), (app,)).fetchone() != (1,):
                assert thread.is_alive() and time.monotonic() < deadline, result
                time.sleep(0.05)
            holder.commit()
        finally:
            holder.close()
        thread.join(60)
        assert not thread.is_alive() and "error" not in result, result
        final = admin.execute(f"SELECT * FROM {table} ORDER BY 1, 2".encode()).fetchall()
    return result["tag"], result["rows"], final


@pytest.mark.parametrize(("name", "blocker", "sql", "table"), CASES, ids=[c[0] for c in CASES])
def test_a_blocked_update_changes_the_same_rows_as_direct(
    pg_db: PgServer,
    sidecar_factory: Callable[..., SidecarProcess],
    name: str,
    blocker: str,
    sql: str,
    table: str,
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(SETUP.encode())
    sidecar = sidecar_factory(pg_db)
    with psycopg.connect(sidecar.dsn(application_name="warm-up"), autocommit=True) as conn:
        conn.execute(RESET.encode())
    direct = _blocked_update(pg_db, pg_db.dsn(), "direct", blocker, sql, table)
    through = _blocked_update(pg_db, sidecar.dsn(), "through", blocker, sql, table)
    assert through == direct
    sidecar.stop()
    store = open_store(
        sidecar.data_dir, readonly=True, sealer=reader_sealer(None, sidecar.data_dir)
    )
    try:
        changes = [s.event for s in store.events(kind="mutation")]
    finally:
        store.close()
    # What the sidecar's session changed: one row event each (the warm-up's second UPDATE
    # of each table too), each before image the version that the UPDATE overwrote.
    ours = [
        e for e in changes if e.payload.get("statement") == sql and not e.attrs.get("key_changed")
    ]
    assert len(ours) == int(direct[0].split()[-1]), ours
    after = {e.payload["after"] for e in ours}
    assert len(after) == len(ours)
    if name == "key changed":
        (moved,) = [e for e in ours if '"id":10' in e.payload["after"]]
        assert moved.payload["before"] == '{"id":10,"v":1}'  # the blocker's version
    if name in ("value changed", "keyless changed"):
        (moved,) = [e for e in ours if "100" in (e.payload["before"] or "")]
        assert moved.payload["after"] in ('{"id":1,"v":110}', '{"a":1,"b":110}')
    assert all(e.payload["before"] is not None for e in ours)
