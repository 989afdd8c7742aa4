"""Row identity: which columns identify a row of a table, learnt from the catalog in-band.

The sidecar opens no connection of its own and never runs a query the client
did not send. So the catalog lookup travels inside a statement the client
sends anyway: the first rewritten statement on a table carries one more
RETURNING column, an uncorrelated scalar subquery (PostgreSQL runs it once per
execution, as an InitPlan) that reads ``pg_class``/``pg_index``. Its answer is
cached per (database, relation as written) and later statements leave the
lookup out. A DDL statement seen on any connection forgets the tables it names;
a table that turns out to be another one (same text, other ``search_path``, or
dropped and created again elsewhere) is caught by the OID every capture carries.

Identity, strongest first: the primary key, else the replica identity index,
else the whole row (``key == ()``).

The same lookup answers what decides whether a capture could change what the
statement does: the session role's SELECT privilege on the table (a capture
reads the whole row, which needs SELECT on every column; the row version needs
it on the table), whether row-level security is on (with a RETURNING that reads
the row, SELECT policies filter an UPDATE's or DELETE's rows and can make an
INSERT fail), rules, generated columns and BEFORE UPDATE row triggers. So the
lookup reads no column of the table: the statement that carries it runs with
the client's privileges and policies exactly as sent, and is not captured
itself. Privileges are per role, so identities are cached per (database, role).
Most are loaded in bulk before the first statement of a session (:mod:`.preload`);
the in-band lookup covers the rest.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

MAX_TABLES: Final = 4096
# A table the rewrite failed on runs uncaptured for this long, then is tried again:
# privileges and policies change without DDL this sidecar sees.
SKIP_SECONDS: Final = 60.0
# SELECT privilege as the lookup reports it: on the table (whole row and system columns
# readable), on every column (the row is, its version is not), or not enough for a capture.
SELECT_TABLE, SELECT_COLUMNS, SELECT_NONE = "table", "columns", "none"
# (database, role): what a cached identity holds for (privileges are per role).
Scope = tuple[str, str]
# What a session's start does about its scope's preload (see :mod:`.preload`).
PRELOAD_DUE, PRELOAD_LOADED, PRELOAD_BACKING_OFF = "due", "loaded", "backing-off"
_LAST_NAME = re.compile(r'(?:"((?:[^"]|"")*)"|([^."]+))$')


@dataclass(frozen=True, slots=True)
class TableIdentity:
    oid: int
    schema: str
    name: str
    relkind: str  # pg_class.relkind: r, p, v, f...
    key: tuple[str, ...]  # key columns in index order; () means the whole row
    key_kind: str  # "primary key", "replica identity" or "whole row"
    has_rules: bool = False
    row_security: bool = False  # relrowsecurity or relforcerowsecurity
    columns: tuple[str, ...] = ()  # every column in order, for INSERT without a column list
    select: str = SELECT_TABLE  # the session role's SELECT privilege (see SELECT_*)
    generated: tuple[str, ...] = ()  # stored generated columns
    update_triggers: bool = False  # BEFORE UPDATE row triggers (they may change any column)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def to_wire(self) -> list[Any]:
        return [self.oid, self.schema, self.name, self.relkind, list(self.key), self.key_kind,
                self.has_rules, self.row_security, list(self.columns), self.select,
                list(self.generated), self.update_triggers]  # fmt: skip

    @classmethod
    def from_wire(cls, fields: list[Any]) -> TableIdentity:
        oid, schema, name, relkind, key, key_kind, rules, rls, columns = fields[:9]
        select, generated, triggers = _pad(fields[9:12], (SELECT_NONE, (), True))
        return cls(int(oid), str(schema), str(name), str(relkind), tuple(map(str, key)),
                   str(key_kind), bool(rules), bool(rls), tuple(map(str, columns)), str(select),
                   tuple(map(str, generated)), bool(triggers))  # fmt: skip


def _pad(given: list[Any], defaults: tuple[Any, ...]) -> list[Any]:
    """Fields an older answer lacks take defaults that allow no capture."""
    return [*given, *defaults[len(given) :]]


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lookup_sql(regclass: str, server_major: int = 18) -> str:
    """A scalar subquery answering the identity of ``regclass`` as JSON text.

    Every name is schema-qualified so a user's objects on the search_path cannot
    stand in for the catalog's. It reads the catalog only: no privilege on the table
    and no policy of it is involved.
    """
    rel = f"{quote_literal(regclass)}::pg_catalog.regclass"
    return f"(SELECT {identity_expression(server_major)} {CATALOG_FROM} WHERE c.oid = {rel})"


# The relation ``c`` and its schema ``n``, for :func:`identity_expression`.
CATALOG_FROM: Final = (
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
)


def identity_expression(server_major: int) -> str:
    """The identity of the relation ``c`` (schema ``n``) as JSON text, as
    :func:`parse_lookup` reads it."""
    # pg_attribute.attgenerated exists from PostgreSQL 12 on.
    generated = (
        "(SELECT pg_catalog.array_agg(a.attname) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attgenerated <> '')"
        if server_major >= 12
        else "NULL"
    )
    return (
        "pg_catalog.json_build_array(c.oid, n.nspname, c.relname, c.relkind, "
        "(SELECT pg_catalog.array_agg(a.attname ORDER BY k.i) "
        "FROM (SELECT x.indkey FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid "
        "AND (x.indisprimary OR (x.indisreplident AND c.relreplident = 'i')) "
        "ORDER BY x.indisprimary DESC LIMIT 1) AS p, "
        "pg_catalog.unnest(p.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(att, i), "
        "pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = k.att), "
        "(SELECT x.indisprimary FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid "
        "AND x.indisprimary), "
        # Not relhasrules: it stays true after the last rule is dropped (until a VACUUM).
        "EXISTS (SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid "
        "AND r.rulename <> '_RETURN'), c.relrowsecurity OR c.relforcerowsecurity, "
        "(SELECT pg_catalog.array_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), "
        "CASE WHEN pg_catalog.has_table_privilege(c.oid, 'SELECT') THEN 'table' "
        "WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid "
        "AND a.attnum > 0 AND NOT a.attisdropped "
        "AND NOT pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')) THEN 'columns' "
        f"ELSE 'none' END, {generated}, "
        # tgtype bits: 1 row, 2 before, 16 update
        "EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = c.oid "
        "AND g.tgtype::pg_catalog.int4 & 19 = 19))::pg_catalog.text"
    )


def parse_lookup(value: bytes | str | None) -> TableIdentity | None:
    """The identity from :func:`lookup_sql`'s answer; None if it is not one."""
    if value is None:
        return None
    try:
        text = value.decode() if isinstance(value, bytes) else value
        fields = json.loads(text)
        oid, schema, name, relkind, key, primary, rules, rls, columns = fields[:9]
        # An answer without the privilege fields grants nothing: safe, not captured.
        select, generated, triggers = _pad(fields[9:12], (SELECT_NONE, (), True))
        key_columns = tuple(str(c) for c in key or ())
        kind = "primary key" if primary else "replica identity" if key_columns else "whole row"
        every = tuple(str(c) for c in columns or ())
        return TableIdentity(
            int(oid), str(schema), str(name), str(relkind), key_columns, kind,
            bool(rules), bool(rls), every, str(select),
            tuple(str(c) for c in generated or ()), bool(triggers),
        )  # fmt: skip
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


