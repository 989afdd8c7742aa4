"""MERGE on PostgreSQL 17 without a server: where its clauses are, the rewrite's text, and
which shapes run exactly as sent (the same statements run on a real 17 in
tests/integration/test_pg_merge17.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recorder.mutation.analyze import analyze
from recorder.mutation.forms import Rewrite, rewrite
from recorder.mutation.identity import SELECT_COLUMNS, TableIdentity

KEYED = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
KEYLESS = TableIdentity(16385, "public", "t", "r", (), "whole row", columns=("id", "v"))
TRIGGERED = replace(KEYLESS, update_triggers=True)
PARTITIONED = replace(KEYED, relkind="p")

TEXT = "::pg_catalog.text"
KEY = f"pg_catalog.jsonb_build_array(t.id){TEXT}"
GATE = "CASE WHEN (SELECT pg_catalog.count(*) FROM __flux_old) >= 0 THEN "
MAP = (
    "__flux_map AS (SELECT pg_catalog.jsonb_object_agg(__flux_k, __flux_v) AS __flux_m FROM "
    "(SELECT __flux_k, CASE WHEN pg_catalog.count(DISTINCT __flux_img) = 1 THEN "
    "pg_catalog.jsonb_build_array(pg_catalog.min(__flux_img), pg_catalog.min(__flux_xmin)) "
    "END AS __flux_v, pg_catalog.sum(pg_catalog.sum(pg_catalog.octet_length(__flux_img))) "
    "OVER (ROWS UNBOUNDED PRECEDING) AS __flux_n FROM __flux_old GROUP BY __flux_k) AS "
    "__flux_g WHERE __flux_n <= 16777216)"
)
ENTRY = f"((SELECT __flux_m FROM __flux_map) -> {KEY})"
DELETED = "merge_action() = 'DELETE'"
TAIL = (
    f"CASE merge_action() WHEN 'UPDATE' THEN ({ENTRY} ->> 0) WHEN 'DELETE' THEN "
    f"pg_catalog.to_json(t){TEXT} END, CASE WHEN NOT {DELETED} THEN pg_catalog.to_json(t){TEXT} "
    f"END, 't'::pg_catalog.regclass::pg_catalog.oid{TEXT}, CASE merge_action() WHEN 'UPDATE' "
    f"THEN ({ENTRY} ->> 1) WHEN 'DELETE' THEN t.xmin{TEXT} END, CASE WHEN NOT {DELETED} THEN "
    f"t.xmin{TEXT} END, (merge_action() = 'INSERT'){TEXT}"
)


def plan(sql: str, major: int = 17, known: TableIdentity | str | None = KEYED) -> Rewrite:
    return rewrite(sql, analyze(sql), server_major=major, lookup=lambda rel: known)


M = "MERGE INTO t USING s ON t.id = s.id "
CASES = [
    (M + "WHEN MATCHED THEN UPDATE SET v = s.v", KEYED, "merge-cte-key"),
    (M + "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", KEYED,
     "merge-returning"),
    (M + "WHEN NOT MATCHED BY SOURCE THEN DELETE", KEYED, "merge-returning"),
    (M + "WHEN MATCHED THEN UPDATE SET v = 1 WHEN NOT MATCHED BY SOURCE THEN DELETE", KEYED,
     "merge-cte-key"),
    (M + "WHEN MATCHED THEN UPDATE SET id = s.id + 1", KEYED, "merge-cte-unassigned-columns"),
    (M + "WHEN MATCHED THEN UPDATE SET v = 1", KEYLESS, "merge-cte-unassigned-columns"),
    (M + "WHEN MATCHED THEN UPDATE SET v = 1", PARTITIONED, "merge-cte-key"),
    (M + "WHEN MATCHED THEN UPDATE SET v = random()", KEYED, "merge-cte-key"),
    (M + "WHEN NOT MATCHED AND random() < 2 THEN INSERT VALUES (1, 2) "
     "WHEN MATCHED THEN UPDATE SET v = 1", KEYED, "merge-cte-key"),
    ("MERGE INTO t USING (SELECT id FROM s LIMIT 2) s ON t.id = s.id WHEN NOT MATCHED THEN "
     "INSERT VALUES (s.id, 0)", KEYED, "merge-returning"),  # nothing runs twice
    (M + "WHEN MATCHED THEN UPDATE SET v = 1", None, "identity-only"),
    # 17 has no OLD/NEW in RETURNING: nothing to clash with
    ("MERGE INTO t USING s AS old ON t.id = old.id WHEN MATCHED THEN UPDATE SET v = old.v "
     "RETURNING old.v", KEYED, "merge-cte-key"),
    # Runs as sent.
    (M + "WHEN MATCHED THEN UPDATE SET v = 1", TRIGGERED, "!no-stable-row-key"),
    (M + "WHEN NOT MATCHED BY SOURCE THEN UPDATE SET v = 0", KEYED,
     "!merge-not-matched-by-source-update"),
    (M + "WHEN MATCHED AND random() < 0.5 THEN UPDATE SET v = 1", KEYED, "!nondeterministic-merge"),
    (M + "WHEN MATCHED AND random() < 0.5 THEN DELETE WHEN MATCHED THEN UPDATE SET v = 1", KEYED,
     "!nondeterministic-merge"),
    ("MERGE INTO t USING s ON t.id = s.id AND random() < 2 WHEN MATCHED THEN UPDATE SET v = 1",
     KEYED, "!nondeterministic-merge"),
    ("MERGE INTO t USING (SELECT id FROM s LIMIT 2) s ON t.id = s.id WHEN MATCHED THEN "
     "UPDATE SET v = 1", KEYED, "!nondeterministic-merge"),
    (M + "WHEN MATCHED THEN UPDATE SET v = 1 RETURNING WITH (OLD AS o) o.v", KEYED,
     "!returning-with-before-pg18"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "known", "expected"), CASES)
def test_forms_and_fail_open_reasons_on_17(
    sql: str, known: TableIdentity | None, expected: str
) -> None:
    result = plan(sql, 17, known)
    (statement,) = result.statements
    if expected.startswith("!"):
        assert statement.capture is None
        assert statement.uncaptured == expected[1:]
        assert result.sql == sql
    else:
        assert statement.capture is not None
        assert statement.capture.form == expected
        assert analyze(result.sql)  # the rewrite parses


def test_before_17_merge_has_no_returning_and_runs_as_sent() -> None:
    sql = M + "WHEN MATCHED THEN UPDATE SET v = 1"
    for known in (KEYED, None):
        result = plan(sql, 16, known)
        assert result.sql == sql
        assert result.statements[0].uncaptured == "merge-before-pg17"


def test_the_cte_locks_only_what_the_update_clauses_change_and_each_gets_the_gate() -> None:
    sql = (
        "WITH x AS (SELECT 1) MERGE INTO t USING (VALUES (1, 2)) s(id, v) ON t.id = s.id "
        "WHEN MATCHED AND s.v > 9 THEN DELETE WHEN MATCHED AND s.v < 0 THEN DO NOTHING "
        "WHEN MATCHED AND s.v = 1 THEN UPDATE SET v = 0 WHEN MATCHED THEN UPDATE SET v = s.v "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v) RETURNING merge_action(), t.v"
    )
    assert plan(sql).sql == (
        f"WITH x AS (SELECT 1) , __flux_old AS (SELECT {KEY} AS __flux_k, "
        f"pg_catalog.to_json(t){TEXT} AS __flux_img, t.xmin{TEXT} AS __flux_xmin FROM  t ,  "
        "(VALUES (1, 2)) s(id, v)  WHERE ( t.id = s.id ) AND CASE WHEN ( t.id = s.id ) IS NOT "
        "TRUE THEN false WHEN ( s.v > 9 ) THEN false "
        "WHEN ( s.v < 0 ) THEN false WHEN ( s.v = 1 ) THEN true WHEN true THEN true ELSE false "
        f"END FOR NO KEY UPDATE OF t), {MAP} MERGE INTO t USING (VALUES (1, 2)) s(id, v) ON "
        "t.id = s.id WHEN MATCHED AND s.v > 9 THEN DELETE WHEN MATCHED AND s.v < 0 THEN DO "
        f"NOTHING WHEN MATCHED AND {GATE}( s.v = 1 ) ELSE false END THEN UPDATE SET v = 0 WHEN "
        f"MATCHED AND {GATE}true ELSE false END THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN "
        f"INSERT VALUES (s.id, s.v) RETURNING merge_action(), t.v, {TAIL}"
    )
    capture = plan(sql).statements[0].capture
    assert capture is not None and capture.op == "merge" and capture.client_returning
    assert capture.roles == ("old", "new", "oid", "version_old", "version_new", "inserted")


def test_the_lock_is_the_one_the_update_takes() -> None:
    assert "FOR NO KEY UPDATE OF t" in plan(M + "WHEN MATCHED THEN UPDATE SET v = 1").sql
    key_change = plan(M + "WHEN MATCHED THEN DELETE WHEN NOT MATCHED BY SOURCE THEN DELETE")
    assert "__flux_old" not in key_change.sql  # no UPDATE action: no CTE, no lock
    sql = M + "WHEN MATCHED AND s.v = 0 THEN UPDATE SET id = 9 WHEN MATCHED THEN UPDATE SET v = 1"
    result = plan(sql)
    assert "FOR UPDATE OF t" in result.sql
    # The key is what no UPDATE action assigns.
    assert "(pg_catalog.to_jsonb(t) - ARRAY['id', 'v']::pg_catalog.text[])" in result.sql


def test_without_an_update_clause_only_returning_is_added() -> None:
    sql = M + "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)"
    assert plan(sql).sql == sql + (
        f" RETURNING CASE WHEN {DELETED} THEN pg_catalog.to_json(t){TEXT} END, CASE WHEN NOT "
        f"{DELETED} THEN pg_catalog.to_json(t){TEXT} END, "
        f"'t'::pg_catalog.regclass::pg_catalog.oid{TEXT}, CASE WHEN {DELETED} THEN "
        f"t.xmin{TEXT} END, CASE WHEN NOT {DELETED} THEN t.xmin{TEXT} END, "
        f"(merge_action() = 'INSERT'){TEXT}"
    )


def test_row_versions_only_where_the_table_allows_them() -> None:
    sql = M + "WHEN MATCHED THEN UPDATE SET v = 1"
    for known in (PARTITIONED, replace(KEYED, select=SELECT_COLUMNS)):
        capture = plan(sql, 17, known).statements[0].capture
        assert capture is not None and capture.roles == ("old", "new", "oid", "inserted")
        assert "xmin" not in plan(sql, 17, known).sql


def test_clauses_are_found_past_case_expressions_and_joins_in_the_source() -> None:
    sql = (
        "MERGE INTO ONLY t AS tt USING s JOIN u ON u.id = s.id ON tt.id = s.id AND CASE WHEN "
        "s.v > 0 THEN true END WHEN MATCHED AND CASE WHEN s.v = 1 THEN true ELSE false END "
        "THEN UPDATE SET v = (SELECT CASE WHEN true THEN 1 END) WHEN NOT MATCHED BY SOURCE AND "
        "tt.v > 0 THEN DELETE WHEN NOT MATCHED BY TARGET THEN DO NOTHING"
    )
    (info,) = analyze(sql)
    assert info.dml is not None and info.dml.merge is not None
    spans = info.dml.merge
    assert sql[info.dml.target.start : info.dml.target.end].strip() == "ONLY t AS tt"
    assert sql[slice(*spans.source)].strip() == "s JOIN u ON u.id = s.id"
    assert sql[slice(*spans.on)].strip() == "tt.id = s.id AND CASE WHEN s.v > 0 THEN true END"
    found = [
        (c.match, c.action, c.condition and sql[slice(*c.condition)].strip(), c.set_columns)
        for c in spans.clauses
    ]
    assert found == [
        ("matched", "update", "CASE WHEN s.v = 1 THEN true ELSE false END", ("v",)),
        ("not-matched-by-source", "delete", "tt.v > 0", ()),
        ("not-matched-by-target", "nothing", None, ()),
    ]
    result = plan(sql)
    assert "FROM  ONLY t AS tt ,  s JOIN u ON u.id = s.id  WHERE" in result.sql
    assert "FOR NO KEY UPDATE OF tt)" in result.sql


def test_error_positions_map_back_to_the_clients_text() -> None:
    sql = M + "WHEN MATCHED AND s.nope = 1 THEN UPDATE SET v = 1"
    result = plan(sql)
    at = result.sql.index("s.nope", result.sql.index("MERGE INTO"))
    assert result.original_position(at + 1) == sql.index("s.nope") + 1
    assert not result.added(at + 1)
