"""The session-start preload's rows as identity cache entries, keyed as statements spell
the relation (see recorder.mutation.analyze: the cache key is the relation as written)."""

from __future__ import annotations

from recorder.mutation.analyze import analyze
from recorder.mutation.identity import IdentityCache
from recorder.mutation.preload import preload_entries, preload_sql

ROW = b'[%d, "%s", "%s", "r", ["id"], true, false, false, ["id"], "table", null, false]'


def test_entries_are_keyed_as_a_statement_names_the_relation() -> None:
    rows = [
        (ROW % (1, b"public", b"plain"), b"t"),
        (ROW % (2, b"Sales", b"Order"), b"t"),
        (ROW % (3, b"other", b"plain"), b"f"),  # hidden by public.plain on the search_path
        (b"not json", b"t"),
        (ROW % (4, b"x", b"y"),),
    ]
    entries = dict(preload_entries(rows))
    assert {k: v.oid for k, v in entries.items()} == {
        "public.plain": 1, "plain": 1, '"Sales"."Order"': 2, '"Order"': 2, "other.plain": 3,
    }  # fmt: skip
    for sql in ('UPDATE "Sales"."Order" SET id = 1', 'DELETE FROM "Order"', "INSERT INTO plain VALUES (1)"):  # fmt: skip
        (info,) = analyze(sql)
        assert info.dml is not None and info.dml.target.regclass in entries, sql


def test_a_load_is_one_generation_step_and_bounded() -> None:
    cache = IdentityCache(max_tables=2)
    entries = preload_entries([(ROW % (n, b"s", b"t%d" % n), b"f") for n in range(5)])
    before = cache.generation
    cache.load(("db", "app"), entries)
    assert cache.generation == before + 1
    assert cache.get(("db", "app"), "s.t1") is not None and cache.get(("db", "app"), "s.t2") is None


def test_the_query_is_bounded_and_reads_the_catalog_only() -> None:
    sql = preload_sql(15, limit=7)
    assert sql.endswith("LIMIT 7") and "pg_catalog.pg_class c" in sql
    assert "attgenerated" not in preload_sql(11)
