"""Before PostgreSQL 18: the before image of an UPDATE (and of INSERT ... ON CONFLICT DO
UPDATE) read in the same statement, through a CTE that locks the target rows first.

UPDATE. The CTE selects the rows the client's WHERE (and FROM) picks, ``FOR NO KEY
UPDATE`` (the lock the UPDATE itself takes; ``FOR UPDATE`` when it assigns a key
column): under READ COMMITTED the lock waits for concurrent writers and yields the
latest version of each row, which is the version the UPDATE then modifies. The
UPDATE keeps its own WHERE and FROM, so which rows it changes is decided exactly as
without capture, and it is not joined to the CTE: a join back on ctid or on the key
would compare the CTE's latest versions with the snapshot versions the UPDATE scans,
and drop a row a concurrent transaction changed (its key, or any column when the
whole row is the key) before the UPDATE reached it. Instead the CTE's rows are
folded into one jsonb object, key → [before image, version], and each returned row
finds its before image there by its key. The key must be the same before and after
the change: the row identity when the statement assigns none of its columns, else
the columns the statement does not assign (and that are not generated), which a
BEFORE UPDATE trigger could change, so then it runs uncaptured. Keys that several
distinct rows share get no before image rather than a wrong one. (A BEFORE UPDATE
trigger that rewrites the primary key itself is not detected: its rows get no before
image, or another changed row's if the new key is that row's old one.)

A condition that is always true, ``(SELECT true FROM __flux_map)``, makes the CTE run
before the first row is changed: it has no reference to the row, so PostgreSQL
evaluates it once, before the scan (or at the first row). The client's WHERE and
FROM run twice (CTE and UPDATE), which is only done when they are deterministic
(:mod:`.safety`).
"""

from __future__ import annotations

from .analyze import Dml, StatementInfo
from .capture import MAX_CAPTURE_BYTES
from .identity import TableIdentity, quote_literal
from .keyrow import by_key, row_cte, row_entries
from .nodes import quote_ident
from .splice import (
    INSERTED,
    NEW,
    OLD,
    TEXT,
    Capture,
    Out,
    Unsupported,
    stamped,
    tail,
)


def update(out: Out, info: StatementInfo, dml: Dml, known: TableIdentity) -> Capture:
    if not dml.deterministic:
        raise Unsupported("nondeterministic-where")
    target = dml.target
    ref = target.ref
    assigned = set(dml.set_columns)
    row_key, form = stable_key(ref, known, assigned)
    one = form == "cte-key" and by_key(out.source, dml, known)  # one row: see .keyrow
    versioned = stamped(known)
    lock = "UPDATE" if assigned & set(known.key) else "NO KEY UPDATE"
    # WITH [client CTEs,] __flux_old AS (SELECT key, image FROM target [, from] [WHERE ...]
    #   FOR ... UPDATE OF ref), __flux_map AS (one jsonb object: key -> [image, version])
    out.copy(info.start, dml.keyword)
    out.add(", " if dml.has_with else "WITH ")
    xmin = f", {ref}.xmin{TEXT} AS __flux_xmin" if versioned else ""
    key = "" if one else f"{row_key} AS __flux_k, "
    out.add(f"__flux_old AS (SELECT {key}pg_catalog.to_json({ref}){TEXT} "
            f"AS __flux_img{xmin} FROM ")  # fmt: skip
    out.copy(target.start, target.end)
    if dml.from_span is not None:
        out.add(", ")
        out.copy(*dml.from_span)
    if dml.where is not None:
        out.add(" WHERE ")
        out.copy(*dml.where)
    out.add(f" FOR {lock} OF {ref}), {row_cte(versioned) if one else map_cte(versioned)} ")
    # UPDATE target SET ... [FROM ...] WHERE [(where) AND] (SELECT true FROM __flux_map)
    where_end = dml.where[1] if dml.where is not None else (
        dml.from_span[1] if dml.from_span is not None else dml.set_end
    )  # fmt: skip
    if dml.where is not None:
        out.copy(dml.keyword, dml.where[0])
        out.add(" (")
        out.copy(*dml.where)
        out.add(") AND")
    else:
        out.copy(dml.keyword, where_end)
        out.add(" WHERE")
    out.add(" (SELECT true FROM __flux_map)" + (" " if where_end < info.end else ""))
    out.copy(where_end, info.end)
    entry = f"((SELECT __flux_m FROM __flux_map) -> {row_key})"
    old, old_version = row_entries() if one else (f"({entry} ->> 0)", f"({entry} ->> 1)")
    values = [old, f"pg_catalog.to_json({ref}){TEXT}"]
    versions = (old_version, f"{ref}.xmin{TEXT}")
    roles, extra = tail(dml, known, (OLD, NEW), values, versions)
    out.returning(dml, extra)
    return Capture("update", target.regclass, roles, dml.returning is not None, form, known)


