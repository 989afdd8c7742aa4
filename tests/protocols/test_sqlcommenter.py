from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sqlcommenter import (
    MAX_COMMENT_CHARS,
    MAX_TAGS,
    add_comment,
    extract_tags,
    extract_traceparent,
    strip_comment,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TAGS = f"traceparent='{TP}',route='%2Fusers'"
EXPECTED = {"traceparent": TP, "route": "/users"}


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT 1 /*{TAGS}*/",
        f"SELECT 1 /*{TAGS}*/;",
        f"SELECT 1 /*{TAGS}*/ ; \n",
        f"SELECT 1; /*{TAGS}*/",
        f"SELECT 1;\n/*{TAGS}*/\n",
        f"SELECT 1/*{TAGS}*/",
        f"/*{TAGS}*/ SELECT 1",
        f"  /*{TAGS}*/\nSELECT 1;",
        f"/*{TAGS}*/",
        f"SELECT 1 /* {TAGS} */",  # whitespace inside the comment
        f"SELECT 1 /*traceparent = '{TP}' , route = '%2Fusers' ,*/",  # loose spacing, trailing comma
        f"SELECT 1 /*traceparent={TP},route=%2Fusers*/",  # unquoted values
        f"SELECT 1 /*trace%70arent='{TP}',route='%2Fusers'*/",  # encoded key
        f"SELECT 1 /*route='%%2Fusers',traceparent='{TP}'*/",  # OTel-Python's doubled %
        f"SELECT 1 /*{TAGS}*/ /*app:web,controller:users*/",  # a later non-tag comment
        f"SELECT 1 /*app:web*/ /*{TAGS}*/",
        f"SELECT '/*' AS x, '*/' AS y /*{TAGS}*/",  # comment delimiters in literals
        f"SELECT $$ /* $$ /*{TAGS}*/",
        f"SELECT $t$ */ $t$, E'\\' /*' /*{TAGS}*/",
        f"SELECT 1 -- not /*this*/\n/*{TAGS}*/",
    ],
)
def test_extract_tags(sql: str) -> None:
    assert extract_tags(sql) == EXPECTED
    tp = extract_traceparent(sql)
    assert tp is not None and tp.format() == TP


@pytest.mark.parametrize(
    ("body", "tags"),
    [
        ("a='1',b='2'", {"a": "1", "b": "2"}),
        (r"k='it\'s'", {"k": "it's"}),
        (r"k='a\\b'", {"k": "a\\b"}),
        ("k='a,b=c'", {"k": "a,b=c"}),
        ("k='%E2%9C%93%20ok'", {"k": "✓ ok"}),
        ("k='%zz%'", {"k": "%zz%"}),  # invalid escapes are kept as written
        ("k=''", {"k": ""}),
        ("k=", {"k": ""}),
        ("k='1',k='2'", {"k": "2"}),  # last wins
        ("k='multi\nline'", {"k": "multi\nline"}),
    ],
)
def test_value_decoding(body: str, tags: dict[str, str]) -> None:
    assert extract_tags(f"SELECT 1 /*{body}*/") == tags


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "SELECT 1",
        "SELECT 1;",
        "SELECT 1 /* just a comment */",
        "SELECT 1 /*app:web,controller:users*/",  # marginalia format
        "SELECT 1 /**/",
        "SELECT 1 /*   */",
        "SELECT 1 /*/",
        "/*/",
        "*/",
        "SELECT 1 /*k='v' trailing junk*/",
        "SELECT 1 /*k='unterminated*/",
        "SELECT 1 /*'k'='v'*/",
        "SELECT 1 /*k=v w*/",
        "SELECT 1 /*=v*/",
        "SELECT '/* k=''v'' */'",  # the comment is inside a literal
        "SELECT 'x', '/*k=''v''*/' AS c",
        "SELECT $$ /*k='v'*/ $$",
        "SELECT $t$ /*k='v'*/ $t$",
        "SELECT 1 /* outer /*k='v'*/ */",  # nested: the outer comment is not ours
        "SELECT 1 /*k='a*/b'*/",  # the server's comment ends at the first */
        "SELECT 1 /*k='/*'*/",
        "/* outer /*k='v'*/ */ SELECT 1",
        "/*k='v' SELECT 1",
        "SELECT 1 -- /*k='v'*/\n",  # line comments are not sqlcommenter comments
    ],
)
def test_no_tags(sql: str) -> None:
    assert extract_tags(sql) == {}
    assert extract_traceparent(sql) is None
    assert strip_comment(sql) == sql


def test_trailing_comment_wins_over_leading() -> None:
    assert extract_tags("/*a='lead'*/ SELECT 1 /*a='trail'*/") == {"a": "trail"}
    assert extract_tags("/*a='1'*/ /*a='2'*/ SELECT 1") == {"a": "1"}
    assert extract_tags("SELECT 1 /*a='1'*/ /*a='2'*/") == {"a": "2"}


