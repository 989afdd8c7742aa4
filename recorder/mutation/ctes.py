"""Capturing data-modifying statements inside WITH (writable CTEs).

A writable CTE's rows cannot be appended to the statement's result: that result is
the outer query's. But PostgreSQL runs every data-modifying CTE to completion and
computes its RETURNING list for every row, whether or not anything reads the CTE.
So each returned row appends its capture (the values the statement forms of
:mod:`.forms` return, as one JSON array led by the CTE's number) to a
transaction-local custom setting, and the proxy reads that setting back right
after the statement with a statement of its own (spliced into a simple Query, or
its own Parse/Bind/Execute in the extended protocol) that also empties it.
Custom settings are not listed by ``SHOW ALL`` or ``pg_settings``, and
``is_local`` reverts them at the transaction's end (a failed statement's, with it).

The extra returned column is hidden from the statement by renaming the CTE and
putting a wrapper with the original name in its place that selects exactly the
client's columns under their original names (:mod:`.withclause` names them)::

    w__flux(c1, ..., cN, x) AS (UPDATE ... RETURNING <client's list>, <side effect>),
    w AS (SELECT c1 AS "name1", ..., cN AS "nameN" FROM w__flux)

Types, type modifiers and the table/column origin the RowDescription reports pass
through the wrapper unchanged. A CTE without RETURNING just gets one. A ``*`` (or
``t.*``, ``old.*``) is not expanded from the cached column list, which a column added
behind the sidecar's back would make stale: it returns the whole row, ``t``, and the
wrapper expands it again, ``(c1).*``, with the row type the server knows at that
moment. The expanded columns keep names, types and modifiers but lose their origin,
so a statement whose result returns a plain column reference (where that origin is
reported) runs as sent when one of its CTEs has a ``*``.
Before PostgreSQL 18 an UPDATE's locking CTE (:mod:`.locking`) goes in a WITH of the
CTE's own, where its names cannot meet those of the outer statement's.

Appending to a setting copies it, so captures go to numbered chunk settings and are
bounded: a counter setting holds their weight (bytes, plus a fixed amount per row);
past :data:`MAX_WEIGHT` nothing more is appended and the capture is marked truncated.
A CTE on a table whose identity is not known yet runs as sent, and the read-back
carries the catalog lookup for it (:func:`readback_sql`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from typing import Final

from .analyze import Dml, StatementInfo
from .capture import StatementCapture
from .identity import TableIdentity, lookup_sql
from .nodes import quote_ident
from .splice import (
    IDENTITY,
    TEXT,
    Capture,
    Form,
    Lookup,
    NeedIdentity,
    Out,
    StatementPlan,
    Unsupported,
    plan_dml,
)
from .withclause import STAR, WritableCte

ROWS: Final = "flux.cte_rows_"  # + chunk number: the captured rows, one JSON array a line
WEIGHT: Final = "flux.cte_weight"  # their weight so far (see MAX_WEIGHT)
ROW_WEIGHT: Final = 64  # what a row weighs beyond its bytes: bounds the rows too
MAX_WEIGHT: Final = 512 * 1024  # at most 128 chunks
# Rows go to the chunk numbered weight-so-far // CHUNK: an append copies one chunk, not
# everything captured before it (setting a long value is slow, on PostgreSQL 18 above all).
CHUNK: Final = 4096
_WEIGHT_NOW: Final = (
    f"COALESCE(NULLIF(pg_catalog.current_setting('{WEIGHT}', true), ''), '0')::pg_catalog.int8"
)
_CHUNKS: Final = f"pg_catalog.generate_series(0, __flux_w.w / {CHUNK}) AS __flux_g"
_CHUNK_NAME: Final = f"pg_catalog.concat('{ROWS}', __flux_g)"
# The rows, their weight, then every setting emptied (in that order: a target list is
# evaluated left to right).
READBACK: Final = (
    f"SELECT (SELECT pg_catalog.string_agg(pg_catalog.current_setting({_CHUNK_NAME}, true), "
    f"'' ORDER BY __flux_g) FROM {_CHUNKS}), __flux_w.w::pg_catalog.text, (SELECT "
    f"pg_catalog.count(pg_catalog.set_config({_CHUNK_NAME}, '', true)) FROM {_CHUNKS}) + "
    f"pg_catalog.length(pg_catalog.set_config('{WEIGHT}', '', true)){{lookups}} FROM (SELECT "
    f"{_WEIGHT_NOW} AS w OFFSET 0) AS __flux_w"
)
UNKNOWN: Final = "identity-unknown"


def side_effect(index: int, values: list[str]) -> str:
    """One returned column that appends the row's capture to :data:`ROWS` (a boolean).
    Past the bound a row only reads the weight: its capture is not even built."""
    row = f"pg_catalog.json_build_array({index}, {', '.join(values)}){TEXT}"
    fits = f"__flux_w.w + __flux_j.l <= {MAX_WEIGHT}"
    append = (
        "pg_catalog.set_config(__flux_j.chunk, pg_catalog.concat(pg_catalog.current_setting("
        "__flux_j.chunk, true), __flux_j.x, E'\\n'), true)"
    )
    count = (
        f"pg_catalog.set_config('{WEIGHT}', (CASE WHEN {fits} THEN __flux_w.w + __flux_j.l "
        f"ELSE {MAX_WEIGHT + 1} END){TEXT}, true)"
    )
    return (
        f"(SELECT CASE WHEN __flux_w.w > {MAX_WEIGHT} THEN false ELSE (SELECT "
        f"pg_catalog.num_nulls(CASE WHEN {fits} THEN {append} END, {count}) > 0 FROM (SELECT "
        f"__flux_x.x, pg_catalog.octet_length(__flux_x.x) + {ROW_WEIGHT} AS l, pg_catalog.concat("
        f"'{ROWS}', __flux_w.w / {CHUNK}) AS chunk FROM (SELECT "
        f"{row} AS x) AS __flux_x OFFSET 0) AS __flux_j) END FROM (SELECT {_WEIGHT_NOW} AS w "
        "OFFSET 0) AS __flux_w)"
    )


def with_ctes(
    out: Out,
    info: StatementInfo,
    cursor: int,
    *,
    server_major: int,
    lookup: Lookup,
    form: Form,
    readback: bool,
) -> list[StatementPlan]:
    """Plans a statement with writable CTEs: its plan and, with ``readback`` (a simple
    Query), the plan of the read-back statement spliced in after it. An empty list: it
    runs unchanged and nothing was written to ``out``; else ``out`` holds the text up to
    ``info.end`` (and the read-back)."""
    try:
        plan = _plan(out, info, cursor, server_major, lookup, form)
    except Unsupported as exc:
        reason = str(exc)
        return [StatementPlan(uncaptured=reason if "cte" in reason else f"writable-cte-{reason}")]
    if not readback:
        return [plan]
    out.add(f"; {readback_sql(plan.ctes, server_major)}")
    return [plan, StatementPlan(readback=plan.ctes)]


def readback_sql(ctes: tuple[Capture, ...], server_major: int) -> str:
    """Our statement that reads the rows back: the rows, their weight, a count, then the
    catalog lookup of each CTE's table whose identity was not known (see :func:`_render`)."""
    lookups = "".join(
        f", {lookup_sql(c.relation, server_major)}" for c in ctes if IDENTITY in c.roles
    )
    return READBACK.format(lookups=lookups)


