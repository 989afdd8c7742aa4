"""The statement as the sidecar runs it: the client's text with capture spliced in.

Every capture appends columns at the end of the statement's RETURNING list (one
is added when the client has none), so the proxy strips them by count:

- ``old``/``new``: the row before and after, as JSON text (NULL where none);
- ``oid``: the target's OID, a plan-time constant that tells a cached identity
  from another table with the same name;
- ``version_old``/``version_new``: the xmin of the row version before and after,
  on plain tables (partitioned ones refuse system columns in RETURNING): which of
  two concurrent writers of a row came first;
- ``identity``: the catalog lookup (see :mod:`.identity`), until it is cached;
- ``inserted``: INSERT ... ON CONFLICT DO UPDATE on PostgreSQL < 18: whether the
  row was inserted (xmax = 0) rather than updated.

PostgreSQL 18 has ``RETURNING old.*, new.*``: every statement just returns
``to_json(old)``/``to_json(new)``. Before 18, INSERT and DELETE need nothing
more (the new row, the deleted row). UPDATE reads its before image in the same
statement through a CTE that locks the target rows (FOR NO KEY UPDATE, the lock
the UPDATE itself takes) and is joined back on the row's key: under READ
COMMITTED the lock waits for concurrent writers and returns the latest
version, which is the one the UPDATE then modifies. The join is on the key,
not on ctid, because the UPDATE's own scan still sees the snapshot's version.
With a cached primary key and no FROM list, the client's WHERE moves into the
CTE and runs once; otherwise it runs in both places, which is only done when
it is deterministic (:mod:`.safety`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .analyze import Dml, StatementInfo, quote_ident
from .identity import TableIdentity, lookup_sql, quote_literal

OLD, NEW, OID, IDENTITY, INSERTED = "old", "new", "oid", "identity", "inserted"
# The xmin of the row version before and after: which change follows which, per row.
VERSION_OLD, VERSION_NEW = "version_old", "version_new"
_TEXT = "::pg_catalog.text"
_NULL = "NULL" + _TEXT

# What the caller knows about a table: its identity, None (unknown), or why to skip it.
Lookup = Callable[[str], "TableIdentity | str | None"]


@dataclass(frozen=True, slots=True)
class Capture:
    """What one rewritten statement returns beyond the client's own columns."""

    op: str
    relation: str  # the target as a regclass literal: the identity cache key
    roles: tuple[str, ...]  # the appended columns, in order
    client_returning: bool  # False: the client expects no rows at all
    form: str
    identity: TableIdentity | None  # what was known at rewrite time
    uncaptured: str | None = None  # "identity-only": why the rows themselves are not captured


@dataclass(frozen=True, slots=True)
class StatementPlan:
    capture: Capture | None = None
    uncaptured: str | None = None  # a data change that runs unchanged, and why


@dataclass(frozen=True, slots=True)
class Rewrite:
    sql: str
    statements: tuple[StatementPlan, ...]
    segments: tuple[tuple[int, int, int], ...]  # (position in sql, position in original, length)
    changed: bool

    def added(self, position: int) -> bool:
        """Whether a 1-based position in ``sql`` falls in text the rewrite added."""
        index = position - 1
        return not any(s <= index < s + n for s, _, n in self.segments)

    def original_position(self, position: int) -> int:
        """Maps a 1-based character position in ``sql`` back to the client's text."""
        index = position - 1
        best = 0
        for new_start, old_start, length in self.segments:
            if new_start <= index < new_start + length:
                return old_start + index - new_start + 1
            if new_start <= index:
                best = old_start + length  # added text: point just after what preceded it
        return best + 1


class _Out:
    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[str] = []
        self.segments: list[tuple[int, int, int]] = []
        self.size = 0

    def copy(self, start: int, end: int) -> None:
        if end > start:
            self.segments.append((self.size, start, end - start))
            self.parts.append(self.source[start:end])
            self.size += end - start

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)


class Unsupported(Exception):
    """This statement runs unchanged; the message is the reason recorded."""


class NeedIdentity(Unsupported):
    """Capturable once the table's identity is known: until then only the lookup is added."""


