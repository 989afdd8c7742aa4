"""MERGE on PostgreSQL 17 (RETURNING and merge_action(), no OLD/NEW): captured through a
locking CTE for the UPDATE actions' before images.

- The mutation log equals an audit trigger's ``to_jsonb(OLD)``/``to_jsonb(NEW)`` row by row
  over a corpus of MERGE shapes, through psycopg (simple and prepared) and asyncpg
  (extended), committed and rolled back; the shapes that run as sent say why.
- Every message a raw client receives is the same direct and through the sidecar, on 17 and
  on 15 (where MERGE has no RETURNING and runs as sent).
- A MERGE blocked by a concurrent writer changes the same rows as direct, and its before
  images are the versions it overwrote.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.integration import mutation_oracle as oracle
from tests.integration.test_pg_mutation_concurrency import SETUP as BLOCKING_SETUP
from tests.integration.test_pg_mutation_concurrency import _blocked_update
from tests.integration.test_pg_mutation_failopen import (
    RAN,
    Corpus,
    _ext,
    _logged,
    _q,
    assert_counted,
    mutations,
    same_direct_and_through,
)

FAIL_OPEN = "/* runs as sent */"
# (sql with {b} the driver's key base and $n parameters, parameters)
SHAPES: list[tuple[str, tuple[Any, ...]]] = [
    ("INSERT INTO mtarget VALUES ({b}+1, 1), ({b}+2, 2), ({b}+4, 4), ({b}+5, 5), ({b}+6, 6)", ()),
    # matched update and not matched insert, a VALUES source
    ("MERGE INTO mtarget t USING (VALUES ({b}+1, 10), ({b}+3, 30)) s(id, v) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = t.v + s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", ()),
    # matched delete alone: no CTE
    ("MERGE INTO mtarget t USING (VALUES ({b}+2)) s(id) ON t.id = s.id WHEN MATCHED THEN DELETE", ()),
    # conditional clauses, DO NOTHING, client RETURNING with merge_action()
    ("MERGE INTO mtarget t USING (VALUES ({b}+3, 50), ({b}+1, -1), ({b}+4, 5), ({b}+7, 7), "
     "({b}+8, -8)) s(id, v) ON t.id = s.id WHEN MATCHED AND s.v > 20 THEN DELETE "
     "WHEN MATCHED AND s.v < 0 THEN DO NOTHING WHEN MATCHED THEN UPDATE SET v = t.v + s.v "
     "WHEN NOT MATCHED AND s.v > 0 THEN INSERT VALUES (s.id, s.v) "
     "RETURNING merge_action(), s.id, t.*", ()),
    # the key assigned: keyed by what no UPDATE action assigns
    ("MERGE INTO mtarget t USING (VALUES ({b}+5)) s(id) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET id = t.id + 50", ()),
    # not matched by source, deleted (restricted to this driver's rows)
    ("MERGE INTO mtarget t USING (VALUES ({b}+4, 1)) s(id, v) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = 0 WHEN NOT MATCHED BY SOURCE AND t.id = {b}+6 THEN DELETE",
     ()),
    # prepared, with parameters
    ("MERGE INTO mtarget t USING (VALUES ($1::int, $2::int)) s(id, v) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
     ("+4", 44)),
    ("MERGE INTO mtarget t USING (VALUES ($1::int, $2::int)) s(id, v) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
     ("+9", 9)),
    # composite key
    ("INSERT INTO pairs VALUES ({b}+1, 'x', 1), ({b}+1, 'y', 2)", ()),
    ("MERGE INTO pairs p USING (VALUES ({b}+1, 'x', 5), ({b}+1, 'z', 6)) s(a, b, v) "
     "ON p.a = s.a AND p.b = s.b WHEN MATCHED THEN UPDATE SET v = p.v + s.v "
     "WHEN NOT MATCHED THEN INSERT VALUES (s.a, s.b, s.v)", ()),
    # no primary key: the whole row but the assigned column
    ("INSERT INTO notes VALUES ('a{b}', 1), ('b{b}', 2), ('b{b}', 2)", ()),
    ("MERGE INTO notes x USING (VALUES ('a{b}'), ('b{b}')) s(body) ON x.body = s.body "
     "WHEN MATCHED THEN UPDATE SET n = x.n * 10", ()),
    # partitioned: no row versions
    ("INSERT INTO parts VALUES ({b}+1, 'eu', 1), ({b}+2, 'us', 2)", ()),
    ("MERGE INTO parts p USING (VALUES ({b}+1, 'eu', 3), ({b}+3, 'us', 4)) s(id, region, v) "
     "ON p.id = s.id AND p.region = s.region WHEN MATCHED THEN UPDATE SET v = p.v + s.v "
     "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.region, s.v)", ()),
    # a subquery source, a table with a generated column
    ("INSERT INTO accounts (id, owner, balance) VALUES ({b}+1, 'ann', 10)", ()),
    ("MERGE INTO accounts a USING (SELECT id + {b} AS id, v FROM src) s ON a.id = s.id "
     "WHEN MATCHED THEN UPDATE SET balance = a.balance + s.v "
     "WHEN NOT MATCHED THEN INSERT (id, owner, balance) VALUES (s.id, 'src', s.v)", ()),
    # a BEFORE UPDATE trigger on a table keyed by its primary key
    ("INSERT INTO stamped (id, v) VALUES ({b}+1, 1)", ()),
    ("MERGE INTO stamped t USING src s ON t.id = s.id + {b} WHEN MATCHED THEN UPDATE SET v = s.v",
     ()),
    # fail-open
    ("MERGE INTO mtarget t USING (VALUES ({b}+1)) s(id) ON t.id = s.id "
     "WHEN MATCHED AND random() < 2 THEN UPDATE SET v = 77 " + FAIL_OPEN, ()),
    ("MERGE INTO mtarget t USING (VALUES ({b}+1)) s(id) ON t.id = s.id AND t.id < {b}+100 "
     "WHEN NOT MATCHED BY SOURCE AND t.id = {b}+9 THEN UPDATE SET v = 99 " + FAIL_OPEN, ()),
]  # fmt: skip
ROLLED_BACK = (
    "MERGE INTO mtarget t USING (VALUES ({b}+1, 1000)) s(id, v) ON t.id = s.id "
    "WHEN MATCHED THEN UPDATE SET v = s.v"
)
FAIL_OPEN_REASONS = {"nondeterministic-merge": 2, "merge-not-matched-by-source-update": 2}


@pytest.fixture(scope="module")
def db17(pg17: PgServer) -> Iterator[PgServer]:
    """One database for the module, with the audit trigger and its tables."""
    name = f"t_{secrets.token_hex(6)}"
    pg17._superuser_query(f"CREATE DATABASE {name} OWNER {pg17.user}")
    db = pg17.with_dbname(name)
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute(oracle.schema_sql().encode())
        conn.execute(
            (RAN + "CREATE TABLE mt (id int PRIMARY KEY, v int);" + _logged("mt")).encode()
        )
        conn.execute(BLOCKING_SETUP.encode())
    try:
        yield db
    finally:
        pg17._superuser_query(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _psycopg_shapes(dsn: str, base: int) -> list[Any]:
    returned: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n, (sql, params) in enumerate(SHAPES):
            text, values = oracle.bind(sql, params, base)
            cur = conn.execute(oracle.psycopg_sql(text).encode(), values, prepare=n % 2 == 0)
            if cur.description:
                returned.append(sorted(cur.fetchall(), key=str))
        with conn.transaction():
            conn.execute(oracle.bind(ROLLED_BACK, (), base)[0].encode())
            raise psycopg.Rollback()
    return returned


async def _asyncpg_shapes(info: dict[str, Any], base: int) -> None:
    conn = await asyncpg.connect(**info, server_settings={"application_name": oracle.APP})
    try:
        for sql, params in SHAPES:
            text, values = oracle.bind(sql, params, base)
            if values:
                await conn.execute(text, *values)  # extended protocol
            else:
                await conn.fetch(text)  # extended protocol, an unnamed statement
        tr = conn.transaction()
        await tr.start()
        await conn.execute(oracle.bind(ROLLED_BACK, (), base)[0])
        await tr.rollback()
    finally:
        await conn.close()


def test_merge_on_17_is_logged_as_the_audit_trigger_sees_it(
    db17: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecar_factory(db17)
    through = _psycopg_shapes(sidecar.dsn(application_name=oracle.APP), 0)
    info = sidecar.conninfo()
    info["database"] = info.pop("dbname")
    asyncio.run(_asyncpg_shapes(info, 1000))
    tables = {"mtarget", "pairs", "notes", "parts", "accounts", "stamped"}
    assert_counted(sidecar, FAIL_OPEN_REASONS)  # stops the sidecar: everything is written
    logged = oracle.logged_mutations(sidecar.data_dir)
    with psycopg.connect(db17.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tbl, op, old, new, query FROM audit WHERE app = %s ORDER BY id", (oracle.APP,)
        ).fetchall()
    assert any(FAIL_OPEN in r[4] for r in rows)  # they did change rows
    truth = oracle.audit_history([r[:4] for r in rows if FAIL_OPEN not in r[4]])
    ours = oracle.log_history(logged, tables)
    assert set(ours) == set(truth), set(ours) ^ set(truth)
    for key, changes in truth.items():
        assert ours[key] == changes, key
    # Rolled back: in the log, marked, and absent from the table.
    rolled_back = [m for m in logged if m["status"] == "rolled_back"]
    assert [m["new"]["v"] for m in rolled_back] == [1000, 1000]
    assert all(m["old"] is not None for m in rolled_back)
    # The client's own RETURNING, exactly what it gets direct (the same rows exist direct).
    assert through and all(len(row) == 4 for row in through[0])
    assert {row[0] for row in through[0]} == {"DELETE", "UPDATE", "INSERT"}
    ops = {(m["table"], m["op"]) for m in logged}
    assert {("mtarget", "insert"), ("mtarget", "update"), ("mtarget", "delete")} <= ops


MERGE_RESET = """
TRUNCATE mt; INSERT INTO mt VALUES (1, 1), (2, 2), (4, 4), (5, 5);
"""
WIRE = [
    ("update insert", "MERGE INTO mt USING (VALUES (1, 10), (3, 30)) s(id, v) ON mt.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = mt.v + s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)"),
    ("conditional returning", "MERGE INTO mt t USING (VALUES (1, 10), (3, 30), (4, 40)) s(id, v) "
     "ON t.id = s.id WHEN MATCHED AND s.v > 20 THEN DELETE WHEN MATCHED THEN UPDATE SET v = s.v "
     "WHEN NOT MATCHED BY SOURCE AND t.id = 5 THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES "
     "(s.id, s.v) RETURNING merge_action(), t.*, s.v"),
    ("delete only", "MERGE INTO mt USING (VALUES (2)) s(id) ON mt.id = s.id WHEN MATCHED THEN DELETE"),
    # 17 has no OLD/NEW in RETURNING: a source named old is the source
    ("source named old", "MERGE INTO mt USING (VALUES (1, 10)) old(id, v) ON mt.id = old.id "
     "WHEN MATCHED THEN UPDATE SET v = old.v RETURNING old.v, mt.*"),
    ("fails", "MERGE INTO mt USING (VALUES (1), (1)) s(id) ON mt.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = 0"),  # the same row twice: an error both ways
    ("unknown column", "MERGE INTO mt USING (VALUES (1)) s(id) ON mt.id = s.id "
     "WHEN MATCHED AND s.nope = 1 THEN UPDATE SET v = 0"),  # its position in the client's text
    ("nondeterministic", "MERGE INTO mt USING (VALUES (1)) s(id) ON mt.id = s.id "
     "WHEN MATCHED AND random() < 2 THEN UPDATE SET v = 0"),
    ("by source update", "MERGE INTO mt USING (VALUES (1)) s(id) ON mt.id = s.id "
     "WHEN NOT MATCHED BY SOURCE THEN UPDATE SET v = 0"),
    # A WHEN condition is evaluated on matched pairs only: (50, 0) matches no row, and the
    # locking CTE must not divide by its zero either (the planner would push the condition
    # down to the source's scan).
    ("condition on matches only", "MERGE INTO mt USING (VALUES (1, 100), (2, 100), (50, 0)) "
     "s(id, d) ON mt.id = s.id WHEN MATCHED AND 100 / s.d = 1 THEN UPDATE SET v = mt.v + 1"),
]  # fmt: skip
AS_SENT_ON_17 = {"nondeterministic", "by source update"}


@pytest.mark.pg  # its servers are asked for by name, at run time
@pytest.mark.parametrize("major", ["pg15", "pg17"])
def test_every_message_is_the_same_direct_and_through(
    major: str,
    request: pytest.FixtureRequest,
    sidecar_factory: Callable[..., SidecarProcess],
) -> None:
    server: PgServer = request.getfixturevalue(major)
    if major == "pg17":
        db = request.getfixturevalue("db17")
    else:
        dbname = f"t_{secrets.token_hex(6)}"
        server._superuser_query(f"CREATE DATABASE {dbname} OWNER {server.user}")
        request.addfinalizer(
            lambda: server._superuser_query(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        )
        db = server.with_dbname(dbname)
        with psycopg.connect(db.dsn(), autocommit=True) as conn:
            conn.execute(
                (RAN + "CREATE TABLE mt (id int PRIMARY KEY, v int);" + _logged("mt")).encode()
            )
    sidecar = sidecar_factory(db)
    corpus: Corpus = [_q(name, sql) for name, sql in WIRE]
    corpus += [(f"{name} extended", sql, _ext(sql)) for name, sql in WIRE]
    rounds, succeeded = same_direct_and_through(
        db, sidecar, db.user, db.password, MERGE_RESET, corpus
    )
    failing = {"fails", "unknown column", "fails extended", "unknown column extended"}
    if major == "pg15":
        failing |= {"conditional returning", "conditional returning extended"}  # no RETURNING
        failing |= {"source named old", "source named old extended"}
        failing |= {"by source update", "by source update extended"}  # no BY SOURCE
    assert {name for name, _, _ in corpus} - succeeded == failing
    for name, sql, _ in corpus:
        if name not in succeeded:
            continue
        as_sent = major == "pg15" or name.removesuffix(" extended") in AS_SENT_ON_17
        for ran in rounds:  # a statement trigger per action: one text or more
            assert ran[name] and all((text == sql) is as_sent for text in ran[name]), name
    if major == "pg15":
        assert not mutations(sidecar)
        return
    assert_counted(sidecar, {
        "nondeterministic-merge": 4, "merge-not-matched-by-source-update": 4,
        "identity-unknown": 0, "merge-pg17": 0,
    })  # fmt: skip
    # Per round, through both protocols: update 1, insert 3; conditional: delete 4, update 1,
    # delete 5, insert 3; delete 2; update 1; update 1 and 2.
    assert len(mutations(sidecar)) == 2 * 2 * (2 + 4 + 1 + 1 + 2)


# (name, the concurrent change, the MERGE that waits for it, the table)
BLOCKED = [
    ("key changed", "UPDATE k SET id = 10 WHERE id = 1",
     "MERGE INTO k USING (VALUES (1), (2), (3)) s(id) ON k.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = k.v + 10", "k"),
    ("value changed", "UPDATE k SET v = 100 WHERE id = 1",
     "MERGE INTO k USING (VALUES (1), (2), (3)) s(id) ON k.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = k.v + 10 RETURNING merge_action(), k.*", "k"),
    ("moved to delete", "UPDATE k SET v = -5 WHERE id = 1",
     "MERGE INTO k USING (VALUES (1), (2), (4)) s(id) ON k.id = s.id "
     "WHEN MATCHED AND k.v < 0 THEN DELETE WHEN MATCHED THEN UPDATE SET v = k.v + 10 "
     "WHEN NOT MATCHED THEN INSERT VALUES (s.id, 0)", "k"),
    ("deleted", "DELETE FROM k WHERE id = 2",
     "MERGE INTO k USING (VALUES (1), (2), (3)) s(id) ON k.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = k.v + 10 WHEN NOT MATCHED THEN INSERT VALUES (s.id, -1)",
     "k"),
    ("keyless changed", "UPDATE n SET b = 100 WHERE a = 1",
     "MERGE INTO n USING (VALUES (1), (2)) s(a) ON n.a = s.a "
     "WHEN MATCHED THEN UPDATE SET b = n.b + 10", "n"),
    ("key assigned", "UPDATE k SET v = 50 WHERE id = 3",
     "MERGE INTO k USING (VALUES (2), (3)) s(id) ON k.id = s.id "
     "WHEN MATCHED THEN UPDATE SET id = k.id + 100", "k"),
    ("by source", "UPDATE k SET v = 7 WHERE id = 3",
     "MERGE INTO k USING (VALUES (1)) s(id) ON k.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = 0 WHEN NOT MATCHED BY SOURCE THEN DELETE", "k"),
]  # fmt: skip


def test_a_blocked_merge_changes_the_same_rows_as_direct(
    db17: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecar_factory(db17)
    tags: dict[str, str] = {}
    for name, blocker, sql, table in BLOCKED:
        direct = _blocked_update(db17, db17.dsn(), "direct", blocker, sql, table)
        through = _blocked_update(db17, sidecar.dsn(), "through", blocker, sql, table)
        assert through == direct, name  # command tag, client rows, final table
        tags[name] = direct[0]
    sidecar.stop()
    events = [e for e in mutations(sidecar) if not e.attrs.get("key_changed")]
    for name, _, sql, _ in BLOCKED:
        ours = [e for e in events if e.payload.get("statement") == sql]
        assert len(ours) == int(tags[name].split()[-1]), name
        updates = [e for e in ours if e.attrs["op"] == "update"]
        assert updates and all(e.payload["before"] is not None for e in updates), name
        if name == "value changed":
            (moved,) = [e for e in updates if '"id":1,' in e.payload["after"]]
            assert moved.payload["before"] == '{"id":1,"v":100}'  # the blocker's version
        if name == "keyless changed":
            (moved,) = [e for e in updates if '"a":1,' in e.payload["after"]]
            assert moved.payload["before"] == '{"a":1,"b":100}'
        if name == "moved to delete":
            assert [e.payload["before"] for e in ours if e.attrs["op"] == "delete"] == [
                '{"id":1,"v":-5}'
            ]


NOT_CHANGED = (
    "MERGE INTO k USING (VALUES (1), (2)) s(id) ON k.id = s.id "
    "WHEN MATCHED AND k.id = 1 THEN DO NOTHING WHEN MATCHED THEN UPDATE SET v = k.v + 1"
)
RESET_K = b"TRUNCATE k; INSERT INTO k VALUES (1, 1), (2, 2)"


def test_rows_the_merge_does_not_change_are_not_locked(
    db17: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """A row held by another session, or changed since the snapshot under REPEATABLE READ,
    that MERGE leaves alone (DO NOTHING) does not stop it direct: nor through the sidecar."""
    sidecar = sidecar_factory(db17)
    results = []
    for dsn in (db17.dsn(), sidecar.dsn()):
        with psycopg.connect(db17.dsn(), autocommit=True) as admin:
            admin.execute(RESET_K)
            with psycopg.connect(db17.dsn()) as holder:
                holder.execute(b"UPDATE k SET v = 10 WHERE id = 1")  # holds row 1's lock
                # lock_timeout: a wait for row 1 would fail the statement, not hang the test
                with psycopg.connect(dsn, autocommit=True, options="-c lock_timeout=5s") as conn:
                    tag = conn.execute(NOT_CHANGED.encode()).statusmessage
                holder.rollback()
            admin.execute(RESET_K)
            with psycopg.connect(dsn) as conn:
                conn.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute(b"SELECT 1")  # the snapshot
                admin.execute(b"UPDATE k SET v = 20 WHERE id = 1")
                repeatable = conn.execute(NOT_CHANGED.encode()).statusmessage
                conn.commit()
            final = admin.execute(b"SELECT * FROM k ORDER BY id").fetchall()
        results.append((tag, repeatable, final))
    assert results[1] == results[0] == ("MERGE 1", "MERGE 1", [(1, 20), (2, 3)])
    sidecar.stop()
    changes = [e for e in mutations(sidecar) if e.payload.get("statement") == NOT_CHANGED]
    assert [(e.payload["before"], e.payload["after"]) for e in changes] == [
        ('{"id":2,"v":2}', '{"id":2,"v":3}')
    ] * 2
