"""Texts that differ only in constants and comments share one plan (recorder.mutation.shapes):
what is shaped, what is not, and that a carried-over rewrite is the one a full plan gives."""

from __future__ import annotations

import random

import pytest

from recorder.mutation.forms import Rewrite
from recorder.mutation.identity import TableIdentity
from recorder.mutation.planner import Planner
from recorder.mutation.shapes import ShapeCache, carry_over, shape

ACCOUNTS = TableIdentity(16384, "public", "accounts", "r", ("id",), "primary key",
                         columns=("id", "balance", "note"))  # fmt: skip
HISTORY = TableIdentity(16385, "public", "history", "r", (), "whole row",
                        columns=("id", "delta", "note"))  # fmt: skip
SCOPE = ("db", "app")


def test_constants_and_comments_are_the_parts_that_vary() -> None:
    a = shape("/* a=1 */ UPDATE t SET v = 'x' WHERE id = 12 -- end")
    b = shape("/* traceparent='00-ab' */ UPDATE t SET v = 'it''s' WHERE id = 7 -- other")
    assert a is not None and b is not None and a.key == b.key
    assert len(a.pieces) == 4  # two comments, two constants
    quoted = [shape(f'UPDATE "t{n}" SET "v 2" = 3') for n in (1, 2)]  # identifiers stay
    plain = [shape(f"UPDATE t{n} SET v = 1") for n in (2, 3)]
    for one, other in (quoted, plain):
        assert one is not None and other is not None and one.key != other.key


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("SELECT 1", "SELECT 1.5"),  # ICONST and FCONST are different tokens
        ("SELECT 1", "SELECT 12345678901"),  # past int4: FCONST
        ("SELECT 1", "SELECT '1'"),
        ("SELECT 1", "SELECT  1"),  # whitespace is part of the shape
        ("SELECT x1", "SELECT x2"),  # digits of an identifier are not constants
        ("SELECT $1", "SELECT $2"),
    ],
)
def test_different_shapes(one: str, other: str) -> None:
    first, second = shape(one), shape(other)
    assert first is None or second is None or first.key != second.key


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET v = $$x$$",  # dollar quotes
        "UPDATE t SET v = $q$x$q$",
        r"UPDATE t SET v = E'a\'b'",  # backslash escapes
        r"UPDATE t SET v = 'a\'",  # standard_conforming_strings = off would read on
        "UPDATE t SET v = 1 /* a /* nested */ */",
        "UPDATE t SET v = 'unterminated",
        'UPDATE "t SET v = 1',
        "UPDATE t SET v = 1 /* unterminated",
        "UPDATE t SET v = v",  # nothing varies: the exact-text cache serves it
    ],
)
def test_not_shaped(sql: str) -> None:
    assert shape(sql) is None


def test_a_copied_span_ending_inside_a_constant_is_not_carried_over() -> None:
    old, new = shape("UPDATE t SET v = 'abc'"), shape("UPDATE t SET v = 'abcdef'")
    assert old is not None and new is not None
    inside = Rewrite("UPDATE t SET v = 'ab", (), ((0, 0, 20),), True)
    assert carry_over(inside, old, new, "UPDATE t SET v = 'abcdef'") is None
    whole = Rewrite("X UPDATE t SET v = 'abc' Y", (), ((2, 0, 22),), True)
    carried = carry_over(whole, old, new, "UPDATE t SET v = 'abcdef'")
    assert carried is not None and carried.sql == "X UPDATE t SET v = 'abcdef' Y"
    assert carried.segments == ((2, 0, 25),)


def test_a_rewrite_that_depends_on_a_constant_is_never_carried_over() -> None:
    cache = ShapeCache()
    scope = ("db", "app", 15, False)
    texts = ["UPDATE t SET v = 1", "UPDATE t SET v = 2", "UPDATE t SET v = 3"]
    for sql in texts[:2]:
        form = shape(sql)
        assert form is not None and cache.get(form, sql, scope, 0) is None
        # added text that repeats the constant: carrying the first over gives a stale copy
        cache.learn(form, sql, scope, 0, Rewrite(f"{sql} /* {sql[-1]} */", (), ((0, 0, 18),), True))
    form = shape(texts[2])
    assert form is not None and cache.get(form, texts[2], scope, 0) is None