def rewrite(
    sql: str, infos: tuple[StatementInfo, ...], *, server_major: int, lookup: Lookup
) -> Rewrite:
    out = _Out(sql)
    plans: list[StatementPlan] = []
    cursor = 0
    changed = False
    for info in infos:
        dml = info.dml
        if dml is None:
            plans.append(StatementPlan(uncaptured=info.uncaptured))
            continue
        mark = (len(out.parts), len(out.segments), out.size)
        out.copy(cursor, info.start)
        try:
            capture = _statement(out, info, dml, server_major, lookup)
        except Unsupported as exc:
            del out.parts[mark[0] :], out.segments[mark[1] :]
            out.size = mark[2]
            if not isinstance(exc, NeedIdentity):
                plans.append(StatementPlan(uncaptured=str(exc)))
                continue
            # Run it otherwise unchanged, with only the catalog lookup appended: the next
            # statement on this table can then be captured.
            out.copy(cursor, info.start)
            out.copy(info.start, info.end)
            out.add(_returning_joint(dml) + lookup_sql(dml.target.regclass))
            capture = Capture(
                dml.op, dml.target.regclass, (IDENTITY,), dml.returning is not None,
                "identity-only", None, str(exc),
            )  # fmt: skip
        plans.append(StatementPlan(capture=capture))
        cursor = info.end
        changed = True
    out.copy(cursor, len(sql))
    if not changed:
        return Rewrite(sql, tuple(plans), ((0, 0, len(sql)),), False)
    return Rewrite("".join(out.parts), tuple(plans), tuple(out.segments), True)


def _statement(
    out: _Out, info: StatementInfo, dml: Dml, server_major: int, lookup: Lookup
) -> Capture:
    if dml.problem:
        raise Unsupported(dml.problem)
    known = lookup(dml.target.regclass)
    if isinstance(known, str):
        raise Unsupported(known)
    if known is not None:
        if known.relkind in ("v", "f", "m"):
            raise Unsupported({"v": "view", "f": "foreign-table", "m": "matview"}[known.relkind])
        if known.has_rules:
            raise Unsupported("rules")
        if known.row_security:
            raise Unsupported("row-security")
    if server_major >= 18:
        return _native(out, info, dml, known)
    if dml.op == "merge":
        raise Unsupported("merge-before-pg17" if server_major < 17 else "merge-pg17")
    if dml.returning is not None and dml.returning.options_close is not None:
        raise Unsupported("returning-with-before-pg18")
    if dml.op == "update":
        return _update(out, info, dml, known)
    if dml.upsert is not None and dml.upsert.action == "update":
        return _upsert(out, info, dml, known)
    ref = dml.target.ref
    image = f"pg_catalog.to_json({ref}){_TEXT}"
    old, new = (image, _NULL) if dml.op == "delete" else (_NULL, image)
    xmin = f"{ref}.xmin{_TEXT}"
    versions = (xmin, _NULL) if dml.op == "delete" else (_NULL, xmin)
    roles, extra = _tail(dml, known, (OLD, NEW), [old, new], versions)
    out.copy(info.start, info.end)
    out.add(_returning_joint(dml) + ", ".join(extra))
    return Capture(
        dml.op, dml.target.regclass, roles, dml.returning is not None, "returning", known
    )


def _tail(
    dml: Dml,
    known: TableIdentity | None,
    roles: tuple[str, ...],
    values: list[str],
    versions: tuple[str, str] | None = None,
) -> tuple[tuple[str, ...], list[str]]:
    """Appends the oid, the row versions where the table allows system columns in RETURNING
    (plain tables; partitioned ones do not), and, while the identity is unknown, the lookup."""
    oid = f"{quote_literal(dml.target.regclass)}::pg_catalog.regclass::pg_catalog.oid{_TEXT}"
    roles, values = (*roles, OID), [*values, oid]
    if versions is not None and _stamped(known):
        roles, values = (*roles, VERSION_OLD, VERSION_NEW), [*values, *versions]
    if known is None:
        return (*roles, IDENTITY), [*values, lookup_sql(dml.target.regclass)]
    return roles, values


def _stamped(known: TableIdentity | None) -> bool:
    return known is not None and known.relkind == "r"


def _returning_joint(dml: Dml) -> str:
    return ", " if dml.returning is not None else " RETURNING "


