"""The statement as the sidecar runs it: the client's text with capture spliced in.

Every capture appends columns at the end of the statement's RETURNING list (one
is added when the client has none), so the proxy strips them by count:

- ``old``/``new``: the row before and after, as JSON text (NULL where none);
- ``oid``: the target's OID, a plan-time constant that tells a cached identity
  from another table with the same name;
- ``version_old``/``version_new``: the xmin of the row version before and after,
  on plain tables (partitioned ones refuse system columns in RETURNING): which of
  two concurrent writers of a row came first;
- ``identity``: the catalog lookup (see :mod:`.identity`);
- ``inserted``: INSERT ... ON CONFLICT DO UPDATE on PostgreSQL < 18: whether the
  row was inserted (xmax = 0) rather than updated.

A capture reads the whole row, and reading it is not free of consequences: it
needs SELECT on every column, and on a table with row-level security it makes
the SELECT policies filter the rows an UPDATE or DELETE changes (or fail an
INSERT). So a table's identity is known before anything reads its rows: loaded
for every table at a session's start (:mod:`.preload`), or else (a table created
since, past the preload's bound, or when the preload failed) learnt from the first
statement on it, which carries the catalog lookup alone, reads no column of the
table, and is not captured itself. Once the identity is known, a statement is
captured only when the role may read the row and the table has no row-level
security, no rules, and is not a view or foreign table. Everything else runs
exactly as sent.

PostgreSQL 18 has ``RETURNING old.*, new.*``: every statement just returns
``to_json(old)``/``to_json(new)``. Before 18, INSERT and DELETE need nothing
more (the new row, the deleted row), and UPDATE and INSERT ... ON CONFLICT DO
UPDATE read the before image through a locking CTE (:mod:`.locking`), as MERGE
does on 17 (:mod:`.merge`; before 17 MERGE has no RETURNING).
"""

from __future__ import annotations

from .analyze import Dml, StatementInfo
from .ctes import with_ctes
from .identity import SELECT_NONE, TableIdentity
from .locking import update, upsert
from .merge import merge
from .splice import (
    IDENTITY,
    INSERTED,
    NEW,
    NULL,
    OID,
    OLD,
    TEXT,
    VERSION_NEW,
    VERSION_OLD,
    Capture,
    Lookup,
    NeedIdentity,
    Out,
    Rewrite,
    StatementPlan,
    Unsupported,
    plan_dml,
    tail,
)

__all__ = [
    "IDENTITY", "INSERTED", "NEW", "OID", "OLD", "VERSION_NEW", "VERSION_OLD", "Capture",
    "Lookup", "Rewrite", "StatementPlan", "rewrite",
]  # fmt: skip

UNKNOWN = "identity-unknown"  # the first statement on a table (per role): only the lookup
_RELKINDS = {"v": "view", "f": "foreign-table", "m": "matview"}


def rewrite(
    sql: str,
    infos: tuple[StatementInfo, ...],
    *,
    server_major: int,
    lookup: Lookup,
    readback: bool = False,
) -> Rewrite:
    """``readback``: the text runs as a simple Query, where a statement with writable CTEs
    is followed by our read-back of their rows (see :mod:`.ctes`)."""
    out = Out(sql)
    plans: list[StatementPlan] = []
    cursor = 0
    changed = False

    def form(o: Out, i: StatementInfo, d: Dml) -> Capture:
        return _statement(o, i, d, server_major, lookup)

    for info in infos:
        if info.ctes:
            done = with_ctes(
                out, info, cursor, server_major=server_major, readback=readback,
                lookup=lookup, form=form,
            )  # fmt: skip
            plans.extend(done)
            if done[0].ctes:
                cursor = info.end
                changed = True
            continue
        dml = info.dml
        if dml is None:
            plans.append(StatementPlan(uncaptured=info.uncaptured))
            continue
        out.copy(cursor, info.start)
        plan = plan_dml(out, info, dml, server_major, form)
        plans.append(plan)
        if plan.capture is None:
            cursor = info.start  # it runs as sent: copied with what follows
            continue
        cursor = info.end
        changed = True
    out.copy(cursor, len(sql))
    if not changed:
        return Rewrite(sql, tuple(plans), ((0, 0, len(sql)),), False)
    return Rewrite("".join(out.parts), tuple(plans), tuple(out.segments), True)


def _statement(
    out: Out, info: StatementInfo, dml: Dml, server_major: int, lookup: Lookup
) -> Capture:
    if dml.problem:
        raise Unsupported(dml.problem)
    known = lookup(dml.target.regclass)
    if isinstance(known, str):
        raise Unsupported(known)
    ret = dml.returning
    # What no identity would change first: a statement never captured gets no lookup.
    if server_major < 18:
        if dml.op == "merge" and server_major < 17:
            raise Unsupported("merge-before-pg17")
        if ret is not None and ret.options_close is not None:
            raise Unsupported("returning-with-before-pg18")
    elif (ret is None or ret.old is None or ret.new is None) and {"old", "new"} & dml.aliases:
        raise Unsupported("old-new-alias")
    if known is None:
        raise NeedIdentity(UNKNOWN)
    if known.relkind in _RELKINDS:
        raise Unsupported(_RELKINDS[known.relkind])
    if known.has_rules:
        raise Unsupported("rules")
    if known.row_security:
        raise Unsupported("row-level security")
    if known.select == SELECT_NONE:
        raise Unsupported("no-select-privilege")
    if server_major >= 18:
        return _native(out, info, dml, known)
    if dml.op == "merge":
        return merge(out, info, dml, known)
    if dml.op == "update":
        return update(out, info, dml, known)
    if dml.upsert is not None and dml.upsert.action == "update":
        return upsert(out, info, dml, known)
    ref = dml.target.ref
    image = f"pg_catalog.to_json({ref}){TEXT}"
    old, new = (image, NULL) if dml.op == "delete" else (NULL, image)
    xmin = f"{ref}.xmin{TEXT}"
    versions = (xmin, NULL) if dml.op == "delete" else (NULL, xmin)
    roles, extra = tail(dml, known, (OLD, NEW), [old, new], versions)
    out.copy(info.start, info.end)
    out.returning(dml, extra)
    return Capture(dml.op, dml.target.regclass, roles, ret is not None, "returning", known)


def _native(out: Out, info: StatementInfo, dml: Dml, known: TableIdentity) -> Capture:
    ret = dml.returning
    old = ret.old if ret and ret.old else "old"
    new = ret.new if ret and ret.new else "new"
    values = [f"pg_catalog.to_json({old}){TEXT}", f"pg_catalog.to_json({new}){TEXT}"]
    versions = (f"{old}.xmin{TEXT}", f"{new}.xmin{TEXT}")
    roles, extra = tail(dml, known, (OLD, NEW), values, versions)
    out.copy(info.start, info.end)
    out.returning(dml, extra)
    return Capture(dml.op, dml.target.regclass, roles, ret is not None, "returning-old-new", known)
