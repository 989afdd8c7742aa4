"""Statement analysis and rewrite forms, without a server: what runs, and what is captured."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recorder.mutation.analyze import analyze
from recorder.mutation.forms import Rewrite, rewrite
from recorder.mutation.identity import (
    SELECT_COLUMNS,
    SELECT_NONE,
    IdentityCache,
    TableIdentity,
)
from recorder.mutation.planner import Planner

KEYED = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
KEYLESS = TableIdentity(16385, "public", "t", "r", (), "whole row", columns=("a", "b"))
TRIGGERED = replace(KEYLESS, update_triggers=True)
RLS = replace(KEYED, row_security=True)
NO_SELECT = replace(KEYED, select=SELECT_NONE)
COLUMNS_ONLY = replace(KEYED, select=SELECT_COLUMNS)
RULES = replace(KEYED, has_rules=True)


def plan(sql: str, major: int, known: TableIdentity | str | None = None) -> Rewrite:
    return rewrite(sql, analyze(sql), server_major=major, lookup=lambda rel: known)


# (sql, server major, identity, form or uncaptured reason)
CASES = [
    ("INSERT INTO t VALUES (1)", 18, KEYED, "returning-old-new"),
    ("UPDATE t SET v = 1 WHERE id = 2", 18, KEYED, "returning-old-new"),
    ("DELETE FROM t USING s WHERE s.id = t.id", 18, KEYED, "returning-old-new"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 18, KEYED, "returning-old-new"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2", 18, KEYED, "returning-old-new"),
    ("UPDATE t AS old SET v = 1", 18, KEYED, "!old-new-alias"),
    ("MERGE INTO t USING s AS new ON t.id = new.id WHEN MATCHED THEN DELETE", 18, KEYED, "!old-new-alias"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 15, KEYED, "!merge-before-pg17"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 15, None, "!merge-before-pg17"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", 17, KEYED, "merge-returning"),
    ("INSERT INTO t VALUES (1)", 15, KEYED, "returning"),
    ("DELETE FROM t WHERE id = 1", 15, KEYED, "returning"),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", 15, KEYED, "returning"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = random() WHERE id = 2", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, KEYLESS, "cte-unassigned-columns"),
    ("UPDATE t SET id = id + 1 WHERE v = 2", 15, KEYED, "cte-unassigned-columns"),
    ("UPDATE t SET a = 1", 15, TRIGGERED, "!no-stable-row-key"),
    ("UPDATE t SET v = s.v FROM s WHERE s.id = t.id", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = s.v FROM s JOIN u USING (id) WHERE s.id = t.id RETURNING *", 15, KEYED, "cte-key"),
    ("UPDATE t SET v = 1 WHERE random() < 0.5", 15, KEYED, "!nondeterministic-where"),
    ("UPDATE t SET v = 1 WHERE id = (SELECT id FROM s LIMIT 1)", 15, KEYED, "!nondeterministic-where"),
    ("UPDATE t SET v = s.v FROM s WHERE s.id = t.id AND nextval('q') > 0", 15, KEYED, "!nondeterministic-where"),
    ("UPDATE t SET v = 1 WHERE CURRENT OF c", 15, KEYED, "!where-current-of"),
    ("INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "cte-upsert"),
    ("INSERT INTO t VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "cte-upsert"),
    ("INSERT INTO t VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET id = 3", 15, KEYED, "!upsert-assigns-conflict-columns"),
    ("INSERT INTO t SELECT * FROM s ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "!upsert-shape"),
    ("INSERT INTO t VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET v = 3", 15, KEYED, "!upsert-shape"),
    ("INSERT INTO t (id, v) VALUES (nextval('q'), 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, KEYED, "!nondeterministic-values"),
    ("UPDATE t SET v = 1", 15, "rewrite-failed-42501", "!rewrite-failed-42501"),
    ("UPDATE t SET v = 1", 15, TableIdentity(1, "public", "t", "v", (), "whole row"), "!view"),
    # What reading the row would change: the statement runs as sent.
    ("UPDATE t SET v = 1", 18, RLS, "!row-level security"),
    ("INSERT INTO t VALUES (1)", 15, RLS, "!row-level security"),
    ("DELETE FROM t", 18, NO_SELECT, "!no-select-privilege"),
    ("UPDATE t SET v = 1", 15, NO_SELECT, "!no-select-privilege"),
    ("UPDATE t SET v = 1", 15, RULES, "!rules"),
    ("UPDATE t SET v = 1", 15, COLUMNS_ONLY, "cte-key"),
    # Not known yet: only the catalog lookup rides along, and nothing is captured.
    ("INSERT INTO t VALUES (1)", 18, None, "identity-only"),
    ("UPDATE t SET v = 1 WHERE id = 2", 15, None, "identity-only"),
    ("UPDATE t SET v = 1 WHERE random() < 0.5", 15, None, "identity-only"),
    ("INSERT INTO t VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3", 15, None, "identity-only"),
    # Writable CTEs (see test_mutation_ctes.py): refused shapes run as sent.
    ("WITH d AS (UPDATE t SET v = 1 RETURNING *) INSERT INTO t SELECT * FROM d", 15, "rewrite-failed-42501", "!writable-cte-rewrite-failed-42501"),
    ("WITH d AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) SELECT 1", 18, KEYED, "!writable-cte-merge"),
    ("TRUNCATE t", 18, KEYED, "!truncate"),
    ("COPY t FROM STDIN", 18, KEYED, "!copy"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", 18, KEYED, "!copy"),
    ("EXPLAIN ANALYZE DELETE FROM t", 18, KEYED, "!explain-analyze"),
    ("EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT 1", 18, KEYED, "!explain-analyze"),
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


def test_locking_cte_keeps_the_updates_own_where_and_joins_nothing() -> None:
    sql = "WITH x AS (SELECT 1 AS one) UPDATE t SET v = 2 WHERE id IN (SELECT one FROM x)"
    key = "pg_catalog.jsonb_build_array(t.id)::pg_catalog.text"
    entry = f"((SELECT __flux_m FROM __flux_map) -> {key})"
    assert plan(sql, 15, KEYED).sql == (
        f"WITH x AS (SELECT 1 AS one) , __flux_old AS (SELECT {key} AS __flux_k, "
        "pg_catalog.to_json(t)::pg_catalog.text AS __flux_img, t.xmin::pg_catalog.text AS "
        "__flux_xmin FROM  t  WHERE  id IN (SELECT one FROM x) FOR NO KEY UPDATE OF t), "
        "__flux_map AS (SELECT pg_catalog.jsonb_object_agg(__flux_k, __flux_v) AS __flux_m FROM "
        "(SELECT __flux_k, CASE WHEN pg_catalog.count(DISTINCT __flux_img) = 1 THEN "
        "pg_catalog.jsonb_build_array(pg_catalog.min(__flux_img), pg_catalog.min(__flux_xmin)) "
        "END AS __flux_v, pg_catalog.sum(pg_catalog.sum(pg_catalog.octet_length(__flux_img))) "
        "OVER (ROWS UNBOUNDED PRECEDING) AS __flux_n FROM __flux_old GROUP BY __flux_k) AS "
        "__flux_g WHERE __flux_n <= 16777216) UPDATE t SET v = 2 WHERE ( id IN (SELECT one "
        "FROM x)) AND (SELECT true FROM __flux_map) RETURNING "
        f"({entry} ->> 0), pg_catalog.to_json(t)::pg_catalog.text, "
        "'t'::pg_catalog.regclass::pg_catalog.oid::pg_catalog.text, "
        f"({entry} ->> 1), t.xmin::pg_catalog.text"
    )


def test_an_update_of_the_key_is_keyed_by_what_it_leaves_alone() -> None:
    generated = replace(KEYLESS, generated=("g",))
    result = plan("UPDATE t SET b = 1 RETURNING *", 15, generated)
    assert "(pg_catalog.to_jsonb(t) - ARRAY['b', 'g']::pg_catalog.text[])" in result.sql
    assert "FOR NO KEY UPDATE OF t" in result.sql
    assert "RETURNING *, " in result.sql  # the client's star stays as written: no join added
    assert "FOR UPDATE OF t" in plan("UPDATE t SET id = 3", 15, KEYED).sql  # the UPDATE's lock


def test_row_versions_need_select_on_the_table() -> None:
    for major in (15, 18):
        capture = plan("UPDATE t SET v = 1", major, COLUMNS_ONLY).statements[0].capture
        assert capture is not None and capture.roles == ("old", "new", "oid")
        assert "xmin" not in plan("UPDATE t SET v = 1", major, COLUMNS_ONLY).sql


@pytest.mark.parametrize("major", [15, 18])
def test_the_lookup_alone_reads_no_column_of_the_table(major: int) -> None:
    sql = "UPDATE t SET v = 1 WHERE id = 2"
    result = plan(sql, major, None)
    capture = result.statements[0].capture
    assert capture is not None and capture.roles == ("identity",)
    assert capture.uncaptured == "identity-unknown"
    assert result.sql.startswith(sql + " RETURNING (SELECT pg_catalog.json_build_array(")
    added = result.sql[len(sql) :]
    assert "t." not in added and "to_json" not in added and "'t'::pg_catalog.regclass" in added
    assert "has_table_privilege" in added and "relrowsecurity" in added


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
    first = planner.plan(sql, "db", 15, "app")
    assert first is not None and first.statements[0].capture is not None
    assert first.statements[0].capture.form == "identity-only"
    planner.identities.put(("db", "app"), "t", KEYED)
    second = planner.plan(sql, "db", 15, "app")
    assert second is not None and second.statements[0].capture is not None
    assert second.statements[0].capture.form == "cte-key"
    assert second.role == "app"
    assert planner.parses == 1
    planner.plan("ALTER TABLE t ADD COLUMN w int", "db", 15)  # DDL forgets the table
    assert planner.identities.get(("db", "app"), "t") is None
    planner.plan("SELECT 1; UPDATE t SET v = 3", "db", 15)  # a second statement is looked at
    assert planner.parses == 3


def test_identities_and_privileges_are_per_role() -> None:
    planner = Planner(IdentityCache())
    planner.identities.put(("db", "app"), "t", KEYED)
    sql = "DELETE FROM t WHERE id = 1"
    for role, form in (("app", "returning"), ("reporting", "identity-only"), ("app", "returning")):
        result = planner.plan(sql, "db", 15, role)
        assert result is not None and result.statements[0].capture is not None
        assert result.statements[0].capture.form == form, role
    planner.plan("REVOKE SELECT ON t FROM reporting", "db", 15, "admin")  # forgets every role's
    assert planner.identities.get(("db", "app"), "t") is None
    assert planner.parses == 2