def _native(out: _Out, info: StatementInfo, dml: Dml, known: TableIdentity | None) -> Capture:
    ret = dml.returning
    old = ret.old if ret and ret.old else "old"
    new = ret.new if ret and ret.new else "new"
    if (ret is None or ret.old is None or ret.new is None) and ({"old", "new"} & dml.aliases):
        raise Unsupported("old-new-alias")
    values = [f"pg_catalog.to_json({old}){_TEXT}", f"pg_catalog.to_json({new}){_TEXT}"]
    versions = (f"{old}.xmin{_TEXT}", f"{new}.xmin{_TEXT}")
    roles, extra = _tail(dml, known, (OLD, NEW), values, versions)
    out.copy(info.start, info.end)
    out.add(_returning_joint(dml) + ", ".join(extra))
    return Capture(dml.op, dml.target.regclass, roles, ret is not None, "returning-old-new", known)


def _client_items(out: _Out, dml: Dml, stars: str) -> bool:
    """Copies the client's RETURNING list, spelling out bare ``*``; False if it has none."""
    ret = dml.returning
    if ret is None:
        return False
    start, end = ret.items
    for star in ret.stars:
        out.copy(start, star)
        out.add(stars)
        start = star + 1
    out.copy(start, end)
    return True


def _update(out: _Out, info: StatementInfo, dml: Dml, known: TableIdentity | None) -> Capture:
    target = dml.target
    ref = target.ref
    moved = known is not None and bool(known.key) and dml.from_span is None
    if not moved and not dml.deterministic:
        if known is None and dml.from_span is None:
            raise NeedIdentity("nondeterministic-where")
        raise Unsupported("nondeterministic-where")
    if dml.returning is not None and dml.returning.stars and dml.from_refs is None:
        raise Unsupported("returning-star-over-join")
    ctes: list[str] = []
    if known is None:
        ctes.append(f"__flux_id AS (SELECT {_nonkey_sql(target.regclass)} AS nk)")
        keys = [f"pg_catalog.to_jsonb({ref}) - (SELECT nk FROM __flux_id)"]
        form = "cte-dynamic-key"
    elif known.key:
        keys = [f"{ref}.{quote_ident(k)}" for k in known.key]
        form = "cte-key" if moved else "cte-key-where-twice"
    else:
        keys = [f"pg_catalog.to_jsonb({ref})"]
        form = "cte-whole-row"
    columns = ", ".join(f"{k} AS __flux_k{i}" for i, k in enumerate(keys))
    if _stamped(known):
        columns += f", {ref}.xmin AS __flux_xmin"
    join = " AND ".join(f"{k} = __flux_old.__flux_k{i}" for i, k in enumerate(keys))
    # WITH [client CTEs,] __flux_old AS (SELECT keys, image FROM target [, from] [WHERE ...]
    #   FOR NO KEY UPDATE OF ref)
    out.copy(info.start, dml.keyword)
    out.add(", " if dml.has_with else "WITH ")
    for cte in ctes:
        out.add(cte + ", ")
    out.add(
        f"__flux_old AS (SELECT {columns}, pg_catalog.to_json({ref}){_TEXT} AS __flux_img FROM "
    )
    out.copy(target.start, target.end)
    if dml.from_span is not None:
        out.add(", ")
        out.copy(*dml.from_span)
    if dml.where is not None:
        out.add(" WHERE ")
        out.copy(*dml.where)
    out.add(f" FOR NO KEY UPDATE OF {ref}) ")
    # UPDATE target SET ... FROM [from, ] __flux_old WHERE [(where) AND] keys match
    out.copy(dml.keyword, dml.set_end)
    out.add(" FROM ")
    if dml.from_span is not None:
        out.copy(*dml.from_span)
        out.add(", ")
    out.add("__flux_old WHERE ")
    if dml.where is not None and not moved:
        out.add("(")
        out.copy(*dml.where)
        out.add(") AND ")
    out.add(join)
    out.add(" RETURNING ")
    star = ", ".join(f"{r}.*" for r in (ref, *(dml.from_refs or ())))
    if _client_items(out, dml, star):
        out.add(", ")
    values = ["__flux_old.__flux_img", f"pg_catalog.to_json({ref}){_TEXT}"]
    versions = (f"__flux_old.__flux_xmin{_TEXT}", f"{ref}.xmin{_TEXT}")
    roles, extra = _tail(dml, known, (OLD, NEW), values, versions)
    out.add(", ".join(extra))
    return Capture("update", target.regclass, roles, dml.returning is not None, form, known)


