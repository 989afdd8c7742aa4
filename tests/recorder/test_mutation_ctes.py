"""Writable CTEs, without a server: the rewrite text, the column names a wrapper gives,
what is refused, and reading the rows back (the server side is test_pg_writable_ctes.py)."""

from __future__ import annotations

import json

import pytest
from pglast import parser

from recorder.mutation.analyze import analyze
from recorder.mutation.ctes import MAX_WEIGHT, read_back, readback_sql, side_effect
from recorder.mutation.forms import Rewrite, rewrite
from recorder.mutation.identity import TableIdentity
from recorder.mutation.planner import Planner
from recorder.mutation.withclause import figure_colname

T = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
A = TableIdentity(16385, "public", "a", "r", (), "whole row", columns=("x", "y"))


def plan(sql: str, major: int, *, readback: bool = False) -> Rewrite:
    known = {"t": T, "a": A}
    return rewrite(sql, analyze(sql), server_major=major, lookup=known.get, readback=readback)


def test_a_cte_with_returning_is_renamed_and_wrapped_under_its_own_name() -> None:
    sql = "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING id, v AS w) SELECT * FROM d"
    result = plan(sql, 18)
    effect = side_effect(0, [
        "pg_catalog.to_json(old)::pg_catalog.text", "pg_catalog.to_json(new)::pg_catalog.text",
        "'t'::pg_catalog.regclass::pg_catalog.oid::pg_catalog.text",
        "old.xmin::pg_catalog.text", "new.xmin::pg_catalog.text",
    ])  # fmt: skip
    assert result.sql == (
        "WITH __flux_cte0(__flux_c0, __flux_c1, __flux_x)  AS (DELETE FROM t WHERE "
        f"id = 1 RETURNING id, v AS w, {effect}), d AS (SELECT __flux_c0 AS id, __flux_c1 AS w "
        "FROM __flux_cte0) SELECT * FROM d"
    )
    (statement,) = result.statements
    assert statement.capture is None and statement.uncaptured is None
    (cte,) = statement.ctes
    assert (cte.op, cte.relation, cte.form) == ("delete", "t", "returning-old-new")
    assert cte.roles == ("old", "new", "oid", "version_old", "version_new")
    parser.parse_sql(result.sql)


def test_the_clients_alias_list_stays_on_the_wrapper() -> None:
    sql = "WITH u(a) AS (UPDATE t SET v = 2 RETURNING id, EXISTS (SELECT 1)) SELECT a FROM u"
    assert plan(sql, 18).statements[0].uncaptured == "writable-cte-unnamed-column"
    sql = "WITH u(a, b) AS (UPDATE t SET v = 2 RETURNING id, EXISTS (SELECT 1)) SELECT a FROM u"
    result = plan(sql, 18)
    assert "u(a, b) AS (SELECT __flux_c0, __flux_c1 FROM __flux_cte0)" in result.sql


def test_a_cte_without_returning_gets_one_and_no_wrapper() -> None:
    sql = "WITH i AS (INSERT INTO t VALUES (1, 2)) SELECT 1"
    result = plan(sql, 15)
    assert result.sql.startswith("WITH i AS (INSERT INTO t VALUES (1, 2) RETURNING (SELECT CASE")
    assert result.sql.endswith(") SELECT 1")
    assert result.statements[0].ctes[0].form == "returning"
    # Read by the outer query: the server's own error must be raised, so it runs as sent.
    read = "WITH i AS (INSERT INTO t VALUES (1, 2)) SELECT * FROM i"
    assert plan(read, 15).sql == read


def test_a_simple_query_reads_the_rows_back_right_after_the_statement() -> None:
    sql = "WITH d AS (DELETE FROM t RETURNING id) INSERT INTO a SELECT id, id FROM d; SELECT 2"
    result = plan(sql, 15, readback=True)
    first, ours, last = result.statements
    assert first.capture is not None and first.capture.relation == "a"  # the outer INSERT
    assert [c.relation for c in first.ctes] == ["t"]
    assert ours.readback == first.ctes and ours.capture is None
    assert not last.ctes and not last.readback
    assert "SELECT id, id FROM d RETURNING" in result.sql
    assert result.sql.endswith(f"; {readback_sql(first.ctes, 15)}; SELECT 2")
    assert len(parser.parse_sql(result.sql)) == 3
    # As a Parse (one statement), no read-back: the proxy sends its own after the Execute.
    parse = plan(sql.split(";")[0], 15)
    assert "flux.cte_weight', ''" not in parse.sql and len(parse.statements) == 1


