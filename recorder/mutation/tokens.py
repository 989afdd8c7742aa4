"""Where things are in a statement's text: pglast's scanner tokens with their bracket depth.

The rewrite splices text (it copies the client's clauses as written and adds
its own around them) instead of deparsing, so every error position the server
reports can be mapped back to the client's text, and nothing the client wrote
is re-formatted. Clause keywords are found among the tokens at bracket depth 0
of the statement, anchored on positions the parse tree gives.
"""

from __future__ import annotations

from pglast import parser

_OPEN = frozenset({"ASCII_40", "ASCII_91"})  # ( [
_CLOSE = frozenset({"ASCII_41", "ASCII_93"})  # ) ]
COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


class Token:
    """One token: ``end`` is exclusive; ``depth`` counts the brackets open before it (a
    closing bracket counts its own). Not a dataclass: a statement has many and a frozen
    dataclass's constructor costs several times a plain one."""

    __slots__ = ("depth", "end", "name", "start")

    def __init__(self, start: int, end: int, name: str, depth: int) -> None:
        self.start = start
        self.end = end
        self.name = name  # keyword in capitals, IDENT, SCONST, ASCII_<code>...
        self.depth = depth


def scan(sql: str) -> list[Token]:
    """Every non-comment token of ``sql``; positions are character offsets."""
    out: list[Token] = []
    depth = 0
    for tok in parser.scan(sql):
        name = tok.name
        if name in COMMENTS:
            continue
        if name in _CLOSE:
            depth -= 1
            out.append(Token(tok.start, tok.end + 1, name, depth))
            continue
        out.append(Token(tok.start, tok.end + 1, name, depth))
        if name in _OPEN:
            depth += 1
    return out


class Statement:
    """The tokens of one statement, with depth relative to its start."""

    __slots__ = ("base", "end", "start", "tokens")

    def __init__(self, tokens: list[Token], start: int, stop: int) -> None:
        mine = [t for t in tokens if start <= t.start < stop]
        self.base = mine[0].depth if mine else 0
        self.tokens = mine
        self.start = mine[0].start if mine else start
        # End of the last token: the statement's trailing comments and ';' stay outside.
        self.end = mine[-1].end if mine else start

    def top(self, name: str, *, after: int = -1, before: int | None = None) -> list[Token]:
        """Tokens named ``name`` at depth 0 of this statement, between two positions."""
        limit = self.end + 1 if before is None else before
        base = self.base
        return [
            t for t in self.tokens if t.name == name and t.depth == base and after < t.start < limit
        ]

    def first(self, name: str, *, after: int = -1, before: int | None = None) -> Token | None:
        found = self.top(name, after=after, before=before)
        return found[0] if found else None

    def last(self, name: str, *, after: int = -1, before: int | None = None) -> Token | None:
        found = self.top(name, after=after, before=before)
        return found[-1] if found else None

    def next_token(self, pos: int) -> Token | None:
        """The first token starting at or after ``pos``."""
        for t in self.tokens:
            if t.start >= pos:
                return t
        return None

    def previous_token(self, pos: int) -> Token | None:
        """The last token ending at or before ``pos``."""
        found = None
        for t in self.tokens:
            if t.end > pos:
                break
            found = t
        return found

    def groups(self, open_token: Token) -> tuple[list[tuple[int, int]], Token | None]:
        """Comma-separated items inside the bracket ``open_token`` opens, as spans,
        and the closing bracket."""
        items: list[tuple[int, int]] = []
        inner = open_token.depth + 1
        first: Token | None = None
        last: Token | None = None
        for t in self.tokens:
            if t.start <= open_token.start:
                continue
            if t.depth == open_token.depth and t.name in _CLOSE:
                if first is not None and last is not None:
                    items.append((first.start, last.end))
                return items, t
            if t.depth == inner and t.name == "ASCII_44":  # ,
                if first is not None and last is not None:
                    items.append((first.start, last.end))
                first = last = None
                continue
            if first is None:
                first = t
            last = t
        return items, None