def _nonkey_sql(regclass: str) -> str:
    """The names of the columns outside the key, for ``to_jsonb(row) - names`` = the key."""
    rel = f"{quote_literal(regclass)}::pg_catalog.regclass"
    key = (
        f"(SELECT x.indkey::pg_catalog.int2[] FROM pg_catalog.pg_index x WHERE x.indrelid = {rel} "
        "AND (x.indisprimary OR x.indisreplident) ORDER BY x.indisprimary DESC LIMIT 1)"
    )
    return (
        f"CASE WHEN {key} IS NULL THEN '{{}}'::pg_catalog.text[] ELSE "
        "(SELECT pg_catalog.array_agg(a.attname::pg_catalog.text) FROM pg_catalog.pg_attribute a "
        f"WHERE a.attrelid = {rel} AND a.attnum > 0 AND NOT a.attisdropped "
        f"AND a.attnum <> ALL (COALESCE({key}, '{{}}'))) END"
    )


def _upsert(out: _Out, info: StatementInfo, dml: Dml, known: TableIdentity | None) -> Capture:
    upsert = dml.upsert
    assert upsert is not None
    if upsert.conflict is None or upsert.rows is None:
        raise Unsupported("upsert-shape")
    columns = upsert.insert_columns
    if columns is None:
        if known is None:
            raise NeedIdentity("upsert-without-column-list")
        columns = known.columns
    if not set(upsert.conflict) <= set(columns[: len(upsert.rows[0])]):
        raise Unsupported("upsert-conflict-column-not-inserted")
    positions = [columns.index(c) for c in upsert.conflict]
    if not all(safe[i] for safe in upsert.safe for i in positions):
        raise Unsupported("nondeterministic-values")
    ref = dml.target.ref
    cols = [f"{ref}.{quote_ident(c)}" for c in upsert.conflict]
    # __flux_old AS (SELECT conflict columns, image FROM target WHERE (cols) IN (values...)
    #   FOR UPDATE OF ref): ON CONFLICT DO UPDATE takes that same lock.
    out.copy(info.start, dml.keyword)
    out.add(", " if dml.has_with else "WITH ")
    keys = ", ".join(f"{c} AS __flux_k{i}" for i, c in enumerate(cols))
    if _stamped(known):
        keys += f", {ref}.xmin AS __flux_xmin"
    out.add(f"__flux_old AS (SELECT {keys}, pg_catalog.to_json({ref}){_TEXT} AS __flux_img FROM ")
    out.add(f"{dml.target.regclass} AS {ref} WHERE ({', '.join(cols)}) IN (")
    for n, row in enumerate(upsert.rows):
        out.add(", (" if n else "(")
        for i, position in enumerate(positions):
            if i:
                out.add(", ")
            out.copy(*row[position])
        out.add(")")
    out.add(f") FOR UPDATE OF {ref}) ")
    # The CTE must run before the first row is updated, which a condition in DO UPDATE ...
    # WHERE guarantees: it is evaluated on the first conflict, before that row changes.
    gate = "CASE WHEN (SELECT pg_catalog.count(*) FROM __flux_old) >= 0 THEN "
    if upsert.where is not None:
        out.copy(dml.keyword, upsert.where[0])
        out.add(f" {gate}(")
        out.copy(*upsert.where)
        out.add(") ELSE false END ")
        cursor = upsert.where[1]
    else:
        out.copy(dml.keyword, upsert.action_end)
        out.add(f" WHERE {gate}true ELSE false END ")
        cursor = upsert.action_end
    out.copy(cursor, info.end)
    out.add(_returning_joint(dml))
    match = " AND ".join(f"__flux_old.__flux_k{i} = {c}" for i, c in enumerate(cols))
    values = [
        f"(SELECT __flux_old.__flux_img FROM __flux_old WHERE {match} LIMIT 1)",
        f"pg_catalog.to_json({ref}){_TEXT}",
    ]
    versions = (
        f"(SELECT __flux_old.__flux_xmin{_TEXT} FROM __flux_old WHERE {match} LIMIT 1)",
        f"{ref}.xmin{_TEXT}",
    )
    roles, extra = _tail(dml, known, (OLD, NEW), values, versions)
    if known is not None and known.relkind == "r":
        # xmax = 0: inserted, not updated; tells an update whose before image the CTE could
        # not see (a row a concurrent transaction inserted) from an insert. Partitioned
        # tables refuse system columns in RETURNING.
        extra.append(f"({ref}.xmax{_TEXT} = '0'){_TEXT}")
        roles = (*roles, INSERTED)
    out.add(", ".join(extra))
    return Capture(
        "insert", dml.target.regclass, roles, dml.returning is not None, "cte-upsert", known
    )