def test_before_18_an_update_cte_locks_in_its_own_nested_with() -> None:
    """Its __flux_old/__flux_map are scoped to the CTE: the outer UPDATE's own ones (added
    to the statement's WITH) do not collide with them."""
    sql = (
        "WITH u AS (UPDATE t SET v = 1 WHERE id = 2 RETURNING id) "
        "UPDATE t SET v = 3 WHERE id IN (SELECT id FROM u)"
    )
    result = plan(sql, 15)
    statement = result.statements[0]
    assert statement.capture is not None and statement.capture.form == "cte-key"
    assert statement.ctes[0].form == "cte-key"
    assert result.sql.startswith(
        "WITH __flux_cte0(__flux_c0, __flux_x)  AS (WITH __flux_old AS (SELECT"
    )
    assert result.sql.count("__flux_old AS (") == 2
    assert "FROM __flux_cte0) , __flux_old AS (" in result.sql
    parser.parse_sql(result.sql)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("WITH u AS (UPDATE t SET v = 1 FROM a RETURNING *) SELECT 1", "writable-cte-star-over-from"),
        ("WITH u AS (DELETE FROM t USING a x RETURNING x.*) SELECT 1", "writable-cte-star-over-from"),
        ("WITH RECURSIVE u AS (DELETE FROM t RETURNING id) SELECT 1", "writable-cte-recursive"),
        ("WITH u AS (WITH x AS (SELECT 1) DELETE FROM t RETURNING id) SELECT 1",
         "writable-cte-nested-with"),
        ("WITH u AS (MERGE INTO t USING a ON true WHEN MATCHED THEN DELETE) SELECT 1",
         "writable-cte-merge"),
        ("WITH d AS (DELETE FROM a RETURNING x) MERGE INTO t USING d ON true WHEN MATCHED THEN "
         "DELETE", "writable-cte-outer-merge"),
        ("WITH u AS (DELETE FROM t RETURNING current_date) SELECT 1", "writable-cte-unnamed-column"),
        ("WITH u AS (DELETE FROM t WHERE CURRENT OF c) SELECT 1", "writable-cte-where-current-of"),
    ],
)  # fmt: skip
def test_shapes_not_handled_run_as_sent(sql: str, reason: str) -> None:
    result = plan(sql, 18)
    assert result.sql == sql
    assert result.statements[0].uncaptured == reason
    assert not result.statements[0].ctes


def test_a_star_returns_the_whole_row_and_the_wrapper_expands_it() -> None:
    """Not the cached column list, which a column added behind the sidecar's back would
    make stale: the row type is the server's own when the statement runs."""
    sql = "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *, v AS w) INSERT INTO a SELECT * FROM d"
    result = plan(sql, 15)
    assert "RETURNING t, v AS w, (SELECT CASE" in result.sql
    assert "d AS (SELECT (__flux_c0).*, __flux_c1 AS w FROM __flux_cte0)" in result.sql
    sql = "WITH u AS (UPDATE t x SET v = 1 RETURNING old.*, x.*, new.v) SELECT count(*) FROM u"
    result = plan(sql, 18)
    assert "RETURNING old, x, new.v, (SELECT CASE" in result.sql
    assert "(__flux_c0).*, (__flux_c1).*, __flux_c2 AS v FROM" in result.sql
    parser.parse_sql(result.sql)


@pytest.mark.parametrize(
    "sql",
    [
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "WITH d AS (DELETE FROM t RETURNING t.*) SELECT id FROM d",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT 1 UNION SELECT 2",
        "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO a SELECT * FROM d RETURNING id",
    ],
)
def test_a_star_runs_as_sent_when_the_result_reports_column_origins(sql: str) -> None:
    """``(row).*`` has no table and column to report in the RowDescription."""
    result = plan(sql, 18)
    assert result.sql == sql
    assert result.statements[0].uncaptured == "writable-cte-star-returned"