class IdentityCache:
    """(database, role, relation as written) → identity; shared by every connection of a
    sidecar. Touched only on the event loop. Bounded: the oldest entries go first."""

    def __init__(self, *, max_tables: int = MAX_TABLES) -> None:
        self._known: OrderedDict[tuple[str, str, str], TableIdentity] = OrderedDict()
        self._skip: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._max = max_tables
        self.generation = 0  # bumped on every change, so cached rewrites know they are stale
        # Scopes whose tables were loaded at a session's start.
        self.loaded: set[Scope] = set()
        # Scopes whose preload failed, until when no session tries it again: the same
        # query would fail the same way for every session of a pool.
        self._preload_failed: dict[Scope, float] = {}
        # (database, user of the StartupMessage) -> (session_user, current_user) as a
        # preload found them: a role's default ``role`` setting makes them differ.
        self.started: dict[Scope, tuple[str, str]] = {}

    def preload_state(self, scope: Scope) -> str:
        """Whether a session of ``scope`` (its StartupMessage's user) should preload:
        PRELOAD_DUE, PRELOAD_LOADED (for the role its sessions start as, see
        :attr:`started`) or PRELOAD_BACKING_OFF (failed less than :data:`SKIP_SECONDS`
        ago)."""
        users = self.started.get(scope)
        if (scope if users is None else (scope[0], users[1])) in self.loaded:
            return PRELOAD_LOADED
        until = self._preload_failed.get(scope)
        if until is not None:
            if until > time.monotonic():
                return PRELOAD_BACKING_OFF
            del self._preload_failed[scope]
        return PRELOAD_DUE

    def preload_failed(self, scope: Scope, seconds: float = SKIP_SECONDS) -> None:
        if len(self._preload_failed) >= self._max:
            self._preload_failed.clear()
        self._preload_failed[scope] = time.monotonic() + seconds

    def get(self, scope: Scope, relation: str) -> TableIdentity | None:
        return self._known.get((*scope, relation))

    def put(self, scope: Scope, relation: str, identity: TableIdentity) -> None:
        key = (*scope, relation)
        if self._known.get(key) == identity:
            return
        self._known[key] = identity
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        self.generation += 1

    def load(self, scope: Scope, entries: list[tuple[str, TableIdentity]]) -> None:
        """Many identities at once (see :mod:`.preload`); one generation step."""
        self.loaded.add(scope)
        for relation, identity in entries[: self._max]:
            key = (*scope, relation)
            self._known[key] = identity
            self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        self.generation += 1

    def skipped(self, scope: Scope, relation: str) -> str | None:
        """Why statements on this table run uncaptured for now, or None."""
        key = (*scope, relation)
        entry = self._skip.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._skip[key]
            self.generation += 1
            return None
        return entry[1]

    def skip(self, scope: Scope, relation: str, reason: str, seconds: float = SKIP_SECONDS) -> None:
        if len(self._skip) >= self._max:
            self._skip.clear()
        self._skip[(*scope, relation)] = (time.monotonic() + seconds, reason)
        self.forget(scope, relation)
        self.generation += 1

    def forget(self, scope: Scope, relation: str) -> None:
        if self._known.pop((*scope, relation), None) is not None:
            self.generation += 1

    def forget_names(self, database: str, names: set[str] | None) -> None:
        """After DDL (GRANT and policies included): forgets tables whose name (any schema)
        is in ``names``, for every role; None = all of the database's. Tables set aside
        after a failed rewrite are tried again: what made it fail may be what changed."""
        stale = [
            key
            for key, ident in self._known.items()
            if key[0] == database and (names is None or ident.name in names)
        ]
        stale += [
            key
            for key in self._skip
            if key[0] == database and (names is None or _last_name(key[2]) in names)
        ]
        for key in stale:
            self._known.pop(key, None)
            self._skip.pop(key, None)
        if names is None:
            self.loaded = {s for s in self.loaded if s[0] != database}
            self.started = {s: u for s, u in self.started.items() if s[0] != database}
            self._preload_failed = {s: t for s, t in self._preload_failed.items()
                                    if s[0] != database}  # fmt: skip
        if stale:
            self.generation += 1


def _last_name(relation: str) -> str:
    """A relation as a statement wrote it (``s.t``, ``"T"``) to its name as the catalog
    spells it (unquoted names are folded to lower case)."""
    match = _LAST_NAME.search(relation)
    if match is None:
        return relation
    quoted, plain = match.groups()
    return quoted.replace('""', '"') if quoted is not None else plain.lower()
