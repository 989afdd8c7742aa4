from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sqltext import (
    fingerprint,
    is_code_at,
    literals,
    normalize,
    split_statements,
    statement_kind,
)

TP_COMMENT = "/*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/"

NORMALIZE_CASES = [
    # basics, case and whitespace
    ("SELECT 1", "select ?"),
    ("SeLeCt A FrOm B", "select a from b"),
    ("  SELECT\n\t a ,\r\n b   FROM   t ;  ", "select a , b from t"),
    ("SELECT 1;;", "select ?"),
    ("SELECT 1; SELECT 2", "select ?; select ?"),
    ("", ""),
    ("   ;  ", ""),
    # string literals
    ("select * from t where a = 'x'", "select * from t where a = ?"),
    ("SELECT 'it''s' FROM t", "select ? from t"),
    ("SELECT '' , ''''", "select ? , ?"),
    ("SELECT 'a' 'b'", "select ? ?"),
    ("select 'x'||'y'", "select ?||?"),
    ("SELECT 'C:\\path\\', 1", "select ?, ?"),  # backslash is not an escape in '...'
    ("SELECT 'multi\nline'", "select ?"),
    ("SELECT 'ünïcödé ✓'", "select ?"),
    ("SELECT 'abc", "select ?"),  # unterminated: to the end
    # comment markers inside strings
    ("SELECT '--not a comment', a FROM t -- real\nWHERE b = 2", "select ?, a from t where b = ?"),
    ("SELECT '/* x */' AS c", "select ? as c"),
    # comments
    ("SELECT 1 -- bye", "select ?"),
    ("SELECT 1 -- bye\r\n, 2", "select ? , ?"),
    ("SELECT /* a /* b */ still comment */ 1", "select ?"),
    ("SELECT a/**/FROM t", "select a from t"),
    ("SELECT 1 /* never closed", "select ?"),
    ("SELECT 1 /*/ still open */ , 2", "select ? , ?"),
    (f"SELECT * FROM t WHERE id = 7 {TP_COMMENT}", "select * from t where id = ?"),
    (f"{TP_COMMENT} SELECT 1;", "select ?"),
    ("SELECT 1 */ 2", "select ? */ ?"),  # not a comment opener
    # dollar quotes
    ("SELECT $$it's $1 -- x$$", "select ?"),
    ("SELECT $fn$ body $$ inner $$ $fn$, 2", "select ?, ?"),
    ("SELECT $a$x$b$y$a$", "select ?"),
    ("SELECT $$abc", "select ?"),
    ("SELECT a$b$ FROM t", "select a$b$ from t"),  # '$' inside an identifier
    ("SELECT $_$;$_$", "select ?"),
    ("SELECT 0$$x$$, $$a$$$$b$$, $$c$$1", "select ??, ??, ??"),  # a token ends a word
    # escape and prefixed strings
    ("SELECT E'it\\'s', e'\\\\'", "select ?, ?"),
    ("SELECT E'a''b\\n'", "select ?"),
    ("SELECT E'\\' -- still string'", "select ?"),
    ("SELECT B'1010', X'1F', N'x', U&'d\\0061t'", "select ?, ?, ?, ?"),
    ("SELECT u&'x' UESCAPE '!'", "select ? uescape ?"),
    ("SELECT DATE '2024-01-01', interval '1 day'", "select date ?, interval ?"),
    ("SELECT type'x'", "select type?"),  # 'e' ends a word here, no E-string
    # positional parameters
    ("SELECT * FROM t WHERE id = $1 AND x = $12", "select * from t where id = $1 and x = $12"),
    ("SELECT $1::int", "select $1::int"),
    # numbers
    ("SELECT a-1, a - 1, a+1, a*2", "select a-?, a - ?, a+?, a*?"),
    ("SELECT -1, f(-3), 4 - -5, (+6)", "select ?, f(?), ? - ?, (?)"),
    (
        "SELECT x WHERE a = -2.5 AND b BETWEEN -1 AND -2",
        "select x where a = ? and b between ? and ?",
    ),
    ("SELECT a FROM t LIMIT 10 OFFSET 20", "select a from t limit ? offset ?"),
    ("SELECT 1e10, 1.5E-3, 2e+7, .5, 5., 1_000_000", "select ?, ?, ?, ?, ?, ?"),
    ("FOR i IN 1..10 LOOP", "for i in ?..? loop"),
    ("SELECT 0x1F, 0o17, 0b101, 0X_FF, 007", "select ?, ?, ?, ?, ?"),
    ("SELECT arr[1:2], a<>3, b!=4, c>=5", "select arr[?:?], a<>?, b!=?, c>=?"),
    ("SELECT '1'::int, 1::text", "select ?::int, ?::text"),
    # identifiers with digits
    ("SELECT t1.col_2, x3, _4 FROM t1", "select t1.col_2, x3, _4 from t1"),
    ("SELECT a.b1 FROM s2.t3", "select a.b1 from s2.t3"),
    # quoted identifiers
    ('SELECT "My Col", "UPPER" FROM "Some  Table"', 'select "My Col", "UPPER" from "Some  Table"'),
    ('SELECT "a""b", "x;y" FROM t', 'select "a""b", "x;y" from t'),
    ('SELECT "t"."id" FROM "t" WHERE "t"."id" = 42', 'select "t"."id" from "t" where "t"."id" = ?'),
    ('SELECT "1", "it\'s", "--x" FROM T', 'select "1", "it\'s", "--x" from t'),
    ('SELECT U&"d\\0061t" FROM t', 'select u&"d\\0061t" from t'),
    ('SELECT "abc', 'select "abc'),
    # unicode
    ("SELECT nähe, 'ü' FROM Straße WHERE ß = 1", "select nähe, ? from straße where ß = ?"),
    ("SELECT ÄRGER FROM t", "select Ärger from t"),  # only ASCII letters fold, as in Postgres
    ("SELECT x१ FROM t", "select x१ from t"),
    # operators that look like literals
    (
        "SELECT data->>'key', data ? 'k', data #> '{a}' FROM t",
        "select data->>?, data ? ?, data #> ? from t",
    ),
    # variable-length lists
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", "select * from t where id in (...)"),
    ("SELECT * FROM t WHERE id IN ('a')", "select * from t where id in (...)"),
    ("SELECT * FROM t WHERE id NOT IN (1,2)", "select * from t where id not in (...)"),
    ("SELECT * FROM t WHERE id IN( -1 , 2 )", "select * from t where id in(...)"),
    ("SELECT * FROM t WHERE id IN (SELECT 1)", "select * from t where id in (select ?)"),
    ("SELECT * FROM t WHERE id IN ($1, $2)", "select * from t where id in ($1, $2)"),
    ("SELECT * FROM t WHERE id IN (a, 1)", "select * from t where id in (a, ?)"),
    ("SELECT * FROM t WHERE login(1, 2)", "select * from t where login(?, ?)"),
    (
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
        "insert into t (a, b) values (?, ?), ...",
    ),
    ("INSERT INTO t VALUES (1,2)", "insert into t values (?, ?), ..."),
    ("INSERT INTO t VALUES(1)", "insert into t values(?), ..."),
    ("INSERT INTO t VALUES (1, now())", "insert into t values (?, now())"),
    ("SELECT ARRAY[1, 2, 3], array[4]", "select array[...], array[...]"),
    ("SELECT myarray[1]", "select myarray[?]"),
]


