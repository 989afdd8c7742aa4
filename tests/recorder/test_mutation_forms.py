"""Statement analysis and rewrite forms, without a server: what runs, and what is captured."""

from __future__ import annotations

import pytest

from recorder.mutation.analyze import analyze
from recorder.mutation.forms import Rewrite, rewrite
from recorder.mutation.identity import IdentityCache, TableIdentity
from recorder.mutation.planner import Planner

KEYED = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
KEYLESS = TableIdentity(16385, "public", "t", "r", (), "whole row", columns=("a", "b"))


def plan(sql: str, major: int, known: TableIdentity | str | None = None) -> Rewrite:
    return rewrite(sql, analyze(sql), server_major=major, lookup=lambda rel: known)


# (sql, server major, identity, form or uncaptured reason)
CASES = [
    ("INSERT INTO t VALUES (1)", 18, None, "returning-old-new"),
    ("UPDATE t SET v = 1 WHERE id = 2", 18, KEYED, "returning-old-new"),
    ("DELETE FROM t USING s WHERE s.id = t.id", 18, KEYED, "returning-old-new"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 18, KEYED, "returning-old-new"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2", 18, KEYED, "returning-old-new"),
    ("UPDATE t AS old SET v = 1", 18, KEYED, "!old-new-alias"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 15, KEYED, "!merge-before-pg17"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 17, KEYED, "!merge-pg17"),
    ("INSERT INTO t VALUES (1)", 15, None, "returning"),
    ("DELETE FROM t WHERE id = 1", 15, KEYED, "returning"),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", 15, KEYED, "returning"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = random() WHERE id = 2", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, None, "cte-dynamic-key"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, KEYLESS, "cte-whole-row"),
    ("UPDATE t SET v = s.v FROM s WHERE s.id = t.id", 15, KEYED, "cte-key-where-twice"),
    ("UPDATE t SET v = 1 WHERE random() < 0.5", 15, KEYLESS, "!nondeterministic-where"),
    ("UPDATE t SET v = 1 WHERE id = (SELECT id FROM s LIMIT 1)", 15, None, "identity-only"),
    ("UPDATE t SET v = s.v FROM s WHERE s.id = t.id AND nextval('q') > 0", 15, KEYED, "!nondeterministic-where"),
    ("UPDATE t SET v = 1 WHERE CURRENT OF c", 15, KEYED, "!where-current-of"),
    ("UPDATE t SET v = s.v FROM s JOIN u USING (id) WHERE s.id = t.id RETURNING *", 15, KEYED, "!returning-star-over-join"),
    ("INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, None, "cte-upsert"),
    ("INSERT INTO t VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, None, "identity-only"),
    ("INSERT INTO t VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "cte-upsert"),
    ("INSERT INTO t SELECT * FROM s ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "!upsert-shape"),
    ("INSERT INTO t VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET v = 3", 15, KEYED, "!upsert-shape"),
    ("INSERT INTO t (id, v) VALUES (nextval('q'), 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "!nondeterministic-values"),
    ("UPDATE t SET v = 1", 15, "rewrite-failed-42501", "!rewrite-failed-42501"),
    ("UPDATE t SET v = 1", 15, TableIdentity(1, "public", "t", "v", (), "whole row"), "!view"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", 18, KEYED, "!writable-cte"),
    ("TRUNCATE t", 18, KEYED, "!truncate"),
    ("COPY t FROM STDIN", 18, KEYED, "!copy"),
    ("EXPLAIN ANALYZE DELETE FROM t", 18, KEYED, "!explain-analyze"),
    ("PREPARE p AS DELETE FROM t", 18, KEYED, "!sql-prepare"),
    ("CALL p()", 18, KEYED, "!procedure"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "major", "known", "expected"), CASES)
def test_forms_and_fail_open_reasons(
    sql: str, major: int, known: TableIdentity | str | None, expected: str
) -> None:
    result = plan(sql, major, known)
    (statement,) = result.statements
    if expected.startswith("!"):
        assert statement.capture is None
        assert statement.uncaptured == expected[1:]
        assert result.sql == sql  # runs exactly as the client sent it
    else:
        assert statement.capture is not None
        assert statement.capture.form == expected
        assert result.sql != sql
        assert analyze(result.sql)  # the rewrite parses


def test_native_form_appends_old_and_new_to_the_clients_returning() -> None:
    sql = "UPDATE t SET v = v + 1 WHERE id = $1 RETURNING WITH (OLD AS o) o.v, v -- done"
    result = plan(sql, 18, KEYED)
    assert result.sql == (
        "UPDATE t SET v = v + 1 WHERE id = $1 RETURNING WITH (OLD AS o) o.v, v, "
        "pg_catalog.to_json(o)::pg_catalog.text, pg_catalog.to_json(new)::pg_catalog.text, "
        "'t'::pg_catalog.regclass::pg_catalog.oid::pg_catalog.text, o.xmin::pg_catalog.text, "
        "new.xmin::pg_catalog.text -- done"
    )
    capture = result.statements[0].capture
    assert capture is not None and capture.client_returning
    assert capture.roles == ("old", "new", "oid", "version_old", "version_new")


def test_locking_cte_moves_the_where_and_keeps_the_clients_with() -> None:
    sql = "WITH x AS (SELECT 1 AS one) UPDATE t SET v = 2 WHERE id IN (SELECT one FROM x)"
    result = plan(sql, 15, KEYED)
    assert result.sql == (
        "WITH x AS (SELECT 1 AS one) , __flux_old AS (SELECT t.id AS __flux_k0, t.xmin AS "
        "__flux_xmin, pg_catalog.to_json(t)::pg_catalog.text AS __flux_img FROM  t  WHERE  id IN "
        "(SELECT one FROM x) FOR NO KEY UPDATE OF t) UPDATE t SET v = 2  FROM __flux_old WHERE "
        "t.id = __flux_old.__flux_k0 RETURNING __flux_old.__flux_img, "
        "pg_catalog.to_json(t)::pg_catalog.text, 't'::pg_catalog.regclass::pg_catalog.oid::"
        "pg_catalog.text, __flux_old.__flux_xmin::pg_catalog.text, t.xmin::pg_catalog.text"
    )


def test_bare_star_is_spelled_out_over_the_from_items() -> None:
    sql = "UPDATE t AS a SET v = s.v FROM s, (SELECT 1) AS q(x) WHERE s.id = a.id RETURNING *"
    assert "RETURNING  a.*, s.*, q.*, __flux_old.__flux_img" in plan(sql, 15, KEYED).sql


def test_error_positions_map_back_to_the_clients_text() -> None:
    sql = "UPDATE t SET v = 1 WHERE nope = 2"
    result = plan(sql, 15, KEYED)
    copied = result.sql.index("nope") + 1  # 1-based, as the server reports it
    assert result.original_position(copied) == sql.index("nope") + 1
    assert not result.added(copied)
    assert result.added(result.sql.index("__flux_old") + 1)


def test_several_statements_are_rewritten_each_in_place() -> None:
    sql = "SELECT 1; DELETE FROM t WHERE id = 1; SET x = 1; INSERT INTO t VALUES (2)"
    result = plan(sql, 18, KEYED)
    assert [s.capture is not None for s in result.statements] == [False, True, False, True]
    assert result.sql.startswith("SELECT 1; DELETE FROM t WHERE id = 1 RETURNING ")
    assert "; SET x = 1; INSERT INTO t VALUES (2) RETURNING " in result.sql


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM t", "  /* hi */ select 1", "SHOW search_path", "BEGIN", "select 1;",
     "SELECT 'update t set v = 1'", "VALUES (1)"],
)  # fmt: skip
def test_statements_that_change_nothing_are_never_parsed(sql: str) -> None:
    planner = Planner()
    assert planner.plan(sql, "db", 18) is None
    assert planner.parses == 0


def test_analysis_is_cached_per_text_and_rewrites_follow_identity() -> None:
    planner = Planner(IdentityCache())
    sql = "UPDATE t SET v = 1 WHERE id = 2"
    first = planner.plan(sql, "db", 15)
    assert first is not None and first.statements[0].capture is not None
    assert first.statements[0].capture.form == "cte-dynamic-key"
    planner.identities.put("db", "t", KEYED)
    second = planner.plan(sql, "db", 15)
    assert second is not None and second.statements[0].capture is not None
    assert second.statements[0].capture.form == "cte-key"
    assert planner.parses == 1
    planner.plan("ALTER TABLE t ADD COLUMN w int", "db", 15)  # DDL forgets the table
    assert planner.identities.get("db", "t") is None
    planner.plan("SELECT 1; UPDATE t SET v = 3", "db", 15)  # a second statement is looked at
    assert planner.parses == 3
