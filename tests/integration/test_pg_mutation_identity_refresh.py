"""What the sidecar caches about a table for a role (its key, rules, the role's SELECT
privilege) is forgotten by statements that may change it even when they do not name the
table: role membership, DROP OWNED, DROP RULE ... ON. And it is cached for the role the
session really runs as: a role whose default ``role`` setting makes another current.
Each statement's answer is compared byte for byte with the same statement run direct,
and what the mutation log holds is checked."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest

from protocols.pgwire import Query
from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.integration.test_pg_mutation_failopen import PASSWORD, _run, mutations
from tests.pgraw import RawClient, decoded

TABLE = "CREATE TABLE g (id int PRIMARY KEY, v int); GRANT UPDATE ON g TO PUBLIC;"
RESET = "TRUNCATE g; INSERT INTO g VALUES (1, 0), (2, 0);"


@pytest.fixture
def roles(pg_db: PgServer) -> Iterator[tuple[str, str]]:
    """A login role and a group role (roles are per cluster: fresh names)."""
    login, group = f"w_{secrets.token_hex(4)}", f"grp_{secrets.token_hex(4)}"
    pg_db._superuser_query(f"CREATE ROLE {login} LOGIN PASSWORD '{PASSWORD}'")
    pg_db._superuser_query(f"CREATE ROLE {group} NOLOGIN")
    try:
        yield login, group
    finally:
        pg_db._superuser_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (login,)
        )
        with psycopg.connect(pg_db.superuser_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {login}, {group}".encode())
        pg_db._superuser_query(f"DROP ROLE {login}")
        pg_db._superuser_query(f"DROP ROLE {group}")


def _admin(db: PgServer, sql: str, **where: object) -> None:
    with psycopg.connect(db.superuser_dsn(dbname=db.dbname, **where), autocommit=True) as conn:
        conn.execute(sql.encode())


def _captured(sidecar: SidecarProcess, v: int) -> int:
    """Mutations whose after image sets ``v`` (the sidecar stopped first)."""
    sidecar.stop()
    return sum(1 for e in mutations(sidecar) if f'"v":{v}}}' in (e.payload["after"] or ""))


# (what the role has before, the statement that changes it, captured after)
CHANGES = {
    "revoke-membership": ("GRANT {group} TO {login}", "REVOKE {group} FROM {login}", False),
    "drop-owned": ("GRANT SELECT ON g TO {login}", "DROP OWNED BY {login}", False),
    "grant-membership": ("", "GRANT {group} TO {login}", True),
    "drop-rule": (
        "GRANT SELECT ON g TO {login}; CREATE RULE r AS ON UPDATE TO g DO ALSO NOTIFY g_changed",
        "DROP RULE r ON g",
        True,
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_statement_that_changes_what_a_role_may_do_refreshes_its_identities(
    pg_db: PgServer,
    roles: tuple[str, str],
    change: str,
    sidecar_factory: Callable[..., SidecarProcess],
) -> None:
    login, group = roles
    before, statement, captured_after = (
        s.format(login=login, group=group) if isinstance(s, str) else s for s in CHANGES[change]
    )
    _admin(pg_db, f"{TABLE} GRANT SELECT ON g TO {group}; {before}; {RESET}")
    sidecar = sidecar_factory(pg_db)
    with (
        RawClient(sidecar.host, sidecar.port, login, PASSWORD, pg_db.dbname) as through,
        RawClient(pg_db.host, pg_db.port, login, PASSWORD, pg_db.dbname) as direct,
    ):
        for _ in range(2):  # what the role may do is cached by now
            _run(through, [Query(query="UPDATE g SET v = 1")])
        _admin(pg_db, statement, host=sidecar.host, port=sidecar.port)
        for v in (2, 3):  # the first carries the lookup again, the second is captured or not
            _admin(pg_db, RESET)
            expected = _run(direct, [Query(query=f"UPDATE g SET v = {v}")])
            _admin(pg_db, RESET)
            got = _run(through, [Query(query=f"UPDATE g SET v = {v}")])
            assert decoded(got) == decoded(expected)
            assert got == expected
    assert _captured(sidecar, 3) == (2 if captured_after else 0)


SWITCHES = [
    "UPDATE g SET v = 1",  # as the group: captured
    "SET ROLE NONE",
    "UPDATE g SET v = 2",  # as the login role, which may not read g: as sent
    "RESET ROLE",  # back to the default
    "UPDATE g SET v = 3",
]


def test_a_role_whose_sessions_start_as_another_is_cached_as_that_one(
    pg_db: PgServer, roles: tuple[str, str], sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """``ALTER ROLE ... SET role``: the session's current_user is not the StartupMessage's
    user. The preload says who it is; the login role's own privileges apply after SET
    ROLE NONE; a later session of the same user starts as the group with no preload."""
    login, group = roles
    _admin(
        pg_db,
        f"{TABLE} REVOKE UPDATE ON g FROM PUBLIC; GRANT SELECT, UPDATE ON g TO {group}; "
        f"GRANT UPDATE ON g TO {login}; GRANT {group} TO {login}; "
        f"ALTER ROLE {login} IN DATABASE {pg_db.dbname} SET role = {group}; {RESET}",
    )
    sidecar = sidecar_factory(pg_db)
    with (
        RawClient(sidecar.host, sidecar.port, login, PASSWORD, pg_db.dbname) as through,
        RawClient(pg_db.host, pg_db.port, login, PASSWORD, pg_db.dbname) as direct,
    ):
        for sql in SWITCHES:
            _admin(pg_db, RESET)
            expected = _run(direct, [Query(query=sql)])
            _admin(pg_db, RESET)
            got = _run(through, [Query(query=sql)])
            assert decoded(got) == decoded(expected), sql
            assert got == expected, sql
    with RawClient(sidecar.host, sidecar.port, login, PASSWORD, pg_db.dbname) as again:
        _admin(pg_db, RESET)
        assert decoded(_run(again, [Query(query="UPDATE g SET v = 4")]))[-2].tag == "UPDATE 2"
    samples = metrics(sidecar.admin_url)
    assert samples.get("flux_pg_mutations_preloaded_total") == 1
    assert samples.get("flux_pg_mutations_uncaptured_identity_unknown_total", 0) == 1
    assert [_captured(sidecar, v) for v in (1, 2, 3, 4)] == [2, 0, 2, 2]