@pytest.mark.parametrize(("sql", "expected"), NORMALIZE_CASES)
def test_normalize(sql: str, expected: str) -> None:
    assert normalize(sql) == expected
    assert normalize(expected) == expected


def test_fingerprint_format() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint("SELECT 1"))
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(""))


SAME_FINGERPRINT = [
    [
        "SELECT * FROM t WHERE id = 1",
        "select * from t where id = 42",
        "SELECT *\n  FROM t\n WHERE id = -7",
    ],
    [
        "SELECT * FROM t WHERE a = 'x'",
        "SELECT * FROM t WHERE a = 'y''z'",
        "SELECT * FROM t WHERE a = $$q$$",
    ],
    ["SELECT 1", "SELECT 2.5;", "  SELECT 1e3  ", "SELECT 1 -- comment", "SELECT /* c */ 1"],
    ["SELECT * FROM t WHERE id IN (1)", "SELECT * FROM t WHERE id IN (1, 2, 3, 4)"],
    [
        "INSERT INTO t (a, b) VALUES (1, 2)",
        "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)",
        "insert into t (a, b) values ('x', 'y'), ('z', 'w')",
    ],
    ["SELECT 1 " + TP_COMMENT, "SELECT 2 /*traceparent='00-aaaa'*/", "SELECT 3"],
    ['SELECT "Col" FROM t', 'select "Col"\nfrom T'],
]