def _plan(
    out: Out, info: StatementInfo, cursor: int, server_major: int, lookup: Lookup, form: Form
) -> StatementPlan:
    patches, captures = _render(out.source, info, server_major, lookup, form)
    out.copy(cursor, info.start)
    out.patches = patches
    try:
        dml = info.dml
        if dml is None:
            out.copy(info.start, info.end)
            return StatementPlan(ctes=captures)
        plan = plan_dml(out, info, dml, server_major, form)
        if plan.capture is None:
            out.copy(info.start, info.end)  # as sent, its CTEs rewritten
        return replace(plan, ctes=captures)
    finally:
        out.patches = []


def _render(
    sql: str, info: StatementInfo, server_major: int, lookup: Lookup, form: Form
) -> tuple[list[tuple[int, int, Out]], tuple[Capture, ...]]:
    """Each writable CTE as it runs: (start, end, text) spans of ``sql`` to replace."""
    patches: list[tuple[int, int, Out]] = []
    captures: list[Capture] = []
    for cte in info.ctes:
        if cte.problem:
            raise Unsupported(cte.problem)
        if cte.items is None and cte.referenced:
            raise Unsupported("writable-cte-read-without-returning")  # the server says why
        dml = cte.dml
        inner = StatementInfo(cte.body[0], cte.body[1], dml=dml)
        known = lookup(dml.target.regclass)
        if not isinstance(known, TableIdentity):
            try:
                form(Out(sql), inner, dml)  # raises the reason: unknown, skipped...
            except NeedIdentity:
                # It runs as sent; the read-back learns its table's identity (from the
                # catalog only) so that the next statement on it is captured.
                captures.append(Capture(dml.op, dml.target.regclass, (IDENTITY,), False,
                                        "identity-only", None, UNKNOWN))  # fmt: skip
                continue
            raise Unsupported(UNKNOWN)
        text = Out(sql)
        text.columns = functools.partial(side_effect, len(captures))
        if cte.items is None:
            text.copy(cte.head[0], cte.body[0])
            captures.append(form(text, inner, dml))
            text.copy(cte.body[1], cte.close)
        else:
            columns = _columns(cte, dml, known, server_major)
            hidden = f"__flux_cte{len(captures)}"
            aliases = [f"__flux_c{i}" for i in range(len(columns))]
            text.add(f"{hidden}({', '.join([*aliases, '__flux_x'])}) ")
            # Each * returns the whole row instead, expanded again by the wrapper: the
            # row type is the table's as the server knows it now, not as the cache does.
            text.patches = [
                (*item.span, _added(row))
                for item, (row, _) in zip(cte.items, columns, strict=True)
                if item.span and row
            ]
            text.copy(cte.head[1], cte.body[0])
            captures.append(form(text, inner, dml))
            text.patches = []
            text.copy(cte.body[1], cte.close)
            text.add(", ")
            text.copy(*cte.head)
            listed = ", ".join(
                f"({c}).*" if star else (c if name is None else f"{c} AS {quote_ident(name)}")
                for c, (star, name) in zip(aliases, columns, strict=True)
            )
            text.add(f" AS (SELECT {listed} FROM {hidden})")
        patches.append((cte.head[0], cte.close, text))
    return patches, tuple(captures)


