"""Where the clauses of a MERGE are: its source, its ON condition and each WHEN clause.

The parse tree gives the WHEN clauses in order but no position for them (and an
expression's location is that of its operator, not its first character), so the
clauses are found among the statement's tokens at bracket depth 0: a WHEN starts
a clause unless a CASE expression is open (CASE ... WHEN ... THEN ... END), and
the clause's condition runs from the AND after [NOT] MATCHED [BY SOURCE|TARGET]
to the THEN that closes it. The ON of the merge condition is the last ON before
the first clause (an ON of a join in the source comes before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .nodes import target_names, unwrap
from .safety import deterministic
from .tokens import Statement, Token

_MATCH: Final = {
    "MERGE_WHEN_MATCHED": "matched",
    "MERGE_WHEN_NOT_MATCHED_BY_TARGET": "not-matched-by-target",
    "MERGE_WHEN_NOT_MATCHED_BY_SOURCE": "not-matched-by-source",
}
_ACTION: Final = {
    "CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert",
    "CMD_NOTHING": "nothing",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class When:
    match: str  # matched, not-matched-by-target, not-matched-by-source
    action: str  # update, delete, insert, nothing
    after_match: int  # end of [NOT] MATCHED [BY SOURCE|TARGET]: where a condition goes
    condition: tuple[int, int] | None  # the expression after AND
    set_columns: tuple[str, ...] = ()  # UPDATE SET: the columns it assigns


@dataclass(frozen=True, slots=True)
class Merge:
    using: int  # the USING keyword: where the target as written ends
    source: tuple[int, int]  # USING ... as written, alias included
    source_name: str | None  # the source's alias or relation name
    on: tuple[int, int]  # the join condition
    clauses: tuple[When, ...]
    # Source, ON and the WHEN MATCHED conditions give the same answer when evaluated twice.
    deterministic: bool


class MergeShapeError(ValueError):
    """The clauses could not be located in the text (the statement runs uncaptured)."""


def merge(node: dict[str, Any], toks: Statement, after: int, clause_end: int) -> Merge:
    """The spans of a MergeStmt whose target (the relation) ends before ``after``."""
    using = toks.first("USING", after=after, before=clause_end)
    if using is None:
        raise MergeShapeError("no USING")
    starts = _clause_starts(toks, using.end, clause_end)
    raw = [unwrap(c)[1] for c in node.get("mergeWhenClauses", ())]
    if not starts or len(starts) != len(raw):
        raise MergeShapeError("WHEN clauses")
    on = toks.last("ON", after=using.end, before=starts[0].start)
    if on is None:
        raise MergeShapeError("no ON")
    clauses: list[When] = []
    bounds = [*(t.start for t in starts[1:]), clause_end]
    for word, end, fields in zip(starts, bounds, raw, strict=True):
        clauses.append(_when(toks, word, end, fields))
    source = node.get("sourceRelation")
    kind, source_fields = unwrap(source)
    name = (source_fields.get("alias") or {}).get("aliasname")
    if name is None and kind == "RangeVar":
        name = source_fields.get("relname")
    matched = [
        unwrap(c)[1].get("condition")
        for c in node.get("mergeWhenClauses", ())
        if unwrap(c)[1].get("matchKind") == "MERGE_WHEN_MATCHED"
    ]
    return Merge(
        using=using.start,
        source=(using.end, on.start),
        source_name=None if name is None else str(name),
        on=(on.end, starts[0].start),
        clauses=tuple(clauses),
        deterministic=deterministic([source, node.get("joinCondition"), matched]),
    )


def _clause_starts(toks: Statement, after: int, before: int) -> list[Token]:
    """The WHEN tokens that start a clause: depth 0, no CASE open."""
    cases = 0
    found: list[Token] = []
    for t in toks.tokens:
        if t.start < after or t.depth != toks.base:
            continue
        if t.start >= before:
            break
        if t.name == "CASE":
            cases += 1
        elif t.name == "END_P":
            cases -= 1
        elif t.name == "WHEN" and cases == 0:
            found.append(t)
    return found


def _when(toks: Statement, word: Token, end: int, fields: dict[str, Any]) -> When:
    mine = [t for t in toks.tokens if word.end <= t.start < end and t.depth == toks.base]
    match = _MATCH.get(str(fields.get("matchKind")))
    action = _ACTION.get(str(fields.get("commandType")))
    if match is None or action is None:
        raise MergeShapeError("clause kind")
    # [NOT] MATCHED [BY SOURCE|TARGET]
    position = 0
    while position < len(mine) and mine[position].name in ("NOT", "MATCHED", "BY"):
        position += 1
    if position < len(mine) and mine[position].name in ("SOURCE", "TARGET"):
        position += 1
    if position == 0 or position >= len(mine):
        raise MergeShapeError("MATCHED")
    after_match = mine[position - 1].end
    condition = None
    then = _then(mine[position:])
    if then is None:
        raise MergeShapeError("THEN")
    if mine[position].name == "AND":
        if fields.get("condition") is None:
            raise MergeShapeError("AND")
        condition = (mine[position].end, then.start)
    elif mine[position] is not then or fields.get("condition") is not None:
        raise MergeShapeError("condition")
    columns = target_names(fields.get("targetList")) if action == "update" else ()
    return When(match, action, after_match, condition, columns)


def _then(tokens: list[Token]) -> Token | None:
    cases = 0
    for t in tokens:
        if t.name == "CASE":
            cases += 1
        elif t.name == "END_P":
            cases -= 1
        elif t.name == "THEN" and cases == 0:
            return t
    return None
