"""Which statements of a SQL text change data, and where their clauses are.

Runs pglast once per distinct text (the caller caches), and only on texts whose
first keyword says they may change data; the result is independent of the
server version and of what is known about tables, so one analysis serves every
rewrite of the text.

The parse tree is read as pglast's JSON (libpg_query's own output, loaded by
the C json module, see :mod:`.nodes`), not as pglast's Python node objects:
building those costs several times the parse itself, and every distinct
statement text pays it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pglast import parser

from .conflict import Upsert, upsert
from .ddl import stale_names
from .mergeclauses import Merge, MergeShapeError, merge
from .nodes import Offsets, quote_ident, target_names, unwrap
from .safety import deterministic, walk
from .tokens import Statement as Tokens
from .tokens import scan
from .withclause import WritableCte, writable_ctes

_OPS: Final = {"InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete",
               "MergeStmt": "merge"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    schema: str | None
    ref: str  # how the statement's other clauses name it: the alias, else the relation name
    regclass: str  # quoted name for '...'::regclass; also the identity cache key
    start: int  # the target as written (ONLY, name, *, alias)
    end: int


@dataclass(frozen=True, slots=True)
class Returning:
    start: int  # the RETURNING keyword
    items: tuple[int, int]  # the expression list
    options_close: int | None  # the ')' of RETURNING WITH (...)
    old: str | None  # WITH (OLD AS name)
    new: str | None
    stars: tuple[int, ...]  # positions of bare * items


@dataclass(frozen=True, slots=True)
class Dml:
    op: str  # insert, update, delete, merge
    target: Relation
    keyword: int  # the INSERT/UPDATE/DELETE/MERGE keyword
    has_with: bool
    set_end: int  # UPDATE: end of the SET list
    from_span: tuple[int, int] | None  # UPDATE ... FROM / DELETE ... USING list
    from_refs: tuple[str, ...] | None  # names to expand * over FROM items; None: cannot
    where: tuple[int, int] | None
    returning: Returning | None
    upsert: Upsert | None
    deterministic: bool  # WHERE and FROM may be evaluated twice with the same result
    aliases: frozenset[str]  # range names, to see clashes with RETURNING's old/new
    problem: str | None  # why it cannot be captured on any server
    set_columns: tuple[str, ...] = ()  # UPDATE: the columns its SET list assigns
    merge: Merge | None = None  # MERGE: source, ON and WHEN clauses


@dataclass(frozen=True, slots=True)
class StatementInfo:
    start: int
    end: int  # end of the last token
    dml: Dml | None = None
    uncaptured: str | None = None  # a data change that runs uncaptured, and why
    ddl_names: frozenset[str] | None = None  # DDL: table names (empty set: not DDL)
    is_ddl: bool = False
    ctes: tuple[WritableCte, ...] = ()  # data-modifying CTEs (see .withclause)


def analyze(sql: str) -> tuple[StatementInfo, ...]:
    """One entry per statement the server will run, in order. Raises on unparsable text."""
    tree = json.loads(parser.parse_sql_json(sql))
    tokens = scan(sql)
    chars = Offsets(sql)
    out: list[StatementInfo] = []
    for raw in tree.get("stmts", ()):
        start = chars(raw.get("stmt_location", 0))
        length = raw.get("stmt_len", 0)
        stop = chars(raw.get("stmt_location", 0) + length) if length else len(sql)
        toks = Tokens(tokens, start, stop)
        out.append(_statement(raw["stmt"], toks, chars))
    return tuple(out)


def _statement(node: Any, toks: Tokens, chars: Offsets) -> StatementInfo:
    start, end = toks.start, toks.end
    name, fields = unwrap(node)
    if name in _OPS:
        if _writable_cte(fields):
            return _with_ctes(fields, toks, chars, dml=_dml(name, fields, toks, chars))
        return StatementInfo(start, end, dml=_dml(name, fields, toks, chars))
    if name == "SelectStmt" and _writable_cte(fields):
        return _with_ctes(fields, toks, chars)
    if name == "CopyStmt" and (fields.get("is_from") or _changes(fields.get("query"))):
        return StatementInfo(start, end, uncaptured="copy")
    if name == "TruncateStmt":
        return StatementInfo(start, end, uncaptured="truncate")
    if name in ("CallStmt", "DoStmt"):
        stale = stale_names(name, fields)  # a DO block's statements are not seen
        return StatementInfo(start, end, uncaptured="procedure", is_ddl=stale is not None)
    if name == "PrepareStmt" and _changes(fields.get("query")):
        return StatementInfo(start, end, uncaptured="sql-prepare")
    if name == "ExplainStmt" and _changes(fields.get("query")):
        options = [unwrap(o)[1].get("defname") for o in fields.get("options", ())]
        return StatementInfo(
            start, end, uncaptured="explain-analyze" if "analyze" in options else None
        )
    stale = stale_names(name, fields)
    if stale is not None:
        return StatementInfo(start, end, is_ddl=True, ddl_names=stale or None)
    return StatementInfo(start, end)


def _with_ctes(
    fields: dict[str, Any], toks: Tokens, chars: Offsets, dml: Dml | None = None
) -> StatementInfo:
    """A statement with data-modifying CTEs (see :mod:`.withclause`)."""
    ctes, problem = writable_ctes(fields, toks, chars, _dml)
    if dml is not None and dml.op == "merge":
        problem = problem or "writable-cte-outer-merge"
    if problem is not None:
        return StatementInfo(toks.start, toks.end, uncaptured=problem)
    return StatementInfo(toks.start, toks.end, dml=dml, ctes=ctes)


def _writable_cte(fields: dict[str, Any]) -> bool:
    ctes = (fields.get("withClause") or {}).get("ctes", ())
    return any(unwrap(unwrap(c)[1].get("ctequery"))[0] in _OPS for c in ctes)


def _changes(node: Any) -> bool:
    """Whether a statement nested in another (EXPLAIN, PREPARE, COPY) changes data."""
    kind, fields = unwrap(node)
    return kind in _OPS or (kind == "SelectStmt" and _writable_cte(fields))


def _relation(rv: dict[str, Any], start: int, end: int) -> Relation:
    relname, schema = str(rv.get("relname", "")), rv.get("schemaname")
    regclass = quote_ident(relname)
    if schema:
        regclass = f"{quote_ident(schema)}.{regclass}"
    alias = (rv.get("alias") or {}).get("aliasname") or relname
    return Relation(relname, schema, quote_ident(alias), regclass, start, end)


def _returning(
    fields: dict[str, Any], toks: Tokens, keyword: int, chars: Offsets
) -> Returning | None:
    clause = fields.get("returningClause")
    if clause is None:
        return None
    word = toks.first("RETURNING", after=keyword)
    if word is None:
        return None
    old = new = None
    close = None
    items_start = word.end
    options = [unwrap(o)[1] for o in clause.get("options", ())]
    for option in options:
        if option.get("option", "RETURNING_OPTION_OLD") == "RETURNING_OPTION_OLD":
            old = quote_ident(str(option.get("value")))
        else:
            new = quote_ident(str(option.get("value")))
    if options:
        opener = toks.next_token(word.end + 1)
        paren = toks.next_token(opener.end) if opener else None
        if paren is not None:
            _, closing = toks.groups(paren)
            if closing is not None:
                close = closing.start
                items_start = closing.end
    stars: list[int] = []
    for target in clause.get("exprs", ()):
        kind, value = unwrap(unwrap(target)[1].get("val"))
        if kind == "ColumnRef" and [unwrap(f)[0] for f in value.get("fields", ())] == ["A_Star"]:
            stars.append(chars(value.get("location", 0)))
    return Returning(word.start, (items_start, toks.end), close, old, new, tuple(stars))


def _from_refs(items: list[Any]) -> tuple[str, ...] | None:
    refs: list[str] = []
    for item in items:
        kind, fields = unwrap(item)
        alias = (fields.get("alias") or {}).get("aliasname")
        if alias:
            refs.append(quote_ident(alias))
        elif kind == "RangeVar":
            refs.append(quote_ident(str(fields.get("relname"))))
        else:
            return None  # a join or function without alias: its * cannot be spelled out
    return tuple(refs)


def _aliases(relation: dict[str, Any], items: list[Any]) -> frozenset[str]:
    names = {(relation.get("alias") or {}).get("aliasname") or relation.get("relname", "")}
    for kind, fields in walk(items):
        alias = fields.get("alias")
        if isinstance(alias, dict) and alias.get("aliasname"):
            names.add(alias["aliasname"])
        if kind == "RangeVar":
            names.add(fields.get("relname", ""))
    return frozenset(str(n).lower() for n in names)


def _dml(kind: str, node: dict[str, Any], toks: Tokens, chars: Offsets) -> Dml:
    rv: dict[str, Any] = node["relation"]
    location = chars(rv.get("location", 0))
    op = _OPS[kind]
    keyword_token = toks.last(op.upper(), before=location) or toks.tokens[0]
    keyword = keyword_token.start
    returning = _returning(node, toks, keyword, chars)
    clause_end = returning.start if returning else toks.end
    where_node = node.get("whereClause")
    problem = "where-current-of" if unwrap(where_node)[0] == "CurrentOfExpr" else None
    from_items: list[Any] = node.get("fromClause") or node.get("usingClause") or []
    set_end = clause_end
    from_span = where = None
    target_end = clause_end
    conflict = None
    if op == "update":
        first_set = chars(unwrap(node["targetList"][0])[1].get("location", 0))
        set_token = toks.last("SET", before=first_set)
        target_end = set_token.start if set_token else clause_end
        where_token = toks.first("WHERE", after=target_end, before=clause_end)
        from_token = _from_keyword(
            toks, target_end, where_token.start if where_token else clause_end
        )
        if from_items and from_token is None:
            problem = problem or "unlocated-from"
        set_end = (from_token or where_token or _Pos(clause_end)).start
        if from_items and from_token is not None:
            from_span = (from_token.end, (where_token or _Pos(clause_end)).start)
        if where_token is not None:
            where = (where_token.end, clause_end)
    elif op == "delete":
        using_token = toks.first("USING", after=location, before=clause_end)
        where_token = toks.first("WHERE", after=location, before=clause_end)
        target_end = (using_token or where_token or _Pos(clause_end)).start
        if using_token is not None:
            from_span = (using_token.end, (where_token or _Pos(clause_end)).start)
        if where_token is not None:
            where = (where_token.end, clause_end)
    elif op == "insert" and node.get("onConflictClause") is not None:
        conflict = upsert(node, toks, clause_end, chars)
    merge_spans = None
    if op == "merge":
        try:
            merge_spans = merge(node, toks, location, clause_end)
            target_end = merge_spans.using
        except MergeShapeError:
            pass  # 18 needs no spans; 17 runs it uncaptured (merge.py)
    target_start = keyword_token.end
    if op == "delete":
        from_word = toks.first("FROM", after=keyword, before=location + 1)
        target_start = from_word.end if from_word else target_start
    elif op in ("insert", "merge"):
        into = toks.first("INTO", after=keyword, before=location + 1)
        target_start = into.end if into else target_start
    return Dml(
        op=op,
        target=_relation(rv, target_start, target_end),
        keyword=keyword,
        has_with=node.get("withClause") is not None,
        set_end=set_end,
        from_span=from_span,
        from_refs=_from_refs(from_items) if from_items else (),
        where=where,
        returning=returning,
        upsert=conflict,
        set_columns=target_names(node.get("targetList")) if op == "update" else (),
        deterministic=deterministic([where_node, from_items]),
        aliases=_aliases(rv, [*from_items, node.get("sourceRelation")]),
        problem=problem,
        merge=merge_spans,
    )


@dataclass(frozen=True, slots=True)
class _Pos:
    start: int


def _from_keyword(toks: Tokens, after: int, before: int) -> Any:
    """The FROM of UPDATE ... FROM: at depth 0, not the FROM of IS [NOT] DISTINCT FROM."""
    previous = None
    for t in toks.tokens:
        if t.start <= after:
            continue
        if t.start >= before:
            break
        if (
            t.name == "FROM"
            and t.depth == toks.base
            and (previous is None or previous.name != "DISTINCT")
        ):
            return t
        previous = t
    return None