def _texts(rng: random.Random) -> list[str]:
    n, delta, note = rng.randint(1, 10**6), rng.randint(-5000, 5000), rng.choice(["a", "b''c", ""])
    return [
        f"UPDATE accounts SET balance = balance + {delta} WHERE id = {n};",
        f"/* traceparent='00-{rng.getrandbits(64):016x}-01' */ UPDATE accounts SET note = "
        f"'{note}' WHERE id = {n} RETURNING *",
        f"INSERT INTO history (id, delta, note) VALUES ({n}, {delta}, '{note}')",
        f"DELETE FROM accounts WHERE id = {n}; UPDATE history SET delta = {delta} WHERE id = {n}",
        f"INSERT INTO accounts VALUES ({n}, {delta}.5, 'x') ON CONFLICT (id) DO UPDATE SET "
        f"balance = accounts.balance + {delta}",
        f"WITH w AS (UPDATE accounts SET balance = {delta} WHERE id = {n} RETURNING *) "
        f"SELECT * FROM w",
    ]


@pytest.mark.parametrize("major", [15, 18])
@pytest.mark.parametrize("query", [False, True])
def test_carried_over_rewrites_equal_full_plans(major: int, query: bool) -> None:
    rng = random.Random(major)
    planner, reference = Planner(), Planner()
    for p in (planner, reference):
        p.identities.put(SCOPE, "accounts", ACCOUNTS)
        p.identities.put(SCOPE, "history", HISTORY)
    shapes = set()
    uncaptured = 0  # texts planned in full every time: what runs uncaptured may not be for long
    for _ in range(60):
        for sql in _texts(rng):
            form = shape(sql)
            assert form is not None
            fresh = Planner(reference.identities)  # no cache of any kind
            expected = fresh.plan(sql, "db", major, "app", query=query)
            assert expected is not None
            if any(
                p.uncaptured or (p.capture and p.capture.uncaptured) for p in expected.statements
            ):
                uncaptured += 1
            else:
                shapes.add(form.key)
            assert planner.plan(sql, "db", major, "app", query=query) == expected, sql
    assert planner.shapes.carried > 0
    # a shape is parsed twice (learnt, then checked), then carried over
    assert planner.parses <= 2 * len(shapes) + uncaptured


def test_a_change_of_what_is_known_about_tables_plans_in_full_again() -> None:
    planner = Planner()
    planner.identities.put(SCOPE, "accounts", ACCOUNTS)
    for n in range(3):
        planner.plan(f"UPDATE accounts SET balance = {n} WHERE id = 1", "db", 15, "app")
    assert planner.shapes.carried == 1
    planner.identities.skip(SCOPE, "accounts", "rewrite-failed-42501")
    skipped = planner.plan("UPDATE accounts SET balance = 9 WHERE id = 1", "db", 15, "app")
    assert skipped is not None and not skipped.changed
    assert skipped.statements[0].uncaptured == "rewrite-failed-42501"
    assert planner.shapes.carried == 1
    again = planner.plan("UPDATE accounts SET balance = 8 WHERE id = 1", "db", 15, "app")
    assert again is not None and again.statements[0].uncaptured == "rewrite-failed-42501"


def test_identity_only_rewrites_are_not_carried_over() -> None:
    planner = Planner()
    for n in range(4):
        planned = planner.plan(f"DELETE FROM accounts WHERE id = {n}", "db", 15, "app")
        assert planned is not None and planned.statements[0].capture is not None
        assert planned.statements[0].capture.form == "identity-only"
    assert planner.shapes.carried == 0


def test_the_recorder_normalizes_texts_of_one_shape_alike() -> None:
    from protocols.sqltext import fingerprint, normalize
    from recorder import pgdecode

    rng = random.Random(7)
    texts = [sql for _ in range(20) for sql in _texts(rng)]
    texts += [f"SELECT * FROM t WHERE v IN ({', '.join(['1'] * n)})" for n in (1, 2, 3, 2)]
    for sql in texts:
        text, digest, _ = pgdecode.normalized(sql)
        assert (text, digest) == (normalize(sql), fingerprint(sql)), sql


def test_long_texts_are_not_shaped() -> None:
    values = ", ".join(f"({n})" for n in range(5000))
    assert shape(f"INSERT INTO t VALUES {values}") is None
