"""The one-row-by-key UPDATE before PostgreSQL 18 (recorder.mutation.keyrow): which WHEREs
get the light locking CTE, and what the rewrite returns. Against a server:
tests/integration/test_pg_keyrow.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recorder.mutation.analyze import analyze
from recorder.mutation.forms import rewrite
from recorder.mutation.identity import TableIdentity

KEYED = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
PAIR = replace(KEYED, key=("a", "b"), columns=("a", "b", "v"))
LIGHT = "THEN ARRAY[pg_catalog.min(__flux_img), pg_catalog.min(__flux_xmin)] END AS __flux_m"
MAP = "pg_catalog.jsonb_object_agg(__flux_k"


def planned(sql: str, known: TableIdentity = KEYED) -> str:
    result = rewrite(sql, analyze(sql), server_major=15, lookup=lambda rel: known)
    assert result.statements[0].capture is not None, result.statements[0]
    assert result.statements[0].capture.form == "cte-key"
    return result.sql


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET v = v + -5 WHERE id = 42",
        "UPDATE t SET v = 1 WHERE id = $1",
        "UPDATE t SET v = 1 WHERE id = $1::int",
        "UPDATE t SET v = 1 WHERE 42 = id RETURNING v",
        "UPDATE t SET v = 1 WHERE t.id = -3;",
        'UPDATE t AS x SET v = 1 WHERE "x"."id" = \'7\'',
        'UPDATE t SET v = 1 WHERE "ID" = 1',
        "WITH c AS (SELECT 1) UPDATE t SET v = 1 WHERE id = 2",
    ],
)
def test_one_row_by_key_gets_the_light_form(sql: str) -> None:
    known = replace(KEYED, key=("ID",)) if '"ID"' in sql else KEYED
    text = planned(sql, known)
    assert LIGHT in text and MAP not in text
    assert "FOR NO KEY UPDATE OF" in text
    assert "RETURNING" in text and "(SELECT __flux_m[1] FROM __flux_map)" in text


def test_every_key_column_compared_gets_the_light_form() -> None:
    text = planned("UPDATE t SET v = 1 WHERE a = 1 AND b = 'x'", PAIR)
    assert LIGHT in text


@pytest.mark.parametrize(
    ("sql", "known"),
    [
        ("UPDATE t SET v = 1", KEYED),  # every row
        ("UPDATE t SET v = 1 WHERE id > 42", KEYED),
        ("UPDATE t SET v = 1 WHERE id = 42 OR id = 43", KEYED),
        ("UPDATE t SET v = 1 WHERE id IN (1, 2)", KEYED),
        ("UPDATE t SET v = 1 WHERE v = 1", KEYED),  # not the key
        ("UPDATE t SET v = 1 WHERE id = v", KEYED),
        ("UPDATE t SET v = 1 WHERE (id = 1)", KEYED),
        ("UPDATE t SET v = 1 WHERE id = 1 AND v = 2", KEYED),
        ("UPDATE t SET v = 1 WHERE a = 1", PAIR),  # part of the key
        ("UPDATE t SET v = 1 WHERE a = 1 AND a = 2", PAIR),
        ("UPDATE t SET v = s.v FROM s WHERE id = 1", KEYED),
        ("UPDATE t SET v = 1 WHERE s.id = 1", KEYED),  # another relation's column
        ("UPDATE t SET v = 1 WHERE id = $1::varchar(3)", KEYED),
    ],
)
def test_anything_else_keeps_the_key_map(sql: str, known: TableIdentity) -> None:
    text = planned(sql, known)
    assert MAP in text and LIGHT not in text


def test_without_row_versions_only_the_image_is_kept() -> None:
    text = planned("UPDATE t SET v = 1 WHERE id = 1", replace(KEYED, relkind="p"))
    assert "THEN ARRAY[pg_catalog.min(__flux_img)] END" in text
    assert "__flux_xmin" not in text
