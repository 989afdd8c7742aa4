"""sqlcommenter tags carried in SQL comments.

OpenTelemetry and Google's sqlcommenter append a comment of URL-encoded
``key='value'`` pairs to each statement, e.g.::

    SELECT 1 /*route='%2Fusers',traceparent='00-4bf9...-00f0...-01'*/

That is how the proxy learns which trace a statement belongs to. This runs
for every statement on the proxy's forwarding path, so the comment is found
by looking backwards from the final ``*/`` to the nearest ``/*`` (or forwards
at the start) instead of lexing the statement: a few C-level string searches
whose cost does not grow with the number of literals in a huge INSERT.

Why looking backwards is safe: in valid SQL, text that ends with ``*/``
outside a literal ends in a block comment, and comments hold no literals,
so the nearest ``/*`` before it is inside that comment. If it is not the
comment's own opener, the comment is nested and the text between still
holds a ``*/`` or ``/*``; such bodies are rejected. A ``/*`` inside a literal
earlier in the statement is never reached. The one exception, a line comment
(``... -- /*k='v'*/``), is settled by lexing the statement, which is needed
only when ``--`` precedes the comment on its line. Only a statement the
server rejects anyway (an unterminated literal ending in something
comment-like) can make us read tags the server would not see as a comment.

Spec: https://google.github.io/sqlcommenter/spec/
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from urllib.parse import quote, unquote

from .sqltext import is_code_at
from .traceparent import TraceParent, parse_traceparent

__all__ = ["add_comment", "extract_tags", "extract_traceparent", "strip_comment"]

MAX_COMMENT_CHARS = 8192  # a traceparent plus a few route/framework tags is far less
MAX_TAGS = 64
# How many comments in a row to look through for one holding tags, e.g. a
# sqlcommenter comment followed by a marginalia-style /*app:web*/ comment.
_MAX_COMMENTS = 8
_WS = " \t\n\r\f\v"

# One key='value' or key=value pair and the comma after it. Keys and
# unquoted values stop at characters that cannot appear URL-encoded; quoted
# values may hold anything, with \' for a quote.
_PAIR_RE = re.compile(
    r"""
    [ \t\n\r\f\v]*
    (?P<key>[^\s=,'\\]+)
    [ \t\n\r\f\v]*=[ \t\n\r\f\v]*
    (?:'(?P<quoted>[^'\\]*(?:\\.[^'\\]*)*)'|(?P<bare>[^\s,'\\]*))
    [ \t\n\r\f\v]*
    (?:,|\Z)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def _decode(text: str) -> str:
    if "\\" in text:
        text = _ESCAPE_RE.sub(r"\1", text)
    # OpenTelemetry's Python instrumentation doubles '%' so that psycopg2's
    # %-formatting turns it back into one; without query parameters the
    # doubled form reaches the server. Valid percent-encoding never has
    # "%%", so folding it is unambiguous.
    if "%%" in text:
        text = text.replace("%%", "%")
    return unquote(text)


def _parse_body(body: str) -> dict[str, str]:
    """The tags in a comment body; {} unless the whole body is key=value pairs."""
    tags: dict[str, str] = {}
    pos, end = 0, len(body)
    while pos < end and len(tags) < MAX_TAGS:
        match = _PAIR_RE.match(body, pos)
        if match is None:
            if body[pos:].strip(_WS):
                return {}  # some other kind of comment
            break  # a trailing comma and whitespace
        quoted = match.group("quoted")
        tags[_decode(match.group("key"))] = _decode(
            quoted if quoted is not None else match.group("bare")
        )
        pos = match.end()
    return tags


def _trailing_comments(sql: str) -> Iterator[tuple[int, int]]:
    """Spans of the comments at the end of ``sql``, last first."""
    end = len(sql.rstrip(_WS + ";"))
    for _ in range(_MAX_COMMENTS):
        if end < 4 or not sql.endswith("*/", 0, end):
            return
        # The opener must end before the closer starts, so "/*/" is no comment.
        start = sql.rfind("/*", max(0, end - MAX_COMMENT_CHARS - 4), end - 2)
        if start < 0:
            return  # none, or a comment too long to be ours
        body = sql[start + 2 : end - 2]
        if "*/" in body or "/*" in body:
            return  # nested: its real start is further back; not a tag comment
        line_start = max(sql.rfind("\n", 0, start), sql.rfind("\r", 0, start)) + 1
        if sql.find("--", line_start, start) >= 0 and not is_code_at(sql, start):
            # "... -- /*k='v'*/": the whole thing is a line comment. Lexing the
            # statement settles it, and is needed only when "--" is nearby.
            return
        yield start, end
        end = len(sql[:start].rstrip(_WS))


def _leading_comments(sql: str) -> Iterator[tuple[int, int]]:
    """Spans of the comments at the start of ``sql``, first first."""
    start = len(sql) - len(sql.lstrip(_WS))
    for _ in range(_MAX_COMMENTS):
        if not sql.startswith("/*", start):
            return
        close = sql.find("*/", start + 2, start + 4 + MAX_COMMENT_CHARS)
        if close < 0:
            return
        end = close + 2
        if "/*" in sql[start + 2 : close]:
            return  # nested: this "*/" closes the inner comment
        yield start, end
        start = end + len(sql[end:]) - len(sql[end:].lstrip(_WS))


def _find(sql: str) -> tuple[int, int, dict[str, str]] | None:
    if not isinstance(sql, str):
        return None
    # The last trailing comment with tags wins; a leading one counts only
    # when there is no trailing one, matching where sqlcommenter puts them.
    for spans in (_trailing_comments(sql), _leading_comments(sql)):
        for start, end in spans:
            tags = _parse_body(sql[start + 2 : end - 2])
            if tags:
                return start, end, tags
    return None


def extract_tags(sql: str) -> dict[str, str]:
    """The sqlcommenter tags of a statement, decoded; {} if it has none.

    When a key repeats, the last value wins. At most ``MAX_TAGS`` tags are
    read, from a comment of at most ``MAX_COMMENT_CHARS``.
    """
    found = _find(sql)
    return found[2] if found is not None else {}


def extract_traceparent(sql: str) -> TraceParent | None:
    """The statement's ``traceparent`` tag, if present and valid."""
    value = extract_tags(sql).get("traceparent")
    return parse_traceparent(value) if value is not None else None


def strip_comment(sql: str) -> str:
    """``sql`` without the comment that ``extract_tags`` reads, else unchanged."""
    found = _find(sql)
    if found is None:
        return sql
    start, end, _ = found
    before, after = sql[:start], sql[end:]
    if before.strip(_WS):
        # Trailing: "SELECT 1 /*...*/;" becomes "SELECT 1;".
        return before.rstrip(_WS) + after
    return before + after.lstrip(_WS)


def add_comment(sql: str, tags: Mapping[str, str]) -> str:
    """Append ``tags`` as a sqlcommenter comment, before a trailing ``;``.

    Keys are sorted and keys and values percent-encoded (so no quote or
    comment delimiter can appear), as the sqlcommenter spec prescribes.
    Raises ValueError for an empty key, which cannot be encoded.
    """
    if not tags:
        return sql
    if any(not key for key in tags):
        raise ValueError("sqlcommenter keys must not be empty")
    pairs = sorted((quote(key, safe=""), quote(value, safe="")) for key, value in tags.items())
    comment = "/*" + ",".join(f"{key}='{value}'" for key, value in pairs) + "*/"
    body = sql.rstrip(_WS)
    if _ends_in_line_comment(body):
        # Ours would be swallowed (and a ';' may be inside it): new line.
        return body + "\n" + comment
    terminator = ""
    if body.endswith(";"):
        body, terminator = body[:-1].rstrip(_WS), ";"
    separator = "\n" if _ends_in_line_comment(body) else " "
    return (body + separator if body else "") + comment + terminator


def _ends_in_line_comment(text: str) -> bool:
    # Over-approximate: "--" in a literal on the last line only costs a newline.
    line_start = max(text.rfind("\n"), text.rfind("\r")) + 1
    return text.find("--", line_start) >= 0
