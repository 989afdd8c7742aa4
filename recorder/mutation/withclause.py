"""Data-modifying statements inside WITH (writable CTEs): where they are, and the names
of the columns their RETURNING yields.

A writable CTE's rows can only be captured by a side effect of its RETURNING (see
:mod:`.ctes`), which means one more returned column, which a wrapper CTE hides again:
the wrapper must then name every column exactly as PostgreSQL would have, so the
names are worked out here with PostgreSQL's own rules (``FigureColname``) for the
expressions they cover, and anything else is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .nodes import Offsets, unwrap
from .safety import walk
from .tokens import Statement as Tokens

if TYPE_CHECKING:
    from .analyze import Dml

_OPS: Final = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
STAR: Final = "*"  # a returned item that expands to every column of ``Item.ref``
# Expressions whose column name is a fixed word (parse_target.c, FigureColnameInternal).
_FIXED: Final = {"CaseExpr": "case", "A_ArrayExpr": "array", "RowExpr": "row",
                 "CoalesceExpr": "coalesce", "GroupingFunc": "grouping"}  # fmt: skip
_UNNAMED: Final = frozenset({"A_Const", "A_Expr", "BoolExpr", "NullTest", "BooleanTest",
                             "ParamRef"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a RETURNING list: its column name, or STAR with the range it expands."""

    name: str  # "": PostgreSQL's name for it is not worked out here
    ref: str | None = None  # STAR: the qualifier as written (lower case), None for bare *
    span: tuple[int, int] | None = None  # STAR: the item's text (``*`` or ``ref.*``)


@dataclass(frozen=True, slots=True)
class WritableCte:
    index: int  # which writable CTE of the statement, from 0
    name: str  # as the catalog spells it
    head: tuple[int, int]  # the CTE's name and column alias list as written
    aliases: int  # how many columns the alias list names
    body: tuple[int, int]  # the statement inside the brackets
    close: int  # just after the closing bracket
    dml: Dml
    items: tuple[Item, ...] | None  # None: no RETURNING
    referenced: bool  # another part of the statement reads it
    problem: str | None = None  # why it cannot be captured
    # The statement's result has a column read straight from a relation (a CTE's too):
    # its RowDescription then names that column's table and number, which a whole-row
    # expansion of the CTE's ``*`` would not (see :mod:`.ctes`).
    exposed: bool = True


DmlReader = Callable[[str, dict[str, Any], Tokens, Offsets], "Dml"]


def writable_ctes(
    fields: dict[str, Any], toks: Tokens, chars: Offsets, read: DmlReader
) -> tuple[tuple[WritableCte, ...], str | None]:
    """The statement's writable CTEs, or why none of them can be captured."""
    clause = fields.get("withClause") or {}
    found: list[WritableCte] = []
    exposed = _exposes_columns(fields)
    for node in clause.get("ctes", ()):
        cte = unwrap(node)[1]
        kind, body = unwrap(cte.get("ctequery"))
        if kind not in _OPS:
            continue
        if kind == "MergeStmt":
            return (), "writable-cte-merge"
        if clause.get("recursive"):
            return (), "writable-cte-recursive"
        if body.get("withClause") is not None:
            return (), "writable-cte-nested-with"
        located = _locate(toks, chars(cte.get("location", 0)))
        if located is None:
            return (), "writable-cte-unlocated"
        head, span, close = located
        inner = Tokens(toks.tokens, span[0], span[1])
        dml = read(kind, body, inner, chars)
        name = str(cte.get("ctename", ""))
        items = _items(body, inner, chars) if body.get("returningClause") is not None else None
        # Read by the outer query or another CTE (conservatively: any unqualified use of its name).
        elsewhere = [v for k, v in fields.items() if k != "withClause"]
        elsewhere += [c for c in clause.get("ctes", ()) if c is not node]
        referenced = any(
            k == "RangeVar" and f.get("relname") == name and not f.get("schemaname")
            for k, f in walk(elsewhere)
        )
        found.append(
            WritableCte(len(found), name, head, len(cte.get("aliascolnames", ())), span, close,
                        dml, items, referenced, dml.problem, exposed)
        )  # fmt: skip
    return tuple(found), None


