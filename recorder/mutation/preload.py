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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .identity import CATALOG_FROM, TableIdentity, identity_expression, parse_lookup
from .nodes import quote_ident

MAX_PRELOAD: Final = 2000


def preload_sql(server_major: int, limit: int = MAX_PRELOAD) -> str:
    """One row per relation: its identity (JSON text), and whether its bare name finds it
    on the session's search_path. Temporary tables belong to one session only; schemas
    named pg_* and information_schema hold the system's own relations."""
    return (
        f"SELECT {identity_expression(server_major)}, pg_catalog.pg_table_is_visible(c.oid) "
        f"{CATALOG_FROM} WHERE c.relkind IN ('r', 'p', 'v', 'f') AND c.relpersistence <> 't' "
        "AND pg_catalog.left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema' "
        "AND (pg_catalog.has_any_column_privilege(c.oid, 'INSERT, UPDATE') "
        "OR pg_catalog.has_table_privilege(c.oid, 'DELETE')) "
        f"ORDER BY 2 DESC, c.oid LIMIT {int(limit)}"
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
