from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.traceparent import TraceParent, child, new_traceparent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
FORMAT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

hex_ids = st.integers(min_value=1, max_value=2**128 - 1).map(lambda n: f"{n:032x}")
hex_parents = st.integers(min_value=1, max_value=2**64 - 1).map(lambda n: f"{n:016x}")


def test_parse_spec_example() -> None:
    tp = parse_traceparent(VALID)
    assert tp == TraceParent(version=0, trace_id=TRACE, parent_id=PARENT, flags=1)
    assert tp.sampled
    assert tp.format() == VALID


def test_unsampled_and_other_flags() -> None:
    tp = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
    assert tp is not None and not tp.sampled and tp.flags == 0
    tp = parse_traceparent(f"00-{TRACE}-{PARENT}-09")
    assert tp is not None and tp.sampled and tp.flags == 9


@pytest.mark.parametrize("value", [f"  {VALID}", f"{VALID}\t", f"\n {VALID} \r\n"])
def test_surrounding_whitespace_is_tolerated(value: str) -> None:
    assert parse_traceparent(value) == parse_traceparent(VALID)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "00",
        VALID.upper(),  # hex must be lowercase
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"0A-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly 55 chars
        f"00-{TRACE}-{PARENT}-011",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}0-{PARENT}-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00_{TRACE}_{PARENT}_01",
        f"00-{TRACE}-{PARENT}01-",
        f"0-0{TRACE}-{PARENT}-01",
        f"00-{TRACE[:-1]}g-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-0g",
        f"00 -{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01\x00",
        f"01-{TRACE}-{PARENT}-01x",  # later versions: extra fields only after a dash
        f"01-{TRACE}-{PARENT}-01.foo",
        "\u0660\u0660-" + TRACE + "-" + PARENT + "-01",  # non-ASCII digits
    ],
)
def test_invalid_values_yield_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_non_string_yields_none() -> None:
    assert parse_traceparent(None) is None  # type: ignore[arg-type]
    assert parse_traceparent(VALID.encode()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        f"01-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-what-the-future-will-look-like",
        f"fe-{TRACE}-{PARENT}-03-",
    ],
)
def test_higher_versions_parse_the_known_fields(value: str) -> None:
    tp = parse_traceparent(value)
    assert tp is not None
    assert (tp.trace_id, tp.parent_id) == (TRACE, PARENT)
    assert tp.version == int(value[:2], 16)
    assert tp.format() == value[:55]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": 255},
        {"version": -1},
        {"trace_id": "0" * 32},
        {"trace_id": TRACE.upper()},
        {"trace_id": TRACE[:-1]},
        {"parent_id": "0" * 16},
        {"parent_id": PARENT + "0"},
        {"flags": 256},
        {"flags": -1},
    ],
)
def test_constructor_rejects_invalid_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"version": 0, "trace_id": TRACE, "parent_id": PARENT, "flags": 1}
    fields.update(kwargs)
    with pytest.raises(ValueError):
        TraceParent(**fields)  # type: ignore[arg-type]


def test_traceparent_is_frozen_keyword_only() -> None:
    tp = new_traceparent()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tp.flags = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        TraceParent(0, TRACE, PARENT, 1)  # type: ignore[call-arg]


def test_new_traceparent_is_random_and_valid() -> None:
    a, b = new_traceparent(), new_traceparent()
    assert FORMAT_RE.fullmatch(a.format())
    assert a.sampled and a.flags == 1 and a.version == 0
    assert a.trace_id != b.trace_id and a.parent_id != b.parent_id
    assert parse_traceparent(a.format()) == a


def test_new_traceparent_with_given_ids() -> None:
    tp = new_traceparent(trace_id=TRACE, parent_id=PARENT, sampled=False)
    assert tp.format() == f"00-{TRACE}-{PARENT}-00"
    assert new_traceparent(trace_id=TRACE).trace_id == TRACE
    with pytest.raises(ValueError):
        new_traceparent(trace_id="0" * 32)
    with pytest.raises(ValueError):
        new_traceparent(parent_id="xyz")


def test_child_keeps_trace_and_replaces_parent() -> None:
    parent = parse_traceparent(f"00-{TRACE}-{PARENT}-01")
    assert parent is not None
    kid = child(parent)
    assert kid.trace_id == TRACE
    assert kid.parent_id != PARENT
    assert kid.flags == 1 and kid.version == 0


def test_child_of_future_version_is_version_00_without_reserved_flags() -> None:
    parent = parse_traceparent(f"cc-{TRACE}-{PARENT}-ff-extra")
    assert parent is not None
    kid = child(parent)
    assert kid.version == 0
    assert kid.flags == 0x03  # sampled and random kept, reserved bits cleared
    assert parse_traceparent(kid.format()) == kid


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(st.text())
def test_parse_never_raises(value: str) -> None:
    tp = parse_traceparent(value)
    if tp is not None:
        assert parse_traceparent(tp.format()) is not None


@settings(deadline=None)  # timing is asserted separately; shared CI is noisy
@given(hex_ids, hex_parents, st.integers(0, 255), st.integers(0, 254))
def test_format_parse_roundtrip(trace: str, parent: str, flags: int, version: int) -> None:
    tp = TraceParent(version=version, trace_id=trace, parent_id=parent, flags=flags)
    assert parse_traceparent(tp.format()) == tp