def test_invalid_traceparent_tag() -> None:
    assert extract_traceparent("SELECT 1 /*traceparent='00-nope'*/") is None
    assert extract_traceparent("SELECT 1 /*route='x'*/") is None
    assert extract_traceparent(f"SELECT 1 /*traceparent='{TP.upper()}'*/") is None


def test_caps() -> None:
    many = ",".join(f"k{i}='{i}'" for i in range(MAX_TAGS + 10))
    assert len(extract_tags(f"SELECT 1 /*{many}*/")) == MAX_TAGS
    huge = "x" * MAX_COMMENT_CHARS
    assert extract_tags(f"SELECT 1 /*k='{huge}'*/") == {}
    assert extract_tags(f"/*k='{huge}'*/ SELECT 1") == {}


def test_non_string_input() -> None:
    assert extract_tags(None) == {}  # type: ignore[arg-type]
    assert extract_tags(b"SELECT 1 /*a='b'*/") == {}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sql",
    [
        "x" * 1_000_000 + "*/",
        "/*" * 500_000 + "*/",
        "SELECT 1" + ";" * 1_000_000,
        "SELECT 1" + " \n" * 500_000 + "/*a='b'*/",
        "/*a='b'*/" + " " * 1_000_000,
        "*/" * 500_000,
    ],
)
def test_bounded_work(sql: str) -> None:
    began = time.perf_counter()
    extract_tags(sql)
    strip_comment(sql)
    assert time.perf_counter() - began < 1.0


@pytest.mark.parametrize(
    ("sql", "stripped"),
    [
        (f"SELECT 1 /*{TAGS}*/", "SELECT 1"),
        (f"SELECT 1 /*{TAGS}*/;", "SELECT 1;"),
        (f"SELECT 1; /*{TAGS}*/", "SELECT 1;"),
        (f"SELECT 1\n  /*{TAGS}*/ \n", "SELECT 1 \n"),
        (f"/*{TAGS}*/ SELECT 1", "SELECT 1"),
        (f"/*{TAGS}*/", ""),
        (f"SELECT 1 /*{TAGS}*/ /*app:web*/", "SELECT 1 /*app:web*/"),
        (f"SELECT '/*' /*{TAGS}*/", "SELECT '/*'"),
    ],
)
def test_strip_comment(sql: str, stripped: str) -> None:
    assert strip_comment(sql) == stripped


def test_add_comment_canonical_format() -> None:
    sql = add_comment("SELECT 1", {"traceparent": TP, "route": "/users", "a b": "it's"})
    assert sql == f"SELECT 1 /*a%20b='it%27s',route='%2Fusers',traceparent='{TP}'*/"
    assert add_comment("SELECT 1;  ", {"k": "v"}) == "SELECT 1 /*k='v'*/;"
    assert add_comment("SELECT 1 ;", {"k": "v"}) == "SELECT 1 /*k='v'*/;"
    assert add_comment("", {"k": "v"}) == "/*k='v'*/"
    assert add_comment("SELECT 1", {"k": "*/ /*"}) == "SELECT 1 /*k='%2A%2F%20%2F%2A'*/"


def test_add_comment_without_tags_is_identity() -> None:
    assert add_comment("SELECT 1; ", {}) == "SELECT 1; "


def test_add_comment_after_line_comment_starts_a_new_line() -> None:
    sql = add_comment("SELECT 1 -- note;", {"k": "v"})
    assert sql == "SELECT 1 -- note;\n/*k='v'*/"
    assert extract_tags(sql) == {"k": "v"}
    sql = add_comment("SELECT 1 -- note\n;", {"k": "v"})
    assert sql == "SELECT 1 -- note\n/*k='v'*/;"
    assert extract_tags(sql) == {"k": "v"}


def test_add_comment_rejects_empty_key() -> None:
    with pytest.raises(ValueError):
        add_comment("SELECT 1", {"": "v"})


def test_add_then_strip() -> None:
    sql = "SELECT * FROM t WHERE a = 'x;y';"
    tagged = add_comment(sql, {"traceparent": TP})
    assert extract_traceparent(tagged) is not None
    assert strip_comment(tagged) == sql


# Fragments that tend to confuse comment scanners.
_pieces = st.sampled_from(
    ["/*", "*/", "'", "''", "\\'", "$$", "--", "\n", ";", " ", "=", ",", "k", "v", "%", "%2"]
)
_sqlish = st.lists(st.one_of(_pieces, st.text(max_size=3)), max_size=30).map("".join)


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(st.one_of(st.text(), _sqlish))
def test_extract_never_raises(sql: str) -> None:
    tags = extract_tags(sql)
    assert isinstance(tags, dict)
    assert len(tags) <= MAX_TAGS
    extract_traceparent(sql)
    stripped = strip_comment(sql)
    assert len(stripped) <= len(sql)


_keys = st.text(min_size=1, max_size=20)
_values = st.text(max_size=40)


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(st.one_of(st.text(max_size=50), _sqlish), st.dictionaries(_keys, _values, max_size=5))
def test_add_extract_roundtrip(sql: str, tags: dict[str, str]) -> None:
    tagged = add_comment(sql, tags)
    if tags:
        assert extract_tags(tagged) == tags