def _columns(
    cte: WritableCte, dml: Dml, known: TableIdentity, server_major: int
) -> list[tuple[str | None, str | None]]:
    """Per RETURNING item: (the whole-row reference a ``*`` becomes, None) or (None, the
    column's name, None when the client's alias list names it)."""
    assert cte.items is not None
    ret = dml.returning
    own = {dml.target.ref}
    if server_major >= 18:
        own |= {ret.old or "old", ret.new or "new"} if ret is not None else {"old", "new"}
    stars = any(item.name == STAR for item in cte.items)
    if stars and cte.exposed:
        # The statement's result would report no table and column for the expanded
        # columns, where the client's reports them.
        raise Unsupported("writable-cte-star-returned")
    columns: list[tuple[str | None, str | None]] = []
    for n, item in enumerate(cte.items):
        if item.name != STAR:
            named = not stars and n < cte.aliases
            if not item.name and not named:
                raise Unsupported("writable-cte-unnamed-column")  # the alias list names none
            columns.append((None, None if named else item.name))
            continue
        if item.ref is None and dml.from_span is not None:
            raise Unsupported("writable-cte-star-over-from")
        row = dml.target.ref if item.ref is None else quote_ident(item.ref)
        if row not in own or item.span is None:
            raise Unsupported("writable-cte-star-over-from")
        if row.strip('"') in known.columns:
            raise Unsupported("writable-cte-star-ambiguous")  # a column has the row's name
        columns.append((row, None))
    return columns


def _added(text: str) -> Out:
    out = Out("")
    out.add(text)
    return out


def read_back(
    captures: tuple[Capture, ...],
    values: tuple[bytes | None, ...],
    *,
    index: int,
) -> list[StatementCapture]:
    """The captures of one statement's writable CTEs from the values of the row
    :func:`readback_sql` returned."""
    rows, weight, lookups = values[0], values[1], iter(values[3:])
    found: list[list[tuple[bytes | None, ...]]] = [
        [(next(lookups, None),)] if IDENTITY in c.roles else [] for c in captures
    ]
    for line in (rows or b"").decode("utf-8", "replace").splitlines():
        item = json.loads(line)
        number = int(item[0])
        if 0 <= number < len(found):
            found[number].append(tuple(None if v is None else str(v).encode() for v in item[1:]))
    truncated = weight is not None and weight.isdigit() and int(weight) > MAX_WEIGHT
    out: list[StatementCapture] = []
    for n, c in enumerate(captures):
        identity = None if c.identity is None else tuple(c.identity.to_wire())
        out.append(
            StatementCapture(index=index, op=c.op, relation=c.relation, roles=c.roles,
                             rows=tuple(found[n]), identity=identity, uncaptured=c.uncaptured,
                             form=f"writable-cte/{c.form}", tag="", truncated=truncated)
        )  # fmt: skip
    return out


__all__ = ["read_back", "readback_sql", "side_effect", "with_ctes"]
