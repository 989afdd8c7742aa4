"""MERGE on PostgreSQL 17: ``MERGE ... RETURNING`` and ``merge_action()``, no OLD/NEW.

In RETURNING the target's columns are the new row for INSERT and UPDATE and the
old row for DELETE, so only an UPDATE's before image is missing. It is read as
for UPDATE (:mod:`.locking`): a CTE locks the rows the WHEN MATCHED ... UPDATE
clauses will change and folds their images into one jsonb map, key -> [image,
version], where each updated row finds its before image by a key that no UPDATE
action changes (the identity when none assigns a key column, else the columns no
UPDATE action assigns).

Which rows: the CTE joins the target and the source as written on the ON
condition and keeps, per matched pair, the outcome of the WHEN MATCHED clauses in
their order, ``CASE WHEN (c1) THEN true WHEN (c2) THEN false ... ELSE false END``
(true for UPDATE, false for DELETE and DO NOTHING; an unconditional clause is
``WHEN true``), as MERGE picks the first clause whose condition holds. It locks
no row that MERGE does not update: a DELETE takes its own lock (FOR UPDATE's)
when it deletes the row, and RETURNING gives the deleted row, so locking it
earlier would only strengthen a lock the UPDATE rows do not need. The lock is
the one MERGE's UPDATE takes (ExecUpdate through ExecUpdateLockMode): FOR UPDATE
when an UPDATE action assigns a key column, else FOR NO KEY UPDATE; a stronger
one would make a concurrent foreign-key check (FOR KEY SHARE) wait. Under READ
COMMITTED the lock waits for concurrent writers and re-checks the CTE's
condition on the latest version, which is the version MERGE's own re-check then
updates, already locked by this statement. (A row a concurrent writer moved from
a DELETE or DO NOTHING outcome to UPDATE is updated with no before image.)

MERGE has no WHERE: every UPDATE clause gets the gate ``CASE WHEN (SELECT
count(*) FROM __flux_old) >= 0 THEN (condition) ELSE false END`` as its
condition, an uncorrelated subquery run once when the first matched row reaches
an UPDATE clause, before that row changes (rows that DELETE or INSERT clauses
changed before then are not among those the CTE locks).

Source, ON and the WHEN MATCHED conditions run twice, which is only done when
they are deterministic (:mod:`.safety`); the CTE evaluates the conditions in
their order through CASE, as MERGE does, and only on pairs ON matches (the CASE
checks ON first: a join's quals are evaluated in whatever order the planner
picks). WHEN NOT MATCHED BY SOURCE ... DELETE needs nothing (RETURNING gives the
deleted row; the CTE's join does not reach those rows); WHEN NOT MATCHED BY
SOURCE ... UPDATE would need a second CTE reading the rows no source row matches,
and runs uncaptured. A MERGE without a WHEN MATCHED ... UPDATE clause needs no
CTE at all.

The op of each row is ``merge_action()``: ``inserted`` tells an UPDATE whose
before image is missing from an INSERT.
"""

from __future__ import annotations

from .analyze import Dml, StatementInfo
from .identity import TableIdentity
from .locking import map_cte, stable_key
from .splice import (
    INSERTED,
    NEW,
    OLD,
    TEXT,
    Capture,
    Out,
    Unsupported,
    returning_joint,
    stamped,
    tail,
)

_GATE = "CASE WHEN (SELECT pg_catalog.count(*) FROM __flux_old) >= 0 THEN "
_DELETED = "merge_action() = 'DELETE'"


def merge(out: Out, info: StatementInfo, dml: Dml, known: TableIdentity) -> Capture:
    spans = dml.merge
    if spans is None:
        raise Unsupported("unlocated-merge-clause")
    if dml.returning is not None and dml.returning.options_close is not None:
        raise Unsupported("returning-with-before-pg18")
    clauses = spans.clauses
    if any(c.match == "not-matched-by-source" and c.action == "update" for c in clauses):
        raise Unsupported("merge-not-matched-by-source-update")
    ref = dml.target.ref
    image = f"pg_catalog.to_json({ref}){TEXT}"
    xmin = f"{ref}.xmin{TEXT}"
    new = f"CASE WHEN NOT {_DELETED} THEN {image} END"
    version_new = f"CASE WHEN NOT {_DELETED} THEN {xmin} END"
    matched = [c for c in clauses if c.match == "matched"]
    updates = [c for c in matched if c.action == "update"]
    if not updates:
        out.copy(info.start, info.end)
        old, form = f"CASE WHEN {_DELETED} THEN {image} END", "merge-returning"
        version_old = f"CASE WHEN {_DELETED} THEN {xmin} END"
    else:
        if not spans.deterministic:
            raise Unsupported("nondeterministic-merge")
        assigned = {column for c in updates for column in c.set_columns}
        row_key, form = stable_key(ref, known, assigned)
        form = "merge-" + form
        versioned = stamped(known)
        lock = "UPDATE" if assigned & set(known.key) else "NO KEY UPDATE"
        out.copy(info.start, dml.keyword)
        out.add(", " if dml.has_with else "WITH ")
        stamp = f", {xmin} AS __flux_xmin" if versioned else ""
        out.add(f"__flux_old AS (SELECT {row_key} AS __flux_k, {image} AS __flux_img{stamp} FROM ")
        out.copy(dml.target.start, dml.target.end)
        out.add(", ")
        out.copy(*spans.source)
        out.add(" WHERE (")
        out.copy(*spans.on)
        # The conditions only on pairs ON matches, as MERGE evaluates them: the planner
        # orders a join's quals by cost, and a condition that can fail (a division by
        # zero) must not meet a pair MERGE never looks at. The first ON stays the join
        # clause; the CASE repeats it in front of the conditions.
        out.add(") AND CASE WHEN (")
        out.copy(*spans.on)
        out.add(") IS NOT TRUE THEN false")
        for clause in matched:
            out.add(" WHEN ")
            if clause.condition is None:
                out.add("true")
            else:
                out.add("(")
                out.copy(*clause.condition)
                out.add(")")
            out.add(" THEN true" if clause.action == "update" else " THEN false")
        out.add(f" ELSE false END FOR {lock} OF {ref}), {map_cte(versioned)} ")
        cursor = dml.keyword
        for clause in updates:
            if clause.condition is None:
                out.copy(cursor, clause.after_match)
                out.add(f" AND {_GATE}true ELSE false END")
                cursor = clause.after_match
            else:
                start, end = clause.condition
                out.copy(cursor, start)
                out.add(f" {_GATE}(")
                out.copy(start, end)
                out.add(") ELSE false END ")
                cursor = end
        out.copy(cursor, info.end)
        entry = f"((SELECT __flux_m FROM __flux_map) -> {row_key})"
        old = (
            f"CASE merge_action() WHEN 'UPDATE' THEN ({entry} ->> 0) WHEN 'DELETE' THEN {image} END"
        )
        version_old = (
            f"CASE merge_action() WHEN 'UPDATE' THEN ({entry} ->> 1) WHEN 'DELETE' THEN {xmin} END"
        )
    roles, extra = tail(dml, known, (OLD, NEW), [old, new], (version_old, version_new))
    # The op per row, even for an UPDATE whose before image is missing.
    roles, extra = (*roles, INSERTED), [*extra, f"(merge_action() = 'INSERT'){TEXT}"]
    out.add(returning_joint(dml) + ", ".join(extra))
    return Capture("merge", dml.target.regclass, roles, dml.returning is not None, form, known)
