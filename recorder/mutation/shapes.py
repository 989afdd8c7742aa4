"""Statement texts that differ only in their constants (and comments) share one plan.

Applications that send values inline (pgbench, ORMs without bind parameters,
sqlcommenter tags) make every text distinct, and each distinct text would cost
a parse and a rewrite. A rewrite is text copied from the client's statement
(``Rewrite.segments``) and text added around it; the added text depends on the
statement's structure and the tables' identities, never on a constant's value.
So the rewrite of one text is carried over to another of the same shape by
copying the same spans of the other text, shifted by how much longer or shorter
its constants are.

The shape is the text with every string and numeric constant and every comment
replaced by a marker of its kind; everything else (keywords, identifiers,
operators, whitespace) must match exactly. Integers that always fit in int4 are
one kind and other numbers another, because the grammar treats ICONST and
FCONST differently in places. Texts whose lexing a regular expression could get
wrong are not shaped: dollar quotes, backslashes in string constants
(``E'...'``, ``standard_conforming_strings = off``), nested or unterminated
comments and quotes.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Final

from .splice import Rewrite

_LEXEME: Final = re.compile(
    r"""
    (?=['"/\-$.\d])                                  # (fast path: what can start one)
    (?:"(?:[^"]|"")*"                                    # quoted identifier: part of the shape
    |(?P<s>'(?:[^']|'')*')                            # string constant
    |(?P<c>/\*(?:[^*]|\*(?!/))*\*/|--[^\n\r]*)        # comment
    |(?P<n>(?<![\w$.])(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w$.]))  # number
    |(?P<bad>\$(?:[^\W\d]\w*)?\$|['"]|/\*))           # dollar quote, unterminated
    """,
    re.VERBOSE,
)
_INT4_DIGITS: Final = 9  # at most this many digits: always an ICONST
# Longer texts (bulk INSERTs...) are not shaped: caches keep their texts and shapes.
MAX_SHAPED_CHARS: Final = 16 << 10


@dataclass(frozen=True, slots=True)
class Shape:
    key: str  # the text with each constant and comment replaced by a marker
    pieces: tuple[tuple[int, int], ...]  # where those are in the text, in order


def shape(sql: str) -> Shape | None:
    """None when nothing in ``sql`` varies, or when it is not safely shaped."""
    if len(sql) > MAX_SHAPED_CHARS or "\x00" in sql:
        return None
    parts: list[str] = []
    pieces: list[tuple[int, int]] = []
    last = 0
    for match in _LEXEME.finditer(sql):
        kind = match.lastgroup
        if kind is None:
            continue
        text = match.group()
        if kind == "bad":
            return None
        if kind == "s":
            if "\\" in text:
                return None
            marker = "\x00s"
        elif kind == "c":
            if "/*" in text[2:]:
                return None
            marker = "\x00c"
        elif text.isdigit() and len(text) <= _INT4_DIGITS:
            marker = "\x00i"
        else:
            marker = "\x00n"
        start, end = match.span()
        parts.append(sql[last:start])
        parts.append(marker)
        pieces.append((start, end))
        last = end
    if not pieces:
        return None
    parts.append(sql[last:])
    return Shape("".join(parts), tuple(pieces))


@dataclass(frozen=True, slots=True)
class _Program:
    """A rewrite as steps over its source text: (text added before, start and end of the
    span copied, and how many constants and comments precede each end), then the tail."""

    steps: tuple[tuple[str, int, int, int, int], ...]
    tail: str


def _compile(rewrite: Rewrite, old: Shape) -> _Program | None:
    """None when a copied span starts or ends inside a constant or comment."""
    starts = [s for s, _ in old.pieces]
    ends = [e for _, e in old.pieces]

    def before(position: int) -> int | None:
        count = bisect_right(ends, position)  # pieces that end at or before it
        if count < len(starts) and starts[count] < position:
            return None
        return count

    steps: list[tuple[str, int, int, int, int]] = []
    done = 0
    for at, origin, length in rewrite.segments:
        first, last = before(origin), before(origin + length)
        if at < done or first is None or last is None:
            return None
        steps.append((rewrite.sql[done:at], origin, origin + length, first, last))
        done = at + length
    return _Program(tuple(steps), rewrite.sql[done:])


def _run(program: _Program, rewrite: Rewrite, old: Shape, new: Shape, sql: str) -> Rewrite:
    # shift[n]: how much later the new text is after its n-th constant or comment
    shift = [0]
    shift.extend(
        n_end - o_end for (_, o_end), (_, n_end) in zip(old.pieces, new.pieces, strict=True)
    )
    parts: list[str] = []
    segments: list[tuple[int, int, int]] = []
    size = 0
    for added, start, end, first, last in program.steps:
        parts.append(added)
        size += len(added)
        begin, stop = start + shift[first], end + shift[last]
        parts.append(sql[begin:stop])
        segments.append((size, begin, stop - begin))
        size += stop - begin
    parts.append(program.tail)
    return replace(rewrite, sql="".join(parts), segments=tuple(segments))


def carry_over(rewrite: Rewrite, old: Shape, new: Shape, sql: str) -> Rewrite | None:
    """The rewrite of the text ``old`` was taken from, applied to ``sql`` (of shape
    ``new``, the same key); None when a copied span starts or ends inside a constant."""
    program = _compile(rewrite, old)
    return None if program is None else _run(program, rewrite, old, new, sql)


@dataclass(slots=True)
class _Learnt:
    generation: int  # of the identity cache the rewrite was made with
    shape: Shape
    sql: str
    rewrite: Rewrite
    verified: bool | None = None  # None until a second text of the shape was planned
    program: _Program | None = None


class ShapeCache:
    """Rewrites by shape, per (database, role, server version, query). A shape is used
    only once a second text of it, planned in full, gave exactly what carrying the
    first one's rewrite over gives: a form that ever depends on a constant's value
    is caught there and its shape is planned in full from then on."""

    def __init__(self, max_entries: int = 2048) -> None:
        self._entries: dict[tuple[str, str, str, int, bool], _Learnt] = {}
        self._max = max_entries
        self.carried = 0  # how many plans were carried over (tests read it)

    def get(
        self, form: Shape, sql: str, scope: tuple[str, str, int, bool], generation: int
    ) -> Rewrite | None:
        entry = self._entries.get((form.key, *scope))
        if entry is None or entry.program is None or entry.generation != generation:
            return None
        self.carried += 1
        return _run(entry.program, entry.rewrite, entry.shape, form, sql)

    def learn(
        self,
        form: Shape,
        sql: str,
        scope: tuple[str, str, int, bool],
        generation: int,
        result: Rewrite,
    ) -> None:
        """``result``: the rewrite of ``sql`` planned in full. Only captured forms are
        kept: a statement that runs uncaptured may be so for a while only (a table
        skipped after a failure, an identity still unknown), which the full plan
        notices and a carried-over one would not."""
        if not _captured(result):
            return
        key = (form.key, *scope)
        entry = self._entries.get(key)
        if entry is None or entry.generation != generation:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = _Learnt(generation, form, sql, result)
        elif entry.verified is None and entry.sql != sql:
            entry.verified = carry_over(entry.rewrite, entry.shape, form, sql) == result
            if entry.verified:
                entry.program = _compile(entry.rewrite, entry.shape)


def _captured(result: Rewrite) -> bool:
    return all(
        plan.uncaptured is None and (plan.capture is None or plan.capture.uncaptured is None)
        for plan in result.statements
    )