def stable_key(ref: str, known: TableIdentity, assigned: set[str]) -> tuple[str, str]:
    """A row key that is the same before and after the change (see above), and its form."""
    if known.key and not (assigned | set(known.generated)) & set(known.key):
        columns = ", ".join(f"{ref}.{quote_ident(k)}" for k in known.key)
        return f"pg_catalog.jsonb_build_array({columns}){TEXT}", "cte-key"
    if known.update_triggers:
        raise Unsupported("no-stable-row-key")
    dropped = sorted(assigned | set(known.generated))
    names = ", ".join(quote_literal(c) for c in dropped)
    array = f"ARRAY[{names}]::pg_catalog.text[]" if dropped else "'{}'::pg_catalog.text[]"
    return f"(pg_catalog.to_jsonb({ref}) - {array}){TEXT}", "cte-unassigned-columns"


def map_cte(versioned: bool) -> str:
    """``__flux_map``: __flux_old's rows as one jsonb object, key -> [image, version];
    a key several distinct rows share gets none, and images past the byte bound stop it."""
    version = ", pg_catalog.min(__flux_xmin)" if versioned else ""
    return (
        "__flux_map AS (SELECT pg_catalog.jsonb_object_agg(__flux_k, "
        "__flux_v) AS __flux_m FROM (SELECT __flux_k, CASE WHEN pg_catalog.count(DISTINCT "
        "__flux_img) = 1 THEN pg_catalog.jsonb_build_array(pg_catalog.min(__flux_img)"
        f"{version}) END AS __flux_v, pg_catalog.sum(pg_catalog.sum(pg_catalog.octet_length("
        "__flux_img))) OVER (ROWS UNBOUNDED PRECEDING) AS __flux_n FROM __flux_old GROUP BY "
        f"__flux_k) AS __flux_g WHERE __flux_n <= {MAX_CAPTURE_BYTES})"
    )


def upsert(out: Out, info: StatementInfo, dml: Dml, known: TableIdentity) -> Capture:
    """INSERT ... ON CONFLICT (columns) DO UPDATE with VALUES: the CTE locks the rows
    the VALUES would conflict with (the lock DO UPDATE takes) and reads their images."""
    clause = dml.upsert
    assert clause is not None
    if clause.conflict is None or clause.rows is None:
        raise Unsupported("upsert-shape")
    if set(clause.set_columns) & set(clause.conflict):
        raise Unsupported("upsert-assigns-conflict-columns")  # its rows would not be found
    columns = clause.insert_columns or known.columns
    if not set(clause.conflict) <= set(columns[: len(clause.rows[0])]):
        raise Unsupported("upsert-conflict-column-not-inserted")
    positions = [columns.index(c) for c in clause.conflict]
    if not all(safe[i] for safe in clause.safe for i in positions):
        raise Unsupported("nondeterministic-values")
    ref = dml.target.ref
    cols = [f"{ref}.{quote_ident(c)}" for c in clause.conflict]
    # __flux_old AS (SELECT conflict columns, image FROM target WHERE (cols) IN (values...)
    #   FOR UPDATE OF ref): ON CONFLICT DO UPDATE takes that same lock.
    out.copy(info.start, dml.keyword)
    out.add(", " if dml.has_with else "WITH ")
    keys = ", ".join(f"{c} AS __flux_k{i}" for i, c in enumerate(cols))
    if stamped(known):
        keys += f", {ref}.xmin AS __flux_xmin"
    out.add(f"__flux_old AS (SELECT {keys}, pg_catalog.to_json({ref}){TEXT} AS __flux_img FROM ")
    out.add(f"{dml.target.regclass} AS {ref} WHERE ({', '.join(cols)}) IN (")
    for n, row in enumerate(clause.rows):
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
    if clause.where is not None:
        out.copy(dml.keyword, clause.where[0])
        out.add(f" {gate}(")
        out.copy(*clause.where)
        out.add(") ELSE false END ")
        cursor = clause.where[1]
    else:
        out.copy(dml.keyword, clause.action_end)
        out.add(f" WHERE {gate}true ELSE false END ")
        cursor = clause.action_end
    out.copy(cursor, info.end)
    match = " AND ".join(f"__flux_old.__flux_k{i} = {c}" for i, c in enumerate(cols))
    values = [
        f"(SELECT __flux_old.__flux_img FROM __flux_old WHERE {match} LIMIT 1)",
        f"pg_catalog.to_json({ref}){TEXT}",
    ]
    versions = (
        f"(SELECT __flux_old.__flux_xmin{TEXT} FROM __flux_old WHERE {match} LIMIT 1)",
        f"{ref}.xmin{TEXT}",
    )
    roles, extra = tail(dml, known, (OLD, NEW), values, versions)
    if stamped(known):
        # xmax = 0: inserted, not updated; tells an update whose before image the CTE could
        # not see (a row a concurrent transaction inserted) from an insert.
        extra.append(f"({ref}.xmax{TEXT} = '0'){TEXT}")
        roles = (*roles, INSERTED)
    out.returning(dml, extra)
    return Capture(
        "insert", dml.target.regclass, roles, dml.returning is not None, "cte-upsert", known
    )
