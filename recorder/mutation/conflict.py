"""Where the parts of ``INSERT ... ON CONFLICT`` are, for the capture of an upsert before
PostgreSQL 18 (see :mod:`.locking`): the conflict target, the VALUES rows as text, and
the DO UPDATE clause."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .nodes import Offsets, target_names, unwrap
from .safety import deterministic
from .tokens import Statement as Tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Upsert:
    action: str  # "nothing" or "update"
    conflict: tuple[str, ...] | None  # ON CONFLICT (columns); None: a constraint or expression
    insert_columns: tuple[str, ...] | None  # INSERT INTO t (columns); None: all, in order
    rows: tuple[tuple[tuple[int, int], ...], ...] | None  # VALUES items as text spans
    safe: tuple[tuple[bool, ...], ...]  # per item: deterministic and not DEFAULT
    where: tuple[int, int] | None  # DO UPDATE ... WHERE condition
    action_end: int  # end of the DO UPDATE clause
    set_columns: tuple[str, ...] = ()  # what DO UPDATE SET assigns


def upsert(node: dict[str, Any], toks: Tokens, clause_end: int, chars: Offsets) -> Upsert:
    clause: dict[str, Any] = node["onConflictClause"]
    action = "update" if clause.get("action") == "ONCONFLICT_UPDATE" else "nothing"
    infer = clause.get("infer")
    conflict: tuple[str, ...] | None = None
    if infer is not None and not infer.get("conname") and infer.get("whereClause") is None:
        elems = [unwrap(e)[1] for e in infer.get("indexElems", ())]
        if elems and all(e.get("name") and e.get("expr") is None for e in elems):
            conflict = tuple(str(e["name"]) for e in elems)
    insert_cols = tuple(str(unwrap(c)[1].get("name")) for c in node.get("cols", ())) or None
    rows: list[tuple[tuple[int, int], ...]] = []
    safe: list[tuple[bool, ...]] = []
    select = unwrap(node.get("selectStmt"))[1]
    lists = [unwrap(v)[1].get("items", []) for v in select.get("valuesLists", ())]
    shaped = bool(lists)
    location = chars(clause.get("location", 0))
    if shaped:
        start = chars(node["relation"].get("location", 0))
        values_word = toks.first("VALUES", after=start, before=location)
        cursor = values_word.end if values_word else location
        for values in lists:
            opener = toks.next_token(cursor)
            if opener is not None and opener.name == "ASCII_44":  # the comma between rows
                opener = toks.next_token(opener.end)
            if opener is None or opener.name != "ASCII_40":
                shaped = False
                break
            spans, closing = toks.groups(opener)
            if closing is None or len(values) != len(spans):
                shaped = False
                break
            rows.append(tuple(spans))
            safe.append(
                tuple(unwrap(v)[0] != "SetToDefault" and deterministic([v]) for v in values)
            )
            cursor = closing.end
    do_word = toks.first("DO", after=location, before=clause_end)
    where = None
    if action == "update" and do_word is not None:
        where_token = toks.first("WHERE", after=do_word.end, before=clause_end)
        if where_token is not None:
            where = (where_token.end, clause_end)
    return Upsert(
        action=action,
        conflict=conflict,
        insert_columns=insert_cols,
        rows=tuple(rows) if shaped else None,
        safe=tuple(safe),
        where=where,
        action_end=clause_end,
        set_columns=target_names(clause.get("targetList")),
    )
