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
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

MAX_TABLES: Final = 4096
# A table the rewrite failed on (e.g. no SELECT privilege for RETURNING) runs uncaptured
# for this long, then is tried again: privileges and rules change without DDL we see.
SKIP_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class TableIdentity:
    oid: int
    schema: str
    name: str
    relkind: str  # pg_class.relkind: r, p, v, f...
    key: tuple[str, ...]  # key columns in index order; () means the whole row
    key_kind: str  # "primary key", "replica identity" or "whole row"
    has_rules: bool = False
    row_security: bool = False
    columns: tuple[str, ...] = ()  # every column in order, for INSERT without a column list

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def to_wire(self) -> list[Any]:
        return [self.oid, self.schema, self.name, self.relkind, list(self.key), self.key_kind,
                self.has_rules, self.row_security, list(self.columns)]  # fmt: skip

    @classmethod
    def from_wire(cls, fields: list[Any]) -> TableIdentity:
        oid, schema, name, relkind, key, key_kind, rules, rls, columns = fields
        return cls(int(oid), str(schema), str(name), str(relkind), tuple(map(str, key)),
                   str(key_kind), bool(rules), bool(rls), tuple(map(str, columns)))  # fmt: skip


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lookup_sql(regclass: str) -> str:
    """A scalar subquery answering the identity of ``regclass`` as JSON text.

    Every name is schema-qualified so a user's objects on the search_path cannot
    stand in for the catalog's.
    """
    rel = f"{quote_literal(regclass)}::pg_catalog.regclass"
    return (
        "(SELECT pg_catalog.json_build_array(c.oid, n.nspname, c.relname, c.relkind, "
        "(SELECT pg_catalog.array_agg(a.attname ORDER BY k.i) "
        "FROM (SELECT x.indkey FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid "
        "AND (x.indisprimary OR (x.indisreplident AND c.relreplident = 'i')) "
        "ORDER BY x.indisprimary DESC LIMIT 1) AS p, "
        "pg_catalog.unnest(p.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(att, i), "
        "pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = k.att), "
        "(SELECT x.indisprimary FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid "
        "AND x.indisprimary), c.relhasrules, c.relrowsecurity, "
        "(SELECT pg_catalog.array_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))::pg_catalog.text "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.oid = {rel})"
    )


def parse_lookup(value: bytes | str | None) -> TableIdentity | None:
    """The identity from :func:`lookup_sql`'s answer; None if it is not one."""
    if value is None:
        return None
    try:
        text = value.decode() if isinstance(value, bytes) else value
        oid, schema, name, relkind, key, primary, rules, rls, columns = json.loads(text)
        key_columns = tuple(str(c) for c in key or ())
        kind = "primary key" if primary else "replica identity" if key_columns else "whole row"
        every = tuple(str(c) for c in columns or ())
        return TableIdentity(
            int(oid), str(schema), str(name), str(relkind), key_columns, kind,
            bool(rules), bool(rls), every,
        )  # fmt: skip
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


class IdentityCache:
    """(database, relation as written) → identity; shared by every connection of a sidecar.

    Touched only on the event loop. Bounded: the oldest entries go first.
    """

    def __init__(self, *, max_tables: int = MAX_TABLES) -> None:
        self._known: OrderedDict[tuple[str, str], TableIdentity] = OrderedDict()
        self._skip: dict[tuple[str, str], tuple[float, str]] = {}
        self._max = max_tables
        self.generation = 0  # bumped on every change, so cached rewrites know they are stale

    def get(self, database: str, relation: str) -> TableIdentity | None:
        return self._known.get((database, relation))

    def put(self, database: str, relation: str, identity: TableIdentity) -> None:
        key = (database, relation)
        if self._known.get(key) == identity:
            return
        self._known[key] = identity
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        self.generation += 1

    def skipped(self, database: str, relation: str) -> str | None:
        """Why statements on this table run uncaptured for now, or None."""
        entry = self._skip.get((database, relation))
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._skip[(database, relation)]
            self.generation += 1
            return None
        return entry[1]

    def skip(self, database: str, relation: str, reason: str) -> None:
        if len(self._skip) >= self._max:
            self._skip.clear()
        self._skip[(database, relation)] = (time.monotonic() + SKIP_SECONDS, reason)
        self.forget(database, relation)
        self.generation += 1

    def forget(self, database: str, relation: str) -> None:
        if self._known.pop((database, relation), None) is not None:
            self.generation += 1

    def forget_names(self, database: str, names: set[str] | None) -> None:
        """After DDL: forgets tables whose name (any schema) is in ``names``; None = all."""
        stale = [
            key
            for key, ident in self._known.items()
            if key[0] == database and (names is None or ident.name in names)
        ]
        for key in stale:
            del self._known[key]
        if stale:
            self.generation += 1
