"""Identities of a role's tables, loaded once at the start of a session.

Without them, the first write on each table (per database and role) would only
carry the catalog lookup and go uncaptured (see :mod:`.identity`). So at a
session's first idle point the proxy sends one query of its own, whose answer
the client never sees, and caches what it says for every table, view and
foreign table the session's role may write to, as the lookup would have: then
even the first write on a table is captured, and one on a view or a table with
DO INSTEAD rules runs exactly as sent. Bounded: tables past :data:`MAX_PRELOAD`
are learnt one at a time as before, and so are tables created later. A scope
already loaded costs a new session nothing.

Whose privileges the answer reflects is the session's ``current_user``, which is
not always the StartupMessage's user: a role's or a database's default ``role``
setting (``ALTER ROLE ... SET role = ...``) or the startup options may set it. So
the query also says who the session's users are; the identities are filed under
that role, the session follows it from its start (``RESET ROLE`` returns to it),
and later sessions of the same user that are known to start the same way need no
preload. A session whose startup options mention a role always asks.

A failing preload (a statement_timeout too short for it, a role that may not read
the catalog columns it reads) is not tried again by that user's sessions for
:data:`~.identity.SKIP_SECONDS`: the tables are looked up one at a time meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from .identity import (
    CATALOG_FROM,
    PRELOAD_LOADED,
    IdentityCache,
    Scope,
    TableIdentity,
    identity_expression,
    parse_lookup,
)
from .nodes import quote_ident
from .roles import SessionRole

MAX_PRELOAD: Final = 2000
MAX_STARTED: Final = 4096


def preload_sql(server_major: int, limit: int = MAX_PRELOAD) -> str:
    """One row per relation: its identity (JSON text), and whether its bare name finds it
    on the session's search_path. Temporary tables belong to one session only; schemas
    named pg_* and information_schema hold the system's own relations."""
    # The first row names the session's users (SQL keywords: no object can stand in).
    return (
        "SELECT pg_catalog.json_build_array(CURRENT_USER, SESSION_USER)::pg_catalog.text, "
        "NULL::pg_catalog.bool UNION ALL ("
        f"SELECT {identity_expression(server_major)}, pg_catalog.pg_table_is_visible(c.oid) "
        f"{CATALOG_FROM} WHERE c.relkind IN ('r', 'p', 'v', 'f') AND c.relpersistence <> 't' "
        "AND pg_catalog.left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema' "
        "AND (pg_catalog.has_any_column_privilege(c.oid, 'INSERT, UPDATE') "
        "OR pg_catalog.has_table_privilege(c.oid, 'DELETE')) "
        f"ORDER BY 2 DESC, c.oid LIMIT {int(limit)})"
    )


def preload_entries(
    rows: Sequence[Sequence[bytes | None]],
) -> list[tuple[str, TableIdentity]]:
    """The identity cache's entries from :func:`preload_sql`'s rows (text format): each
    relation under its qualified name as a statement spells it, and under its bare name
    when that finds it (the cache key is the relation as written)."""
    entries: list[tuple[str, TableIdentity]] = []
    for row in rows:
        if len(row) != 2:
            continue
        identity = parse_lookup(row[0])
        if identity is None:
            continue
        bare = quote_ident(identity.name)
        entries.append((f"{quote_ident(identity.schema)}.{bare}", identity))
        if row[1] == b"t":
            entries.append((bare, identity))
    return entries


def preload_users(rows: Sequence[Sequence[bytes | None]]) -> tuple[str, str] | None:
    """(session_user, current_user) from :func:`preload_sql`'s first row."""
    for row in rows[:1]:
        if len(row) == 2 and row[0] is not None and row[1] is None:
            try:
                users = json.loads(row[0])
            except (ValueError, UnicodeDecodeError):
                return None
            if (
                isinstance(users, list)
                and len(users) == 2
                and all(isinstance(u, str) for u in users)
            ):
                return users[1], users[0]
    return None


def session_start(identities: IdentityCache, scope: Scope, role: SessionRole) -> str:
    """At a session's first idle point, ``scope`` its (database, StartupMessage user):
    whether to preload (see :meth:`~.identity.IdentityCache.preload_state`). When its
    scope is loaded already, the session follows the users it is known to start as."""
    state = identities.preload_state(scope)
    users = identities.started.get(scope)
    if state == PRELOAD_LOADED and users is not None:
        role.started_as(*users)
    return state


def preload_answered(
    identities: IdentityCache, scope: Scope, rows: Sequence[Sequence[bytes | None]],
    role: SessionRole,
) -> None:  # fmt: skip
    """The rows of a preload sent for ``scope`` (database, StartupMessage user), read
    before the client's first statement: the identities are filed under the role the
    session runs as, which the session follows from now on."""
    users = preload_users(rows)
    loaded = scope
    if users is not None:
        role.started_as(*users)
        loaded = (scope[0], users[1])
        if "\x00" not in scope[1]:  # not a session whose user was not known at its start
            if len(identities.started) >= MAX_STARTED:
                identities.started.clear()
            identities.started[scope] = users
    identities.load(loaded, preload_entries(rows))
