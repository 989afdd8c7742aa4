"""The session-start preload's rows as identity cache entries, keyed as statements spell
the relation (see recorder.mutation.analyze: the cache key is the relation as written)."""

from __future__ import annotations

from recorder.mutation.analyze import analyze
from recorder.mutation.identity import (
    PRELOAD_BACKING_OFF,
    PRELOAD_DUE,
    PRELOAD_LOADED,
    IdentityCache,
)
from recorder.mutation.preload import (
    preload_answered,
    preload_entries,
    preload_sql,
    preload_users,
    session_start,
)
from recorder.mutation.roles import SessionRole

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
    assert sql.endswith("LIMIT 7)") and "pg_catalog.pg_class c" in sql
    assert "attgenerated" not in preload_sql(11)


def test_the_first_row_names_the_users_and_the_identities_are_filed_under_the_current_one() -> None:
    cache = IdentityCache()
    rows = [(b'["grp", "app"]', None), (ROW % (1, b"public", b"t"), b"t")]
    assert preload_users(rows) == ("app", "grp")
    assert preload_entries(rows) == preload_entries(rows[1:])
    role = SessionRole("app")
    preload_answered(cache, ("db", "app"), rows, role)
    assert role.current == "grp" and cache.get(("db", "grp"), "t") is not None
    assert cache.get(("db", "app"), "t") is None
    role.seen("SET ROLE NONE", in_transaction=False)
    assert role.current == "app"
    role.seen("RESET ROLE", in_transaction=False)
    assert role.current == "grp"
    later = SessionRole("app")  # the next session of the user: no preload, starts as grp
    assert session_start(cache, ("db", "app"), later) == PRELOAD_LOADED
    assert later.current == "grp"
    cache.forget_names("db", None)  # ALTER ROLE ... SET role, say: asked again
    assert session_start(cache, ("db", "app"), SessionRole("app")) == PRELOAD_DUE


def test_a_session_whose_user_was_unknown_teaches_the_others_nothing() -> None:
    cache = IdentityCache()
    role = SessionRole(None)
    scope = ("db", role.current)
    preload_answered(cache, scope, [(b'["web", "app"]', None)], role)
    assert role.current == "web"
    assert session_start(cache, scope, SessionRole(None)) == PRELOAD_DUE


def test_a_failed_preload_is_not_due_again_for_a_while() -> None:
    cache = IdentityCache()
    cache.preload_failed(("db", "app"))
    assert cache.preload_state(("db", "app")) == PRELOAD_BACKING_OFF
    assert cache.preload_state(("db", "web")) == PRELOAD_DUE
    cache.preload_failed(("db", "app"), seconds=-1)
    assert cache.preload_state(("db", "app")) == PRELOAD_DUE