@pytest.mark.parametrize("group", SAME_FINGERPRINT)
def test_fingerprint_ignores_literals_whitespace_and_comments(group: list[str]) -> None:
    assert len({fingerprint(sql) for sql in group}) == 1


DIFFERENT_FINGERPRINT = [
    "SELECT * FROM t WHERE id = 1",
    "SELECT * FROM u WHERE id = 1",
    "SELECT * FROM t WHERE idx = 1",
    "SELECT * FROM t WHERE id > 1",
    "SELECT * FROM t WHERE id = $1",
    "SELECT * FROM t WHERE id = $2",
    "SELECT id FROM t WHERE id = 1",
    'SELECT * FROM "T" WHERE id = 1',
    "SELECT * FROM t WHERE id = a - 1",
    "INSERT INTO t (a, b) VALUES (1, 2)",
    "INSERT INTO t (a, b, c) VALUES (1, 2, 3)",
    "SELECT * FROM t WHERE id IN (SELECT 1)",
]


def test_fingerprint_differs_on_structure() -> None:
    prints = [fingerprint(sql) for sql in DIFFERENT_FINGERPRINT]
    assert len(set(prints)) == len(prints)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT 'a', 1, -2.5, $$x$$, E'y\\'', $1, t3 FROM t WHERE a - 4 = .5",
            ["'a'", "1", "-2.5", "$$x$$", "E'y\\''", "4", ".5"],
        ),
        ("SELECT x FROM t", []),
        ("SELECT '--' -- 'not a literal'\n, /* 3 */ 0x1F", ["'--'", "0x1F"]),
        ('SELECT "1" FROM t WHERE "t"."a" = -5', ["-5"]),
        ("INSERT INTO t VALUES (1, 'a'), (2, 'b')", ["1", "'a'", "2", "'b'"]),
    ],
)
def test_literals(sql: str, expected: list[str]) -> None:
    assert literals(sql) == expected


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"),
        ("  \n insert into t values (1)", "insert"),
        ("/* c */ -- x\n (SELECT 1) UNION (SELECT 2)", "select"),
        ("((select 1))", "select"),
        ("/* a /* nested */ b */ UPDATE t SET a = 1", "update"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "with"),
        ("begin", "begin"),
        ("Commit;", "commit"),
        (f"{TP_COMMENT} DELETE FROM t", "delete"),
        ("", ""),
        ("   ", ""),
        ("-- only a comment", ""),
        ("/* unterminated SELECT", ""),
        ("123", ""),
        ('"quoted" x', ""),
        (";", ""),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT ';'; SELECT \";\"", ["SELECT ';'", 'SELECT ";"']),
        ("SELECT $$a;b$$; SELECT $t$;$t$", ["SELECT $$a;b$$", "SELECT $t$;$t$"]),
        ("SELECT E'\\';'; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
        ("SELECT 1 -- c;\n; SELECT 2", ["SELECT 1 -- c;", "SELECT 2"]),
        ("SELECT /* ; */ 1", ["SELECT /* ; */ 1"]),
        ("/* lead */ SELECT 1;", ["/* lead */ SELECT 1"]),
        ("SELECT 1; -- trailing", ["SELECT 1"]),
        ("SELECT 1; /* just a comment */ ;", ["SELECT 1"]),
        ('SELECT "a;b"."c" FROM "t;"; SELECT 2', ['SELECT "a;b"."c" FROM "t;"', "SELECT 2"]),
        ("\n  SELECT 1 ;\n\n SELECT 2\n", ["SELECT 1", "SELECT 2"]),
        (";;  ; ", []),
        ("", []),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


def test_is_code_at() -> None:
    sql = 'SELECT \'a;b\', "c;d", "X;Y", $$e;f$$, g /* h;i */ ; -- j;k'
    code = {i for i, char in enumerate(sql) if char == ";" and is_code_at(sql, i)}
    assert code == {sql.index(" ; ") + 1}
    assert is_code_at(sql, 0)
    assert not is_code_at(sql, sql.index('"c'))
    assert not is_code_at(sql, sql.index('d"') + 1)
    assert is_code_at(sql, sql.index('d"') + 2)
    assert not is_code_at(sql, len(sql))


# Fragments that exercise the lexer's corners, mixed with arbitrary text.
_pieces = st.sampled_from(
    [
        "'", "''", '"', '""', "$", "$$", "$a$", "$1", "--", "/*", "*/", "\n", " ", "\t", ";",
        "-", "+", "e", "E", "b", "X", "U&", "u", "&", "\\", ".", "0", "1", "9", "0x", "_", "e5",
        "in", "IN", "values", "array", "(", ")", "[", "]", ",", "?", "...", "select", "Ä", "é",
    ]
)  # fmt: skip
_sqlish = st.lists(st.one_of(_pieces, st.text(max_size=3)), max_size=40).map("".join)
_any_sql = st.one_of(st.text(), _sqlish)


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(_any_sql)
def test_normalize_never_raises_and_is_idempotent(sql: str) -> None:
    once = normalize(sql)
    assert normalize(once) == once
    assert fingerprint(sql) == fingerprint(once)


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(_any_sql)
def test_other_functions_never_raise(sql: str) -> None:
    assert all(isinstance(x, str) for x in literals(sql))
    assert isinstance(statement_kind(sql), str)
    for statement in split_statements(sql):
        assert statement and statement in sql


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(st.lists(st.sampled_from(["1", "'a'", "-2", "$$x$$", "0x1f", "'it''s'"]), min_size=1))
def test_in_lists_of_any_length_fingerprint_alike(values: list[str]) -> None:
    sql = (
        f"SELECT * FROM t WHERE id IN ({', '.join(values)}) AND v = ANY(ARRAY[{','.join(values)}])"
    )
    assert normalize(sql) == "select * from t where id in (...) and v = any(array[...])"


@pytest.mark.parametrize(
    "sql",
    [
        "x" * 300_000 + " - 1",
        "$a" * 100_000,
        "'" * 100_001,
        "/*" * 100_000,
        "e'" + "\\'" * 100_000,
        '"' + "a" * 300_000,
        ('"a".' * 100_000) + "x",
        "- 1 " * 50_000,
        "SELECT " + ", ".join(["1"] * 50_000),
        "VALUES " + ", ".join(["(1, 'a')"] * 30_000),
        "$" + "a" * 300_000,
    ],
)
def test_linear_time_on_large_input(sql: str) -> None:
    began = time.perf_counter()
    normalize(sql)
    literals(sql)
    split_statements(sql)
    statement_kind(sql)
    assert time.perf_counter() - began < 3.0
