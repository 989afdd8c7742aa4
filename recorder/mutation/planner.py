"""From a statement text to the text to run, with caches so each text is parsed once.

The cheap gate comes first: the statement's first keyword (``statement_kind``,
a regex over the leading comments and whitespace). A text that starts with
SELECT, SHOW, BEGIN... and holds no second statement is never parsed. Texts
that may change data or the schema are parsed once (pglast) and the analysis is
cached by text; the rewrite is cached too, and rebuilt from the cached analysis
(string splicing, no parse) when what is known about tables changes. Texts that
differ only in their constants (values sent inline) share one rewrite, carried
over without a parse (:mod:`.shapes`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from protocols.sqltext import split_statements, statement_kind

from .analyze import StatementInfo, analyze
from .forms import Rewrite, rewrite
from .identity import IdentityCache, TableIdentity
from .shapes import ShapeCache, shape

# First keywords of statements that can change rows or the schema, or manage prepared
# statements; anything else (select, show, set, begin...) is not looked at further.
INTERESTING: Final = frozenset(
    {"insert", "update", "delete", "merge", "with", "copy", "truncate", "call", "do",
     "prepare", "explain", "alter", "drop", "create", "grant", "revoke", "reindex",
     "comment", "reassign", "security", "import"}
)  # fmt: skip
MAX_CACHED: Final = 2048
UNPARSABLE: Final = "unparsable"


class Planner:
    """Per sidecar process (its caches are shared by every connection), used per session
    through :meth:`plan` with the session's database, role and server version."""

    def __init__(self, identities: IdentityCache | None = None) -> None:
        self.identities = identities or IdentityCache()
        self._analyses: dict[str, tuple[StatementInfo, ...] | None] = {}
        self._rewrites: dict[tuple[str, str, str, int], tuple[int, Rewrite]] = {}
        self.parses = 0  # how many texts went through pglast (tests check SELECTs add none)
        self.shapes = ShapeCache(MAX_CACHED)  # texts that differ only in constants

    def interesting(self, sql: str) -> bool:
        """The gate: False means the text changes no data and needs no parse."""
        if statement_kind(sql) in INTERESTING:
            return True
        semicolon = sql.find(";")
        if semicolon < 0 or not sql[semicolon + 1 :].strip(" \t\r\n;"):
            return False
        return any(statement_kind(s) in INTERESTING for s in split_statements(sql)[1:])

    def analysis(self, sql: str) -> tuple[StatementInfo, ...] | None:
        """The cached analysis; None when pglast cannot parse it (it runs unchanged)."""
        try:
            return self._analyses[sql]
        except KeyError:
            pass
        if len(self._analyses) >= MAX_CACHED:
            self._analyses.clear()
        self.parses += 1
        try:
            infos: tuple[StatementInfo, ...] | None = analyze(sql)
        except Exception:  # pglast's errors, and anything our analysis trips on
            infos = None
        self._analyses[sql] = infos
        return infos

    def plan(
        self, sql: str, database: str, server_major: int, role: str = "", *, query: bool = False
    ) -> Rewrite | None:
        """The rewrite of ``sql``, or None when the text needs no attention at all. ``role``
        names whose privileges apply (identities are learnt and cached per role); ``query``:
        it runs as a simple Query (writable CTEs are read back in the same text)."""
        if not self.interesting(sql):
            return None
        scope_key = (database, role, server_major, query)
        # A text seen before is planned from its cached analysis (a dict lookup, usually
        # of the rewrite too); only a new one is worth shaping, to spare it a parse.
        seen = sql in self._analyses
        form = None if seen else shape(sql)
        if form is not None:
            carried = self.shapes.get(form, sql, scope_key, self.identities.generation)
            if carried is not None:
                return carried
        infos = self.analysis(sql)
        if infos is None:
            return None
        for info in infos:
            if info.is_ddl:
                names = None if info.ddl_names is None else set(info.ddl_names)
                self.identities.forget_names(database, names)
        readback = query and any(info.ctes for info in infos)
        key = (sql, database, role, server_major if not readback else -server_major)
        generation = self.identities.generation
        cached = self._rewrites.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        identities = self.identities
        scope = (database, role)

        def lookup(relation: str) -> TableIdentity | str | None:
            return identities.skipped(scope, relation) or identities.get(scope, relation)

        result = replace(
            rewrite(sql, infos, server_major=server_major, lookup=lookup, readback=readback),
            role=role,
        )
        if len(self._rewrites) >= MAX_CACHED:
            self._rewrites.clear()
        self._rewrites[key] = (self.identities.generation, result)
        if seen:
            form = shape(sql)  # planned again: what is known about its tables changed
        if form is not None and not any(info.is_ddl for info in infos):
            self.shapes.learn(form, sql, scope_key, self.identities.generation, result)
        return result
