"""Statement fingerprints: SQL text with literals and comments stripped.

Every recorded statement gets a fingerprint so that "the same query with
different values" groups together and replay can match statements. This is a
lexer, not a parser: it follows PostgreSQL's lexical rules (scan.l) closely
enough to know what is a literal, a comment or a quoted identifier, and
leaves everything else alone. Full parsing (pglast) is far too slow to run on
every statement.

Speed comes from one compiled regex that only stops at the tokens that need
work (comments, literals, quoted identifiers, numbers); the plain code between
them (keywords, identifiers, operators, whitespace) is handled in bulk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from hashlib import blake2b

__all__ = [
    "fingerprint",
    "is_code_at",
    "literals",
    "normalize",
    "split_statements",
    "statement_kind",
]

# Characters that can continue an identifier. PostgreSQL treats every
# non-ASCII character as a letter and allows '$' after the first character.
_IDC = r"A-Za-z0-9_$\x80-\U0010ffff"
_ID_START = r"A-Za-z_\x80-\U0010ffff"
_NOT_IN_WORD = rf"(?<![{_IDC}].)"  # the character just matched does not continue a word
_DIGITS = r"[0-9](?:_?[0-9])*"  # PostgreSQL 16 allows 1_000_000; ASCII digits only
# "1..5" is 1, "..", 5 (as in PL/pgSQL's FOR i IN 1..5), hence (?!\.).
_NUMBER_REST = rf"(?:_?[0-9])*(?:\.(?!\.)(?:{_DIGITS})?)?(?:[eE][-+]?{_DIGITS})?"
_FOLD_SAFE = r"[^\"A-Z?\t\n\r\f\v ]*+"  # quoted-identifier text that folding leaves alone


# The tokenizer only stops where work is needed. Every alternative starts
# with a literal character so that the regex engine skips plain code in C
# (checking only a first-character set) and, at a candidate, tries just the
# branch for that character; dispatching on a lookbehind instead was 3x
# slower. Hence one branch per digit, and prefixes like E'' are recognised
# by looking behind the quote. Numbers written ".5" are found at the digit
# and extended in Python, since a '.' candidate (a.b) is far more common.
# The token kind follows from its first character, so the pattern has a
# single group: each group adds work to every match.
#
# Unterminated strings, identifiers and comments run to the end of the text,
# as in the server's lexer (which then reports an error); that keeps their
# contents out of the fingerprint.
def _token_pattern(not_in_word: str) -> str:
    return rf"""
      '(?:
            (?<=[eE]')(?<![{_IDC}]..)[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*)*'?  # E'\n'
          | (?<=[bBxX]')(?<![{_IDC}]..)[^']*'?  # B'01', X'1F': no '' inside
          | [^']*(?:''[^']*)*'?
        )
    | "(?:
            # Quoted identifiers with nothing for case/space folding to
            # change are left in the plain text, together with any further
            # such identifiers and the token-free code between them, so
            # ORM-style "t"."col" lists cost one match instead of dozens.
            ({_FOLD_SAFE}"(?:[^-/"'$0-9;]*+"{_FOLD_SAFE}")*+)
          | [^"]*(?:""[^"]*)*"?
        )
    | --[^\n\r]*
    | /\*
    | \${not_in_word}(?:[{_ID_START}][A-Za-z0-9_\x80-\U0010ffff]*)?\$
    | 0{not_in_word}(?:
          [xX](?:_?[0-9a-fA-F])+ | [oO](?:_?[0-7])+ | [bB](?:_?[01])+ | {_NUMBER_REST})
    {"".join(f"| {d}{not_in_word}{_NUMBER_REST}" for d in range(1, 10))}
    """


_TOKEN_RE = re.compile(_token_pattern(_NOT_IN_WORD), re.VERBOSE)
# Right after a number or dollar-quoted string, whose last character is a word
# character, the next token starts a new word all the same: "0$$x$$" is a
# number and a string. Only used at that one position.
_TOKEN_AFTER_TOKEN_RE = re.compile(_token_pattern(""), re.VERBOSE)
_KIND_BY_FIRST = {
    "'": "str",
    '"': "qid",
    "-": "line",
    "/": "block",
    "$": "dollar",
    **{str(d): "num" for d in range(10)},
}
_FRACTION_RE = re.compile(rf"\.{_DIGITS}(?:[eE][-+]?{_DIGITS})?")
_WORDY_STARTS = frozenset("$0123456789")  # tokens found only outside words
_BLOCK_DELIM_RE = re.compile(r"/\*|\*/")
_WS = " \t\n\r\f\v"  # PostgreSQL's whitespace; other Unicode spaces are identifier chars
_SPACES_RE = re.compile(r"  +")
_LEAD_RE = re.compile(r"(?:[ \t\n\r\f\v(]++|--[^\n\r]*+)*+")
_WORD_RE = re.compile(rf"[{_ID_START}][{_IDC}]*")

# Lists whose length varies with the data: IN (?, ?), ARRAY[?, ?] and
# multi-row VALUES, in folded text (single spaces, lowercase). Each pattern
# starts with a literal bracket so the engine can search for it quickly; the
# keyword is checked by looking behind.
_QLIST = r" ?\?(?: ?, ?\?)* ?"


def _after_keyword(keyword: str, bracket: str) -> str:
    bracket = re.escape(bracket)
    word_start = rf"(?<![{_IDC}]){keyword}"
    return rf"{bracket}(?:(?<={word_start} {bracket})|(?<={word_start}{bracket}))"


_IN_RE = re.compile(_after_keyword("in", "(") + _QLIST + r"\)")
_ARRAY_RE = re.compile(_after_keyword("array", "[") + _QLIST + r"\]")
_VALUES_RE = re.compile(
    _after_keyword("values", "(")
    + rf"(?P<tuple>{_QLIST})\)(?: ?, ?\({_QLIST}\))*"
    + r"(?: ?, ?\.\.\.)?"  # already collapsed: keeps normalize idempotent
)

# A '-' or '+' right before a number is part of the literal when it cannot be
# a binary operator, i.e. after an operator, an opening bracket, a comma or
# one of these keywords. So "x = -1" and "x = 1" fingerprint alike, while
# "a - 1" keeps its minus.
_UNARY_AFTER_CHARS = frozenset("(,[;:=<>!~*/%^&|@#?+-")
_UNARY_AFTER_WORDS = frozenset(
    (
        *("select", "where", "and", "or", "not", "when", "then", "else", "case"),
        *("by", "limit", "offset", "having", "on", "returning", "between"),
        *("like", "ilike", "distinct", "return", "default"),
    )
)
_LONGEST_UNARY_AFTER_WORD = max(map(len, _UNARY_AFTER_WORDS))

_ASCII_UPPER_RE = re.compile("[A-Z]+")


def _lower_match(match: re.Match[str]) -> str:
    return match.group().lower()


def _ascii_lower(text: str) -> str:
    # PostgreSQL folds only ASCII letters of unquoted identifiers (for
    # multibyte encodings), so "É" and "é" stay different names.
    return text.lower() if text.isascii() else _ASCII_UPPER_RE.sub(_lower_match, text)


def _in_word(char: str) -> bool:
    return not char.isascii() or char.isalnum() or char in "_$"


def _block_end(sql: str, pos: int) -> int:
    """End of the block comment whose body starts at ``pos``; comments nest."""
    depth = 1
    search = _BLOCK_DELIM_RE.search
    while True:
        match = search(sql, pos)
        if match is None:
            return len(sql)
        pos = match.end()
        if match.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def _prefix_length(sql: str, quote: int) -> int:
    """Length of a B/E/N/X or U& prefix before the quote at ``quote`` (a word start)."""
    if quote >= 1 and sql[quote - 1] in "bBeEnNxX":
        size = 1
    elif quote >= 2 and sql[quote - 1] == "&" and sql[quote - 2] in "uU":
        size = 2
    else:
        return 0
    return 0 if quote > size and _in_word(sql[quote - size - 1]) else size


def _scan(sql: str) -> Iterator[tuple[str, int, int]]:
    """Yield ``(kind, start, end)`` for comments, literals and quoted identifiers.

    kind is one of line, block, qid, iqid, str, dollar, num; iqid is a run of
    quoted identifiers that case and space folding would not change, with the
    plain code between them (which holds no other token and no ';'). Text
    between tokens is plain code.
    """
    pos = 0
    pattern = _TOKEN_RE
    while True:
        # finditer is much cheaper per token than repeated search() calls. It
        # is restarted after tokens whose end the pattern cannot find (nested
        # comments, dollar quotes), and after a number or dollar quote that
        # ends in a word character: the next token may start right there even
        # though the pattern's lookbehinds say "mid-word". normalize() puts a
        # "?" there, so this keeps normalizing its output a no-op.
        anchored, pattern = pattern is _TOKEN_AFTER_TOKEN_RE, _TOKEN_RE
        for match in (_TOKEN_AFTER_TOKEN_RE if anchored else _TOKEN_RE).finditer(sql, pos):
            start, end = match.span()
            if anchored and start != pos:
                break  # nothing right after that token; go on as usual
            restart = anchored
            kind = _KIND_BY_FIRST[sql[start]]
            if kind == "num":
                if start > pos and sql[start - 1] == "." and sql[start - 2 : start - 1] != ".":
                    # ".5", even right after a word ("t1.5" is t1 and .5), but
                    # "..5" is "..", 5 and ".5.5" is two numbers, not ".5." and 5.
                    start -= 1
                    fraction = _FRACTION_RE.match(sql, start)
                    if fraction is not None and fraction.end() < end:
                        end, restart = fraction.end(), True
                if sql[end : end + 1] in _WORDY_STARTS:
                    pattern, restart = _TOKEN_AFTER_TOKEN_RE, True
            elif kind == "str":
                if start and sql[start - 1] in "bBeEnNxX&":
                    start -= _prefix_length(sql, start)
            elif kind == "qid":
                if match.start(1) >= 0:
                    kind = "iqid"
            elif kind == "block":
                end, restart = _block_end(sql, end), True
            elif kind == "dollar":
                close = sql.find(match.group(), end)
                end = len(sql) if close < 0 else close + (end - start)
                restart = True
                if sql[end : end + 1] in _WORDY_STARTS:
                    pattern = _TOKEN_AFTER_TOKEN_RE
            yield kind, start, end
            pos = end
            if restart:
                break
        else:
            return


def _signed_start(sql: str, seg_start: int, num_start: int) -> int:
    """Start of the number at ``num_start``, moved back over a unary sign."""
    j = num_start - 1
    while j >= seg_start and sql[j] in _WS:
        j -= 1
    if j < seg_start or sql[j] not in "+-":
        return num_start
    k = j - 1
    while k >= seg_start and sql[k] in _WS:
        k -= 1
    if k < seg_start:
        # Nothing but the sign since the previous token. At the very start it
        # is unary; otherwise that token was a literal, a quoted identifier or
        # a comment, and treating the sign as binary is the safe reading.
        return j if seg_start == 0 else num_start
    if sql[k] in _UNARY_AFTER_CHARS:
        return j
    # Walk back over the previous word, but no further than the longest
    # keyword of interest: scanning a whole long identifier for every signed
    # number could make the work quadratic.
    w = k
    while w >= seg_start and k - w <= _LONGEST_UNARY_AFTER_WORD and _in_word(sql[w]):
        w -= 1
    if w >= seg_start and _in_word(sql[w]):
        return num_start  # longer than any keyword
    return j if _ascii_lower(sql[w + 1 : k + 1]) in _UNARY_AFTER_WORDS else num_start


def _values_list(match: re.Match[str]) -> str:
    return "(" + ", ".join("?" * match.group("tuple").count("?")) + "), ..."


def _fold(chunk: str) -> str:
    text = chunk
    for char in "\t\n\r\f\v":
        if char in text:  # str.translate was 30x slower than these checks
            text = text.replace(char, " ")
    if "  " in text:
        text = _SPACES_RE.sub(" ", text)
    text = _ascii_lower(text)
    if "?" in text:
        if "(" in text:
            text = _IN_RE.sub("(...)", text)
            text = _VALUES_RE.sub(_values_list, text)
        if "[" in text:
            text = _ARRAY_RE.sub("[...]", text)
    return text


def normalize(sql: str) -> str:
    """The statement with comments dropped, literals as ``?`` and case/space folded.

    ``$1``-style parameters, identifiers and operators are kept; quoted
    identifiers are kept verbatim. Lists of literals of any length become
    ``in (...)``, ``array[...]`` and ``values (?, ?), ...``.
    """
    # Quoted identifiers that folding would change split the text into chunks
    # that are folded on their own, so identifiers keep their case and spacing.
    chunks: list[str] = []
    quoted: list[str] = []
    parts: list[str] = []
    last = 0
    for kind, start, end in _scan(sql):
        if kind == "iqid":
            continue  # stays in the plain text, unchanged by folding
        if kind == "num":
            start = _signed_start(sql, last, start)
        parts.append(sql[last:start])
        if kind == "line" or kind == "block":
            parts.append(" ")  # a/**/b is two tokens, not "ab"
        elif kind == "qid":
            chunks.append(_fold("".join(parts)))
            quoted.append(sql[start:end])
            parts = []
        else:
            parts.append("?")
        last = end
    parts.append(sql[last:])
    chunks.append(_fold("".join(parts)))
    chunks[0] = chunks[0].lstrip(" ")
    chunks[-1] = chunks[-1].rstrip(" ;")
    if not quoted:
        return chunks[0]
    return "".join(c + q for c, q in zip(chunks, quoted, strict=False)) + chunks[-1]


def fingerprint(sql: str) -> str:
    """16 hex chars identifying the normalized statement."""
    return blake2b(normalize(sql).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def literals(sql: str) -> list[str]:
    """The literals ``normalize`` replaces, as written (quotes, sign, prefix included)."""
    found: list[str] = []
    last = 0
    for kind, start, end in _scan(sql):
        if kind == "num":
            found.append(sql[_signed_start(sql, last, start) : end])
        elif kind == "str" or kind == "dollar":
            found.append(sql[start:end])
        elif kind == "iqid":
            continue  # as in normalize, so both see the same signs
        last = end
    return found


def is_code_at(sql: str, pos: int) -> bool:
    """Whether ``sql[pos]`` is plain code: not in a literal, comment or quoted identifier."""
    for kind, start, end in _scan(sql):
        if start > pos:
            break
        if pos < end:
            if kind == "iqid":
                # Identifiers in such a run contain no '"', so an odd count
                # of quotes before pos means pos is inside one.
                return sql.count('"', start, pos + 1) % 2 == 0 and sql[pos] != '"'
            return False
    return 0 <= pos < len(sql)


def statement_kind(sql: str) -> str:
    """The first keyword, lowercased (``select``, ``insert``, ``with``...), or ``""``."""
    pos = 0
    while True:
        lead = _LEAD_RE.match(sql, pos)
        pos = lead.end() if lead is not None else pos
        if not sql.startswith("/*", pos):
            break
        pos = _block_end(sql, pos + 2)
    word = _WORD_RE.match(sql, pos)
    return _ascii_lower(word.group()) if word is not None else ""


def split_statements(sql: str) -> list[str]:
    """Split a multi-statement simple Query on top-level ``;``.

    Each statement is returned stripped and without its ``;``. Pieces that
    hold only whitespace and comments are dropped: the server treats them as
    empty queries, and recording them would only add noise. (Semicolons in
    a ``BEGIN ATOMIC`` body are not special-cased.)
    """
    statements: list[str] = []
    begin = 0  # start of the current statement
    content = False  # whether it has anything besides whitespace and comments

    def plain(seg_start: int, seg_end: int) -> None:
        nonlocal begin, content
        semi = sql.find(";", seg_start, seg_end)
        while semi >= 0:
            if content or sql[seg_start:semi].strip(_WS):
                statements.append(sql[begin:semi].strip(_WS))
            begin = seg_start = semi + 1
            content = False
            semi = sql.find(";", seg_start, seg_end)
        content = content or bool(sql[seg_start:seg_end].strip(_WS))

    last = 0
    for kind, start, end in _scan(sql):
        plain(last, start)
        if kind != "line" and kind != "block":
            content = True
        last = end
    plain(last, len(sql))
    if content:
        statements.append(sql[begin:].strip(_WS))
    return statements
