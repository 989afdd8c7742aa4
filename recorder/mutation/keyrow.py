"""Before PostgreSQL 18: the UPDATE of one row by its key, with a lighter locking CTE.

``UPDATE t SET ... WHERE id = 42`` (every key column compared with a constant or a
parameter, and nothing else) changes at most one row, so its before image needs
no key → image map (see :mod:`.locking`): no GROUP BY, no window, no jsonb. The
locking CTE is the same, and one aggregate over it yields the image and its
version when it locked exactly one row, NULL otherwise (a key the cache still
believes unique after its constraint was dropped elsewhere costs the before
image, never a wrong one or an error). The server spends about a third less CPU
on it (planning, mostly), and a statement like this is planned every time it is
sent with its values inline.
"""

from __future__ import annotations

from typing import Final

from .analyze import Dml
from .capture import MAX_CAPTURE_BYTES
from .identity import TableIdentity
from .nodes import quote_ident
from .tokens import Token, scan

_CONSTANTS: Final = frozenset({"ICONST", "FCONST", "SCONST", "PARAM"})
_NUMBERS: Final = frozenset({"ICONST", "FCONST"})
_EQUALS, _DOT, _MINUS = "ASCII_61", "ASCII_46", "ASCII_45"


def by_key(sql: str, dml: Dml, known: TableIdentity) -> bool:
    """Whether the UPDATE's WHERE is ``key column = constant`` for each key column, ANDed,
    and it has no FROM: one row at most."""
    if dml.where is None or dml.from_span is not None or not known.key:
        return False
    start, end = dml.where
    tokens = scan(sql[start:end])
    if any(t.depth for t in tokens):
        return False
    compared: list[str] = []
    conjunct: list[Token] = []
    for token in [*tokens, None]:
        if token is not None and token.name != "AND":
            conjunct.append(token)
            continue
        column = _equality(sql[start:end], conjunct, dml.target.ref)
        if column is None:
            return False
        compared.append(column)
        conjunct = []
    return sorted(compared) == sorted(known.key)


def _equality(text: str, tokens: list[Token], ref: str) -> str | None:
    """The column of ``column = constant`` (either way round), else None."""
    names = [t.name for t in tokens]
    if _EQUALS not in names:
        return None
    split = names.index(_EQUALS)
    left, right = tokens[:split], tokens[split + 1 :]
    column = _column(text, left, ref)
    if column is not None and _constant(right):
        return column
    column = _column(text, right, ref)
    return column if column is not None and _constant(left) else None


def _column(text: str, tokens: list[Token], ref: str) -> str | None:
    names = [t.name for t in tokens]
    if names == ["IDENT", _DOT, "IDENT"]:
        if quote_ident(_identifier(text, tokens[0])) != ref:
            return None
        return _identifier(text, tokens[2])
    return _identifier(text, tokens[0]) if names == ["IDENT"] else None


def _identifier(text: str, token: Token) -> str:
    word = text[token.start : token.end]
    if word.startswith('"'):
        return word[1:-1].replace('""', '"')
    return word.lower()


def _constant(tokens: list[Token]) -> bool:
    names = [t.name for t in tokens]
    if names[:1] == [_MINUS]:
        names = names[1:] if names[1:2] and names[1] in _NUMBERS else ["-"]
    if len(names) == 3 and names[1] == "TYPECAST":
        names = names[:1]  # a cast to a one-word type name: int, text, bigint...
    return len(names) == 1 and names[0] in _CONSTANTS


def row_cte(versioned: bool) -> str:
    """``__flux_map``: one row, ``__flux_m`` = [image, version] when __flux_old holds
    exactly one row within the byte bound, else NULL."""
    version = ", pg_catalog.min(__flux_xmin)" if versioned else ""
    return (
        "__flux_map AS (SELECT CASE WHEN pg_catalog.count(*) = 1 AND pg_catalog.sum("
        f"pg_catalog.octet_length(__flux_img)) <= {MAX_CAPTURE_BYTES} THEN ARRAY["
        f"pg_catalog.min(__flux_img){version}] END AS __flux_m FROM __flux_old)"
    )


def row_entries() -> tuple[str, str]:
    """The before image and its version, as RETURNING expressions."""
    return "(SELECT __flux_m[1] FROM __flux_map)", "(SELECT __flux_m[2] FROM __flux_map)"