@pytest.mark.parametrize(
    ("expression", "name"),
    [
        ("id", "id"), ("t.v", "v"), ("lower(v)", "lower"), ("pg_catalog.upper(v)", "upper"),
        ("v::text", "v"), ("1::int", "int4"), ("'a'::text", "text"), ("(v + 1)::text", "text"),
        ("CASE WHEN v > 1 THEN 1 END", "case"), ("ARRAY[1]", "array"), ("ROW(1, 2)", "row"),
        ("coalesce(v, 1)", "coalesce"), ("greatest(1, 2)", "greatest"), ("least(1, 2)", "least"),
        ("nullif(v, 1)", "nullif"), ("v + 1", "?column?"), ("1", "?column?"),
        ("v IS NULL", "?column?"), ("NOT true", "?column?"), ("(t.v)", "v"),
        ("v COLLATE \"C\"", "v"),
        # Rules not implemented here: refused.
        ("EXISTS (SELECT 1)", None), ("(SELECT 1 AS one)", None), ("current_date", None),
        ("(SELECT 1)::text", None),
    ],
)  # fmt: skip
def test_column_names_follow_postgresql(expression: str, name: str | None) -> None:
    tree = json.loads(parser.parse_sql_json(f"SELECT {expression}"))
    target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    assert figure_colname(target) == name


def test_read_back_sorts_rows_to_their_cte_and_marks_truncation() -> None:
    sql = (
        "WITH a AS (INSERT INTO t VALUES (1, 1) RETURNING id), "
        "b AS (DELETE FROM a RETURNING x) SELECT 1"
    )
    ctes = plan(sql, 15).statements[0].ctes
    rows = (
        b'[1, "{\\"x\\":1,\\"y\\":2.50}", null, "16385", "7", null]\n'
        b'[0, null, "{\\"id\\":1,\\"v\\":1}", "16384", null, "9"]\n'
    )
    first, second = read_back(ctes, (rows, b"300", b"0"), index=4)
    assert (first.index, first.op, first.relation, first.tag) == (4, "insert", "t", "")
    assert first.rows == ((None, b'{"id":1,"v":1}', b"16384", None, b"9"),)
    assert second.rows == ((b'{"x":1,"y":2.50}', None, b"16385", b"7", None),)
    assert first.form == "writable-cte/returning" and not first.truncated
    assert first.identity == tuple(T.to_wire())
    (cut, _) = read_back(ctes, (rows, str(MAX_WEIGHT + 1).encode(), b"0"), index=0)
    assert cut.truncated


def test_the_planner_keeps_the_query_and_parse_rewrites_apart() -> None:
    planner = Planner()
    planner.identities.put(("db", ""), "t", T)
    sql = "WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d"
    query = planner.plan(sql, "db", 18, query=True)
    parse = planner.plan(sql, "db", 18)
    assert query is not None and parse is not None
    assert len(query.statements) == 2 and len(parse.statements) == 1
    assert planner.plan(sql, "db", 18, query=True) is query
    # Not a writable CTE: both are the same rewrite.
    plain = "DELETE FROM t WHERE id = 1"
    assert planner.plan(plain, "db", 18, query=True) is planner.plan(plain, "db", 18)


def test_a_cte_on_a_table_not_known_yet_runs_as_sent_and_its_identity_is_read_back() -> None:
    sql = (
        "WITH u AS (DELETE FROM nope RETURNING 1), d AS (DELETE FROM t RETURNING id) "
        "SELECT * FROM d"
    )
    result = plan(sql, 18, readback=True)
    statement, ours = result.statements
    assert ours.readback == statement.ctes
    unknown, known = statement.ctes
    assert (unknown.relation, unknown.roles, unknown.uncaptured) == (
        "nope",
        ("identity",),
        "identity-unknown",
    )
    assert known.relation == "t" and "old" in known.roles
    assert result.sql.startswith("WITH u AS (DELETE FROM nope RETURNING 1), __flux_cte1(")
    assert "WHERE c.oid = 'nope'::pg_catalog.regclass)" in result.sql.split(";")[1]
    lookup = b'[1, "public", "nope", "r", ["id"], "primary key"]'
    found = read_back(statement.ctes, (None, b"0", b"0", lookup), index=0)
    assert [(c.relation, c.rows, c.uncaptured) for c in found] == [
        ("nope", ((lookup,),), "identity-unknown"),
        ("t", (), None),
    ]
