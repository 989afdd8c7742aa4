"""The paths of ``flux replay``: where a difference is, and what ``--ignore`` takes.

One syntax for both, so a path printed in a report can be pasted into ``--ignore``::

    status            the status code (never ignorable: it decides the verdict)
    header:NAME       a response header, case-insensitive (header:* for all of them)
    $                 the whole body; for text and binary bodies the only path
    $.name            a JSON member; $["odd name"] for names that are not identifiers
    $.items[3]        an array element
    $.items[*].id     * stands for any one member or element
    $..updated_at     .. stands for any depth, zero levels included

JSONPath's spelling (RFC 9535) rather than JSON Pointer's: wildcards and any-depth
are part of it, and ``$.a.b`` reads well in a terminal. Ignoring a path ignores
everything under it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Sequence
from typing import Final

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Segment = str | int
Token = tuple[str, Segment]  # ("key", name), ("index", n), ("any", ""), ("deep", "")
_ANY: Final[Token] = ("any", "")
_DEEP: Final[Token] = ("deep", "")


def format_path(segments: Sequence[Segment]) -> str:
    out = ["$"]
    for seg in segments:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif _IDENT.fullmatch(seg):
            out.append(f".{seg}")
        else:
            out.append(f"[{json.dumps(seg)}]")
    return "".join(out)


class IgnorePath:
    """One ``--ignore`` path; raises ValueError with the reason for a malformed one."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.header: str | None = None
        self.tokens: list[Token] = []
        if self.text.lower().startswith("header:"):
            self.header = self.text[7:].strip().lower()
            if not self.header:
                raise ValueError(f"{text!r}: header: needs a name (or *)")
        elif self.text == "status":
            raise ValueError("the status decides the verdict and cannot be ignored")
        else:
            self.tokens = list(_parse(self.text))

    def matches_header(self, name: str) -> bool:
        return self.header is not None and self.header in ("*", name.lower())

    def matches(self, segments: Sequence[Segment]) -> bool:
        """True for the path and everything under it."""
        if self.header is not None:
            return False
        return any(_match(self.tokens, segments[:n]) for n in range(len(segments) + 1))


def _parse(text: str) -> Generator[Token, None, None]:
    if not text.startswith("$"):
        raise ValueError(f"{text!r}: a body path starts with $ (like $.items[*].id)")
    i, n = 1, len(text)
    while i < n:
        if text.startswith("..", i):
            yield _DEEP
            i += 2
            if i < n and text[i] == "[":
                continue
            i = yield from _member(text, i)
        elif text[i] == ".":
            i = yield from _member(text, i + 1)
        elif text[i] == "[":
            end = _bracket_end(text, i)
            inner = text[i + 1 : end].strip()
            if inner == "*":
                yield _ANY
            elif inner.isdigit():
                yield ("index", int(inner))
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "\"'":
                yield ("key", _unquote(inner, text))
            else:
                raise ValueError(f"{text!r}: [{inner}] is not [N], [*] or a quoted name")
            i = end + 1
        else:
            raise ValueError(f"{text!r}: unexpected {text[i]!r} at {i}")


def _member(text: str, i: int) -> Generator[Token, None, int]:
    if text.startswith("*", i):
        yield _ANY
        return i + 1
    match = re.compile(r"[^.\[]+").match(text, i)
    if match is None:
        raise ValueError(f"{text!r}: a name is missing after the dot at {i - 1}")
    yield ("key", match[0])
    return match.end()


def _bracket_end(text: str, start: int) -> int:
    quote = None
    for j in range(start + 1, len(text)):
        c = text[j]
        if quote:
            if c == "\\":
                continue
            if c == quote and text[j - 1] != "\\":
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "]":
            return j
    raise ValueError(f"{text!r}: unclosed [")


def _unquote(inner: str, text: str) -> str:
    if inner[0] == "'":
        inner = '"' + inner[1:-1].replace('"', '\\"') + '"'
    try:
        value = json.loads(inner)
    except ValueError:
        raise ValueError(f"{text!r}: bad quoted name {inner}") from None
    return str(value)


def _match(tokens: Sequence[Token], segments: Sequence[Segment]) -> bool:
    if not tokens:
        return not segments
    head, rest = tokens[0], tokens[1:]
    if head == _DEEP:
        return any(_match(rest, segments[k:]) for k in range(len(segments) + 1))
    if not segments:
        return False
    seg = segments[0]
    if head == _ANY:
        ok = True
    elif head[0] == "index":
        ok = isinstance(seg, int) and seg == head[1]
    else:
        ok = isinstance(seg, str) and seg == head[1]
    return ok and _match(rest, segments[1:])
