"""Which cached identities a statement makes stale: the tables it names, or every table
of the database when what it changes cannot be named from its text."""

from __future__ import annotations

import pytest

from recorder.mutation.analyze import analyze
from recorder.mutation.identity import IdentityCache, TableIdentity
from recorder.mutation.planner import Planner

EVERY = None


@pytest.mark.parametrize(
    ("sql", "stale"),
    [
        ("ALTER TABLE s.t ADD PRIMARY KEY (id)", {"t"}),
        ("DROP TABLE a.b, c", {"b", "c"}),
        ("DROP RULE r ON s.t", {"t"}),
        ("DROP TRIGGER g ON t", {"t"}),
        ("DROP POLICY p ON t", {"t"}),
        ("CREATE TABLE s.x AS SELECT 1", {"x"}),
        ("GRANT SELECT ON t TO bob", {"t"}),
        ("DROP INDEX i", EVERY),  # a replica identity index: its table is not named
        ("DROP SCHEMA s CASCADE", EVERY),
        ("DROP EXTENSION e", EVERY),
        ("DROP OWNED BY bob", EVERY),
        ("REASSIGN OWNED BY bob TO alice", EVERY),
        ("CREATE EXTENSION hstore", EVERY),
        ("ALTER EXTENSION hstore UPDATE", EVERY),
        ("GRANT SELECT ON ALL TABLES IN SCHEMA public TO bob", EVERY),
        ("GRANT USAGE ON SCHEMA s TO bob", EVERY),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", EVERY),
        ("ALTER ROLE bob BYPASSRLS", EVERY),
        ("ALTER ROLE bob SET role = alice", EVERY),
        ("GRANT alice TO bob", EVERY),
        ("REVOKE alice FROM bob", EVERY),
        ("SECURITY LABEL ON TABLE t IS 'x'", EVERY),
        ("IMPORT FOREIGN SCHEMA x FROM SERVER s INTO public", EVERY),
        ("DO $$ BEGIN EXECUTE 'ALTER TABLE t DROP CONSTRAINT t_pkey'; END $$", EVERY),
    ],
)
def test_what_a_statement_makes_stale(sql: str, stale: set[str] | None) -> None:
    (info,) = analyze(sql)
    assert info.is_ddl
    assert info.ddl_names == (None if stale is None else frozenset(stale))
    assert Planner().interesting(sql)


@pytest.mark.parametrize(
    "sql",
    ["COMMENT ON TABLE t IS 'x'", "GRANT EXECUTE ON FUNCTION f() TO bob", "CALL p()",
     "ALTER TABLE ALL IN TABLESPACE a SET TABLESPACE b"],
)  # fmt: skip
def test_what_leaves_identities_alone(sql: str) -> None:
    (info,) = analyze(sql)
    assert not info.is_ddl


def test_forgetting_every_table_forgets_every_role_and_what_was_set_aside() -> None:
    planner = Planner()
    cache: IdentityCache = planner.identities
    known = TableIdentity(1, "public", "t", "r", ("id",), "primary key")
    for role in ("app", "web"):
        cache.put(("db", role), "t", known)
        cache.skip(("db", role), "public.t", "rewrite-failed-42501")
    cache.put(("other", "app"), "t", known)
    planner.plan("REVOKE alice FROM bob", "db", 18)
    assert cache.get(("db", "app"), "t") is None and cache.get(("db", "web"), "t") is None
    assert cache.skipped(("db", "app"), "public.t") is None
    assert cache.get(("other", "app"), "t") == known