def _exposes_columns(fields: dict[str, Any]) -> bool:
    """Whether the statement returns a column that is a plain column reference (whose
    origin its RowDescription reports); conservatively yes for set operations."""
    if fields.get("returningClause") is not None or fields.get("returningList") is not None:
        return True
    if fields.get("op") not in (None, "SETOP_NONE"):
        return True
    return any(
        unwrap(unwrap(t)[1].get("val"))[0] == "ColumnRef" for t in fields.get("targetList", ())
    )


def _locate(toks: Tokens, name_at: int) -> tuple[tuple[int, int], tuple[int, int], int] | None:
    """(the name and alias list, the body inside the brackets, the end of the closing
    bracket) of the CTE named at ``name_at``."""
    name = toks.next_token(name_at)
    if name is None:
        return None
    after = toks.next_token(name.end)
    head_end = name.end
    if after is not None and after.name == "ASCII_40":  # (alias, ...)
        _, close = toks.groups(after)
        if close is None:
            return None
        head_end = close.end
    word = toks.next_token(head_end)
    if word is None or word.name != "AS":
        return None
    opener = toks.next_token(word.end)
    while opener is not None and opener.name in ("NOT", "MATERIALIZED"):
        opener = toks.next_token(opener.end)
    if opener is None or opener.name != "ASCII_40":
        return None
    _, close = toks.groups(opener)
    if close is None:
        return None
    first = toks.next_token(opener.end)
    last = toks.previous_token(close.start)
    if first is None or last is None:
        return None
    return (name.start, head_end), (first.start, last.end), close.end


def _items(body: dict[str, Any], toks: Tokens, chars: Offsets) -> tuple[Item, ...]:
    exprs = body["returningClause"].get("exprs", ())
    return tuple(_item(unwrap(t)[1], toks, chars) for t in exprs)


def _item(target: dict[str, Any], toks: Tokens, chars: Offsets) -> Item:
    if target.get("name"):
        return Item(str(target["name"]))
    kind, value = unwrap(target.get("val"))
    if kind == "ColumnRef":
        fields = [unwrap(f) for f in value.get("fields", ())]
        if fields and fields[-1][0] == "A_Star":
            ref = fields[-2][1].get("sval") if len(fields) >= 2 else None
            start = chars(value.get("location", 0))
            star = toks.next_token(start)
            while star is not None and star.name != "ASCII_42":
                star = toks.next_token(star.end)
            span = None if star is None else (start, star.end)
            return Item(STAR, None if ref is None else str(ref), span)
    return Item(figure_colname(target.get("val")) or "")


def figure_colname(node: Any) -> str | None:
    """The column name PostgreSQL gives an unnamed expression; None where the rules are
    not implemented here (the caller refuses it)."""
    name, strength = _figure(node)
    if strength == 0:
        return "?column?" if name is None else None
    return name


def _figure(node: Any) -> tuple[str | None, int]:
    """(name, strength): strength 2 a real name, 1 a fallback, 0 none (PostgreSQL's rules);
    a name with strength 0 marks an expression the rules here do not cover."""
    kind, value = unwrap(node)
    if kind == "ColumnRef":
        fields = [unwrap(f) for f in value.get("fields", ())]
        for part, text in reversed(fields):
            if part == "String":
                return str(text.get("sval")), 2
        return None, 0
    if kind == "A_Indirection":
        for part, text in (unwrap(i) for i in reversed(value.get("indirection", ()))):
            if part == "A_Star":
                return kind, 0  # (expr).* expands: not one column
            if part == "String":
                return str(text.get("sval")), 2
        return _figure(value.get("arg"))
    if kind == "FuncCall":
        names = value.get("funcname", ())
        return (str(unwrap(names[-1])[1].get("sval")), 2) if names else (None, 0)
    if kind == "TypeCast":
        name, strength = _figure(value.get("arg"))
        if strength == 0 and name is not None:
            return name, 0
        names = (value.get("typeName") or {}).get("names", ())
        if strength <= 1 and names:
            return str(unwrap(names[-1])[1].get("sval")), 1
        return name, strength
    if kind == "CollateClause":
        return _figure(value.get("arg"))
    if kind in _FIXED:
        return _FIXED[kind], 2
    if kind == "MinMaxExpr":
        return ("greatest" if value.get("op") == "IS_GREATEST" else "least"), 2
    if kind == "A_Expr" and value.get("kind") == "AEXPR_NULLIF":
        return "nullif", 2
    if kind in _UNNAMED:
        return None, 0
    return kind, 0  # not covered: refused
