"""UPDATEs of one row by its key through a recording sidecar, on PostgreSQL 15 (the light
locking CTE of recorder.mutation.keyrow) and 18 (RETURNING old/new): the client's answers
are what the server gives directly, and every before image is the row as it was."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.integration import mutation_oracle as oracle


def _direct(db: PgServer, *statements: str) -> None:
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql.encode())


def _updates(sidecar: SidecarProcess, table: str) -> list[tuple[object, object]]:
    sidecar.stop()  # the recorder stores what it holds before it exits
    logged = oracle.logged_mutations(sidecar.data_dir)
    return [(m["old"], m["new"]) for m in logged if m["table"] == table and m["op"] == "update"]


def test_updates_by_key_capture_the_rows_before_and_after(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    _direct(pg_db, "CREATE TABLE acct (id int PRIMARY KEY, v int, note text)",
            "INSERT INTO acct SELECT n, n, 'n' || n FROM generate_series(1, 6) AS n")  # fmt: skip
    sidecar = sidecar_factory(pg_db)
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        simple = psycopg.ClientCursor(conn)  # values inline, one text each: planned by shape
        for n in range(1, 5):
            simple.execute(f"UPDATE acct SET v = v + {n * 10} WHERE id = {n}")
            assert simple.rowcount == 1
        returned = simple.execute("UPDATE acct SET note = 'é''s' WHERE 5 = id RETURNING *")
        assert returned.fetchall() == [(5, 5, "é's")]
        conn.execute(b"UPDATE acct SET v = -v WHERE id = %s", (6,))  # a parameter
        assert simple.execute("UPDATE acct SET v = 0 WHERE id = 99").rowcount == 0
    expected = [
        ({"id": n, "v": n, "note": f"n{n}"}, {"id": n, "v": n + n * 10, "note": f"n{n}"})
        for n in range(1, 5)
    ]
    expected.append(({"id": 5, "v": 5, "note": "n5"}, {"id": 5, "v": 5, "note": "é's"}))
    expected.append(({"id": 6, "v": 6, "note": "n6"}, {"id": 6, "v": -6, "note": "n6"}))
    assert _updates(sidecar, "acct") == expected


def test_a_key_dropped_behind_the_sidecars_back_costs_no_statement(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """The sidecar still believes ``id`` is a key when two rows share it: the UPDATE runs
    exactly as without it, and no row gets another row's before image."""
    _direct(pg_db, "CREATE TABLE dup (id int PRIMARY KEY, v int)", "INSERT INTO dup VALUES (1, 1)")
    sidecar = sidecar_factory(pg_db)
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        simple = psycopg.ClientCursor(conn)
        simple.execute("UPDATE dup SET v = v + 1 WHERE id = 1")  # identity known and used
        _direct(pg_db, "ALTER TABLE dup DROP CONSTRAINT dup_pkey", "INSERT INTO dup VALUES (1, 5)")
        rows = simple.execute("UPDATE dup SET v = v + 10 WHERE id = 1 RETURNING v").fetchall()
        assert sorted(rows) == [(12,), (15,)] and simple.rowcount == 2
    first, *both = _updates(sidecar, "dup")
    assert first == ({"id": 1, "v": 1}, {"id": 1, "v": 2})
    assert sorted(both, key=lambda change: str(change[1])) == (
        [(None, {"id": 1, "v": 12}), (None, {"id": 1, "v": 15})]
        if pg_db.version < 18
        else [({"id": 1, "v": 2}, {"id": 1, "v": 12}), ({"id": 1, "v": 5}, {"id": 1, "v": 15})]
    )
