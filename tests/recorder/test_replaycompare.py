"""Comparing a recorded response with a replayed one: paths, headers, bodies, verdicts."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from typing import Any

import pytest

from recorder.replaycompare import (
    EXIT_CODES,
    MAX_DIFFERENCES,
    Comparison,
    ResponseView,
    compare,
    decoded_body,
    verdict,
    volatile_kind,
)
from recorder.replaypaths import IgnorePath, format_path

JSON = ("content-type", "application/json")


def view(
    status: int | None = 200, body: Any = None, *headers: tuple[str, str], **kw: Any
) -> ResponseView:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return ResponseView(status=status, headers=list(headers) or [JSON], body=raw, **kw)


def wheres(comparison: Comparison) -> list[str]:
    return [d.where for d in comparison.differences]


# -- paths ---------------------------------------------------------------------------


def test_paths_print_as_they_are_parsed() -> None:
    assert format_path([]) == "$"
    assert format_path(["items", 0, "id"]) == "$.items[0].id"
    assert format_path(["odd key", "a.b", 'q"']) == '$["odd key"]["a.b"]["q\\""]'
    for text, segments in [
        ("$.items[0].id", ["items", 0, "id"]),
        ('$["odd key"]', ["odd key"]),
        ("$['single']", ["single"]),
        ('$["a.b"].c', ["a.b", "c"]),
    ]:
        assert IgnorePath(text).matches(segments), text


@pytest.mark.parametrize(
    ("pattern", "matched", "unmatched"),
    [
        ("$.items[*].id", [["items", 3, "id"], ["items", 0, "id", "x"]], [["items", 3, "name"]]),
        ("$.*.id", [["a", "id"], [2, "id"]], [["a", "b", "id"]]),
        ("$..updated_at", [["updated_at"], ["a", 1, "updated_at"]], [["created_at"]]),
        ("$..[*]", [["a", 0]], []),
        ("$.user", [["user"], ["user", "name"]], [["users"], ["x", "user"]]),
        ("$", [[], ["anything", 1]], []),
        ("$.items[2]", [["items", 2]], [["items", 1], ["items", "2"]]),
    ],
)
def test_ignore_patterns(
    pattern: str, matched: list[list[Any]], unmatched: list[list[Any]]
) -> None:
    path = IgnorePath(pattern)
    for segments in matched:
        assert path.matches(segments), (pattern, segments)
    for segments in unmatched:
        assert not path.matches(segments), (pattern, segments)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("items.id", "starts with $"),
        ("/created_at", "starts with $"),
        ("$.items[", "unclosed"),
        ("$.items[x]", "is not [N]"),
        ("$.", "name is missing"),
        ("$..", "name is missing"),
        ("status", "cannot be ignored"),
        ("header:", "needs a name"),
        ("$x", "unexpected"),
    ],
)
def test_malformed_ignore_paths_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        IgnorePath(text)


# -- verdicts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "new", "expected"),
    [
        (view(200, {"a": 1}), view(200, {"a": 1}), "same"),
        (view(500, {"e": "boom"}), view(500, {"e": "boom"}), "same"),  # still failing alike
        (view(500, {"e": "boom"}), view(200, {"a": 1}), "fixed"),
        (view(503, b"down"), view(404, {"e": "no such"}), "fixed"),  # a 4xx is not a failure
        (view(200, {"a": 1}), view(500, {"e": "boom"}), "regressed"),
        (view(200, {"a": 1}), view(None, error="connection reset"), "regressed"),
        (view(200, {"a": 1}), view(200, {"a": 2}), "differs"),
        (view(500, {"e": "boom"}), view(502, {"e": "other"}), "differs"),
    ],
)
def test_verdicts(recorded: ResponseView, new: ResponseView, expected: str) -> None:
    comparison = compare(recorded, new)
    got = verdict(recorded_failed=recorded.failed, new_failed=new.failed, comparison=comparison)
    assert got == expected
    assert EXIT_CODES[got] == (0 if expected in ("same", "fixed") else 1)


def test_a_recording_with_an_error_event_counts_as_failed() -> None:
    # The inbound answered 200, but a span of the trace failed (the caller tells us).
    comparison = compare(view(200, {"paid": False}), view(200, {"paid": True}))
    assert verdict(recorded_failed=True, new_failed=False, comparison=comparison) == "fixed"
    same = compare(view(200, {"paid": False}), view(200, {"paid": False}))
    assert verdict(recorded_failed=True, new_failed=False, comparison=same) == "same"


# -- bodies --------------------------------------------------------------------------


def test_json_structural_differences_with_paths() -> None:
    recorded = view(200, {"id": 7, "items": [{"id": 1, "n": "a"}, {"id": 2}], "gone": True})
    new = view(200, {"id": 7, "items": [{"id": 1, "n": "b"}], "extra": None})
    found = {d.where: d for d in compare(recorded, new).differences}
    assert set(found) == {"$.items[0].n", "$.items[1]", "$.gone", "$.extra"}
    assert (found["$.items[0].n"].recorded, found["$.items[0].n"].new) == ("a", "b")
    assert found["$.items[1]"].change == "removed" and found["$.items[1]"].recorded == {"id": 2}
    assert found["$.extra"].change == "added" and "recorded" not in found["$.extra"].as_dict()
    assert found["$.gone"].as_dict() == {"where": "$.gone", "change": "removed", "recorded": True}


def test_json_compares_types_not_just_python_equality() -> None:
    # True == 1 and 1 == 1.0 in Python; only the second is the same JSON number.
    assert wheres(compare(view(200, {"v": True}), view(200, {"v": 1}))) == ["$.v"]
    assert wheres(compare(view(200, {"v": 1}), view(200, {"v": 1.0}))) == []
    assert wheres(compare(view(200, {"v": None}), view(200, {"v": 0}))) == ["$.v"]
    assert wheres(compare(view(200, {"v": {}}), view(200, {"v": []}))) == ["$.v"]


def test_key_order_and_whitespace_do_not_matter_in_json() -> None:
    assert compare(view(200, b'{"a":1,"b":[1,2]}'), view(200, b'{ "b": [1, 2],\n "a": 1 }')) == (
        Comparison(differences=(), body="json")
    )


def test_ignore_paths_apply_to_bodies_and_headers() -> None:
    recorded = view(
        200,
        {"items": [{"id": "a", "v": 1}], "created_at": "2024-01-01T00:00:00Z"},
        JSON,
        ("location", "/orders/1"),
    )
    new = view(
        200,
        {"items": [{"id": "b", "v": 1}], "created_at": "2025-02-02T10:00:00Z"},
        JSON,
        ("location", "/orders/2"),
    )
    assert wheres(compare(recorded, new)) == ["header:location", "$.items[0].id", "$.created_at"]
    ignored = compare(recorded, new, ["$.items[*].id", "$..created_at", "header:Location"])
    assert ignored.differences == () and ignored.ignored == 3
    # Ignoring one member leaves its siblings compared.
    partial = compare(recorded, new, ["$.items[*].v"])
    assert wheres(partial) == ["header:location", "$.items[0].id", "$.created_at"]


def test_volatile_values_are_differences_that_say_what_they_look_like() -> None:
    recorded = view(200, {
        "request": "0b7e5a52-6f0a-4c1e-9a53-3f5c1a2b9c10",
        "at": "2024-05-01T12:00:00.123+02:00",
        "epoch_ms": 1714557600123,
        "trace": "4bf92f3577b34da6a3ce929d0e0e4736",
        "note": "created order 7 at 2024-05-01 12:00:00",
        "count": 3,
    })  # fmt: skip
    new = view(200, {
        "request": "9d1c2e6b-0000-4a4a-8b8b-aaaaaaaaaaaa",
        "at": "2025-06-02T08:30:01Z",
        "epoch_ms": 1750000000000,
        "trace": "0af7651916cd43dd8448eb211c80319c",
        "note": "created order 7 at 2025-06-02 08:30:01",
        "count": 4,
    })  # fmt: skip
    found = {d.where: d.volatile for d in compare(recorded, new).differences}
    assert found == {
        "$.request": "uuid",
        "$.at": "timestamp",
        "$.epoch_ms": "epoch time",
        "$.trace": "random id",
        "$.note": "timestamp",
        "$.count": None,
    }
    # A changed word next to a timestamp is not volatile.
    assert volatile_kind("paid at 2024-05-01T12:00:00Z", "failed at 2025-05-01T12:00:00Z") is None
    assert volatile_kind("a", "b") is None and volatile_kind(True, 1_714_557_600) is None


def test_text_bodies_report_the_first_differing_line() -> None:
    text = ("content-type", "text/plain")
    recorded = view(200, b"line one\nline two\nline three\n", text)
    new = view(200, b"line one\nline 2\nline three\n", text)
    comparison = compare(recorded, new)
    assert comparison.body == "text"
    (difference,) = comparison.differences
    assert (difference.where, difference.recorded, difference.new) == ("$", "line two", "line 2")
    assert difference.detail == "first difference at line 2"
    assert compare(recorded, new, ["$"]).ignored == 1


def test_json_against_text_is_one_body_difference() -> None:
    comparison = compare(view(200, {"ok": True}), view(500, b"Internal Server Error"))
    assert wheres(comparison) == ["status", "$"]


def test_binary_bodies_name_the_first_differing_byte() -> None:
    octets = ("content-type", "application/octet-stream")
    comparison = compare(view(200, b"\xff\x00\x01\x02", octets), view(200, b"\xff\x00\x09", octets))
    (difference,) = comparison.differences
    assert comparison.body == "binary"
    assert difference.detail == "4 bytes recorded, 3 now; first difference at byte 2"


def test_a_truncated_recording_compares_the_kept_prefix() -> None:
    text = ("content-type", "text/plain")
    recorded = ResponseView(status=200, headers=[text], body=b"abcdef", truncated=True)
    assert compare(recorded, view(200, b"abcdefghij", text)).differences == ()
    changed = compare(recorded, view(200, b"abcXefghij", text)).differences
    assert [d.detail for d in changed] == ["first difference at line 1 (recorded body truncated)"]


def test_encoded_bodies_are_compared_decoded() -> None:
    body = json.dumps({"a": [1, 2, 3]}).encode()
    gz = view(200, gzip.compress(body), JSON, ("content-encoding", "gzip"))
    assert decoded_body(gz) == body
    deflated = view(200, zlib.compress(body), JSON, ("content-encoding", "deflate"))
    assert decoded_body(deflated) == body
    assert compare(gz, view(200, {"a": [1, 2, 3]})).differences[0].where == (
        "header:content-encoding"
    )
    assert compare(gz, deflated, ["header:content-encoding"]).differences == ()
    changed = view(200, gzip.compress(b'{"a": [1, 2]}'), JSON, ("content-encoding", "gzip"))
    assert wheres(compare(gz, changed)) == ["$.a[2]"]


def test_too_many_differences_are_counted_not_listed() -> None:
    recorded = view(200, list(range(MAX_DIFFERENCES + 20)))
    new = view(200, [n + 1 for n in range(MAX_DIFFERENCES + 20)])
    comparison = compare(recorded, new)
    assert len(comparison.differences) == MAX_DIFFERENCES and comparison.left_out == 20


# -- headers -------------------------------------------------------------------------


def test_only_headers_that_matter_are_compared() -> None:
    recorded = view(200, {"a": 1}, JSON, ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                    ("server", "a"), ("x-flux-trace-id", "1" * 32), ("etag", '"1"'),
                    ("content-length", "8"), ("x-request-id", "r1"))  # fmt: skip
    new = view(200, {"a": 1}, JSON, ("date", "Tue, 02 Jan 2024 00:00:00 GMT"), ("server", "b"),
               ("traceparent", "00-" + "2" * 32 + "-" + "3" * 16 + "-01"))  # fmt: skip
    assert compare(recorded, new).differences == ()


def test_header_normalisation() -> None:
    def differ(name: str, old: str | list[str], new: str | list[str]) -> list[str]:
        olds = [old] if isinstance(old, str) else old
        news = [new] if isinstance(new, str) else new
        a = ResponseView(status=200, headers=[(name, v) for v in olds])
        b = ResponseView(status=200, headers=[(name.upper(), v) for v in news])
        return wheres(compare(a, b))

    assert (
        differ("content-type", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8")
        == []
    )
    assert differ("content-type", "text/html", "application/json") == ["header:content-type"]
    assert differ("cache-control", "no-store, max-age=0", "max-age=0,No-Store") == []
    assert differ("cache-control", "no-store", "public, max-age=60") == ["header:cache-control"]
    # Cookie values are minted per response: names only, order free.
    assert (
        differ("set-cookie", ["sid=abc; HttpOnly", "csrf=1"], ["csrf=2", "sid=xyz; Secure"]) == []
    )
    assert differ("set-cookie", ["sid=abc"], ["session=abc"]) == ["header:set-cookie"]
    assert differ("location", "/orders/1", "/orders/1") == []


def test_header_added_or_removed() -> None:
    a = ResponseView(status=302, headers=[("location", "/next")])
    b = ResponseView(status=302, headers=[])
    (removed,) = compare(a, b).differences
    assert (removed.where, removed.change, removed.recorded) == (
        "header:location",
        "removed",
        "/next",
    )
    (added,) = compare(b, a).differences
    assert (added.change, added.new) == ("added", "/next")
    assert compare(a, b, ["header:*"]).ignored == 1
