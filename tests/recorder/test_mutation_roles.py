"""Whose privileges a session's statements run with, followed from the text it sends."""

from __future__ import annotations

import pytest

from recorder.mutation.roles import SessionRole


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (["SET ROLE Web"], "web"),
        (['SET SESSION ROLE "Web"'], "Web"),
        (["SET role = 'Web'"], "Web"),
        (["set role to web; select 1"], "web"),
        (["SET ROLE web", "RESET ROLE"], "app"),
        (["SET ROLE web", "SET ROLE NONE"], "app"),
        (["SET SESSION AUTHORIZATION bob", "SET ROLE web", "RESET ROLE"], "bob"),
        (["SET SESSION AUTHORIZATION bob", "SET ROLE web", "DISCARD ALL"], "app"),
        (["SET SESSION AUTHORIZATION bob", "RESET SESSION AUTHORIZATION"], "app"),
        (["SET ROLE web", "RESET ALL"], "web"),
        (["SET search_path = x", "SET application_name = 'role'"], "app"),
        (["BEGIN; SET LOCAL ROLE web", "ROLLBACK TO SAVEPOINT s"], "web"),
        (["BEGIN; SET LOCAL ROLE web", "COMMIT"], "app"),
        (["BEGIN; SET LOCAL ROLE web", "COMMIT AND CHAIN"], "app"),
        (["BEGIN; SET LOCAL ROLE web", "PREPARE p AS SELECT 1"], "web"),
        (["BEGIN; SET LOCAL ROLE web; SELECT 1; COMMIT"], "app"),
    ],
)
def test_role_changes_are_followed(statements: list[str], expected: str) -> None:
    role = SessionRole("app")
    for sql in statements:
        role.seen(sql, in_transaction=False)
    assert role.current == expected


def test_what_cannot_be_known_is_a_role_no_cache_holds() -> None:
    role = SessionRole("app")
    role.seen("SET /* who */ ROLE web", in_transaction=False)
    first = role.current
    assert first not in ("app", "web") and "\x00" in first
    role.seen("RESET ROLE", in_transaction=False)
    role.seen("SET SESSION AUTHORIZATION /* who */ bob", in_transaction=False)
    assert role.current not in ("app", "bob", first)
    role.seen("RESET SESSION AUTHORIZATION", in_transaction=False)
    role.seen("RESET ROLE", in_transaction=False)
    assert role.current == "app"
    # SET (not LOCAL) in a transaction lasts only if it commits: unknown once it ends.
    role.seen("SET ROLE web", in_transaction=True)
    assert role.current == "web"
    role.idle()
    assert role.current not in ("app", "web", first)


def test_a_text_that_changes_the_role_between_its_statements_is_only_looked_up() -> None:
    role = SessionRole("app")
    planned = role.seen(
        "UPDATE t SET v = 1; SET ROLE web; UPDATE t SET v = 2", in_transaction=False
    )
    assert planned not in ("app", "web") and role.current == "web"
    role.idle()  # its implicit transaction ended: committed or not, this cannot tell
    assert role.current not in ("app", "web", planned)
    role = SessionRole("app")
    assert role.seen("BEGIN; SET LOCAL ROLE web; SELECT 1", in_transaction=False) == "web"
    assert role.seen("UPDATE t SET v = 3", in_transaction=True) == "web"
    assert role.seen("COMMIT", in_transaction=True) == "app"


def test_followed_from_mid_session_the_role_is_unknown_until_it_is_set() -> None:
    role = SessionRole(None)
    assert "\x00" in role.current
    role.seen("SET ROLE web", in_transaction=False)
    assert role.current == "web"
    role.seen("RESET ROLE", in_transaction=False)
    assert "\x00" in role.current
