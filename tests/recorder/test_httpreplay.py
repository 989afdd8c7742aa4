"""HTTP replay matching on events made the way the proxy makes them (``exchange_event``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recorder.crypto import EnvelopeSealer
from recorder.httpcapture import Attribution, HttpExchange, exchange_event
from recorder.httpreplay import CallRequest, Hit, HttpReplayIndex, Miss, is_volatile
from recorder.keys import generate_keypair
from recorder.model import Event, new_span_id
from recorder.store import open_store

TRACE = "a" * 32
OTHER = "b" * 32
T0 = 1_700_000_000.0
PAY = ("POST", "https", "api.example.com", 443, "/v1/pay")


def event(
    target: str = "/v1/pay",
    *,
    method: str = "POST",
    trace: str | None = TRACE,
    body: bytes = b"",
    response: bytes = b'{"ok": true}',
    status: int = 200,
    at: float = 0.0,
    content_type: str = "application/json",
    **overrides: Any,
) -> Event:
    fields: dict[str, Any] = {
        "inbound": False,
        "method": method,
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "target": target,
        "http_version": "HTTP/1.1",
        "request_headers": ((b"Content-Type", content_type.encode()),),
        "request_body": body,
        "request_body_size": len(body),
        "status": status,
        "reason": "OK",
        "response_headers": (
            (b"Content-Type", b"application/json"),
            (b"Set-Cookie", b"session=s3cret"),
            (b"Content-Length", str(len(response)).encode()),
        ),
        "response_body": response,
        "response_body_size": len(response),
        "start": T0 + at,
        "end": T0 + at + 0.01,
    }
    fields.update(overrides)
    where = Attribution(trace_id=trace, span_id=new_span_id(), parent_span_id=None, source="")
    return exchange_event(HttpExchange(**fields), where, "c1")


def call(
    path: str = "/v1/pay",
    query: str = "",
    body: bytes = b"",
    method: str = "POST",
    content_type: str = "application/json",
) -> CallRequest:
    return CallRequest(
        method=method,
        scheme="https",
        host="api.example.com",
        port=443,
        path=path,
        query=query,
        body=body,
        content_type=content_type,
    )


def index(*events: Event) -> HttpReplayIndex:
    built = HttpReplayIndex()
    built.add_events(events)
    return built


def test_a_recorded_call_answers_with_its_response_and_secret_headers() -> None:
    built = index(event(body=b'{"amount": 10}'))
    result = built.match(TRACE, call(body=b'{"amount": 10}'))
    assert isinstance(result, Hit) and result.volatile == ()
    recorded = result.recorded
    assert (recorded.status, recorded.reason, recorded.response_body) == (
        200,
        "OK",
        b'{"ok": true}',
    )
    # The secret header's value was sealed in the payload and comes back in place.
    assert recorded.response_headers[1] == (b"Set-Cookie", b"session=s3cret")


def test_repeats_are_consumed_in_recorded_order_then_miss() -> None:
    # Written out of order: the index orders by start time.
    built = index(
        event("/v1/next", method="GET", response=b"2", at=2),
        event("/v1/next", method="GET", response=b"1", at=1),
    )
    answers = [built.match(TRACE, call("/v1/next", method="GET")) for _ in range(3)]
    assert [a.recorded.response_body for a in answers[:2] if isinstance(a, Hit)] == [b"1", b"2"]
    third = answers[2]
    assert isinstance(third, Miss)
    assert "recorded 2 times and every recording was already used" in third.message


def test_query_and_body_select_among_recordings_of_one_target() -> None:
    built = index(
        event("/v1/pay?currency=eur", body=b'{"amount": 1}', response=b"eur-1"),
        event("/v1/pay?currency=usd", body=b'{"amount": 1}', response=b"usd-1"),
        event("/v1/pay?currency=usd", body=b'{"amount": 2}', response=b"usd-2"),
    )
    usd2 = built.match(TRACE, call(query="currency=usd", body=b'{"amount": 2}'))
    eur1 = built.match(TRACE, call(query="currency=eur", body=b'{"amount": 1}'))
    assert isinstance(usd2, Hit) and usd2.recorded.response_body == b"usd-2"
    assert isinstance(eur1, Hit) and eur1.recorded.response_body == b"eur-1"


def test_the_trace_first_then_unattributed_then_elsewhere_only_when_asked() -> None:
    built = index(
        event(trace=OTHER, response=b"other"),
        event(trace=None, response=b"unattributed"),
        event(trace=TRACE, response=b"own"),
    )
    answers = [built.match(TRACE, call()) for _ in range(2)]
    assert [a.recorded.response_body for a in answers if isinstance(a, Hit)] == [
        b"own",
        b"unattributed",
    ]
    scoped = built.match(TRACE, call())
    assert isinstance(scoped, Miss)  # another trace's recording is not this trace's answer
    anywhere = built.match(TRACE, call(), anywhere=True)
    assert isinstance(anywhere, Hit) and anywhere.recorded.response_body == b"other"


def test_no_trace_searches_every_recording_in_order() -> None:
    built = index(event(trace=OTHER, response=b"first", at=0), event(response=b"second", at=1))
    answers = [built.match(None, call()) for _ in range(2)]
    assert [a.recorded.response_body for a in answers if isinstance(a, Hit)] == [
        b"first",
        b"second",
    ]


def test_volatile_query_and_json_values_match_and_are_reported() -> None:
    recorded_body = json.dumps(
        {"id": "0b9e6c1c-3f7e-4a57-9d3c-2a1f6f3e9b10", "at": "2024-05-01T10:00:00Z", "n": 3}
    ).encode()
    new_body = json.dumps(
        {
            "n": 3,
            "at": "2026-11-21T08:30:12.345+01:00",
            "id": "7f1d2c3b-0000-4a57-9d3c-aaaaaaaaaaaa",
        }
    ).encode()
    built = index(event("/v1/pay?since=2024-05-01&page=1", body=recorded_body))
    result = built.match(TRACE, call(query="since=2026-11-21&page=1", body=new_body))
    assert isinstance(result, Hit)
    assert set(result.volatile) == {
        ("query since", "2024-05-01", "2026-11-21"),
        (
            "body $.id",
            "0b9e6c1c-3f7e-4a57-9d3c-2a1f6f3e9b10",
            "7f1d2c3b-0000-4a57-9d3c-aaaaaaaaaaaa",
        ),
        ("body $.at", "2024-05-01T10:00:00Z", "2026-11-21T08:30:12.345+01:00"),
    }


def test_volatile_form_fields_match() -> None:
    form = "application/x-www-form-urlencoded"
    built = index(event(body=b"when=2024-01-01T00:00:00&x=1", content_type=form))
    result = built.match(TRACE, call(body=b"when=2025-02-02T11:11:11&x=1", content_type=form))
    assert isinstance(result, Hit)
    assert result.volatile == (("body when", "2024-01-01T00:00:00", "2025-02-02T11:11:11"),)


@pytest.mark.parametrize(
    ("query", "body", "expected"),
    [
        # A non-volatile value that differs is a miss, even next to a volatile one.
        ("since=2026-01-01&page=2", b'{"at": "2024-05-01T10:00:00Z"}', "query page: recorded '1', now '2'"),
        ("since=2024-05-01&page=1", b'{"at": 5}', 'body $.at: recorded "2024-05-01T10:00:00Z", now 5'),
        ("page=1", b'{"at": "2024-05-01T10:00:00Z"}', "query parameters: recorded 'since page', now 'page'"),
        ("since=2024-05-01&page=1", b'{"at": "2024-05-01T10:00:00Z", "x": 1}', "body $.x: recorded absent, now 1"),
        ("since=2024-05-01&page=1", b"not json", "another request body (body size (bytes): recorded 30, now 8)"),
    ],
)  # fmt: skip
def test_a_changed_call_is_a_miss_that_says_what_differs(
    query: str, body: bytes, expected: str
) -> None:
    built = index(event("/v1/pay?since=2024-05-01&page=1", body=b'{"at": "2024-05-01T10:00:00Z"}'))
    result = built.match(TRACE, call(query=query, body=body))
    assert isinstance(result, Miss), result
    assert (
        result.closest is not None
        and result.closest.target == "POST https://api.example.com:443/v1/pay"
    )
    assert (
        f"has no recorded answer for POST https://api.example.com:443/v1/pay in trace {TRACE}"
        in result.message
    )
    assert expected in result.message


def test_the_closest_recording_of_a_target_is_the_one_differing_least() -> None:
    built = index(
        event("/v1/pay?currency=eur&amount=1&card=x"),
        event("/v1/pay?currency=usd&amount=2&card=y"),
        event("/v1/pay?currency=usd&amount=3&card=y"),
    )
    result = built.match(TRACE, call(query="currency=usd&amount=4&card=y"))
    assert isinstance(result, Miss) and result.closest is built.recorded[1]
    assert "another query (query amount: recorded '2', now '4')" in result.message
    several = built.match(TRACE, call(query="currency=gbp&amount=9&card=z"))
    assert isinstance(several, Miss) and several.closest is built.recorded[0]
    assert "(query currency: recorded 'eur', now 'gbp' and 2 more)" in several.message


def test_another_target_names_the_most_similar_recording() -> None:
    built = index(
        event("/v1/refund"), event("/v1/payments", method="GET"), event("/health", method="GET")
    )
    result = built.match(TRACE, call("/v1/payment", method="GET"))
    assert isinstance(result, Miss) and result.closest is not None
    assert result.closest.target == "GET https://api.example.com:443/v1/payments"
    assert result.message.endswith(
        "the closest recorded call is GET https://api.example.com:443/v1/payments"
    )
    empty = HttpReplayIndex().match(None, call())
    assert isinstance(empty, Miss) and empty.closest is None
    assert empty.message.endswith("no HTTP call was recorded")


def test_a_response_cut_at_the_body_cap_is_not_replayed_as_if_whole() -> None:
    built = index(event(response=b"x" * 10, response_body_size=5000))
    result = built.match(TRACE, call())
    assert isinstance(result, Miss) and "cut at the body cap" in result.message
    assert result.closest is not None and not result.closest.consumed


def test_a_request_body_cut_at_the_body_cap_matches_on_its_prefix_and_size() -> None:
    built = index(event(body=b"0123456789", request_body_size=20, response=b"big"))
    assert isinstance(built.match(TRACE, call(body=b"0123456789" + b"X" * 9)), Miss)
    result = built.match(TRACE, call(body=b"0123456789" + b"X" * 10))
    assert isinstance(result, Hit) and result.recorded.response_body == b"big"


def test_tunnels_websockets_and_failed_connects_are_not_answers() -> None:
    tunnel = event(method="CONNECT", target="")
    websocket = event(
        "/ws", method="GET", status=101, websocket_frames=2, websocket=[[True, 0.0, True, b"x"]]
    )
    built = index(tunnel, websocket)
    assert len(built) == 0


def test_a_recorded_failure_is_answered_as_a_failure() -> None:
    failed = event(status=None, response=b"", response_headers=(), error="connection refused")
    result = index(failed).match(TRACE, call())
    assert isinstance(result, Hit)
    assert (result.recorded.status, result.recorded.error) == (502, "connection refused")


def test_sealed_recordings_without_the_key_are_counted_and_named_in_misses(tmp_path: Path) -> None:
    private, public = generate_keypair()
    writer = EnvelopeSealer([public])
    store = open_store(tmp_path / "store", sealer=writer)
    store.write_batch([event(body=b"{}")], {})
    store.close()
    without = open_store(tmp_path / "store", readonly=True)
    locked = HttpReplayIndex()
    locked.add_events(e.event for e in without.events())
    without.close()
    result = locked.match(TRACE, call(body=b"{}"))
    assert isinstance(result, Miss) and locked.sealed == 1
    assert "1 recorded calls could not be opened" in result.message
    with_key = open_store(tmp_path / "store", readonly=True, sealer=EnvelopeSealer([], [private]))
    opened = HttpReplayIndex()
    opened.add_events(e.event for e in with_key.events())
    with_key.close()
    hit = opened.match(TRACE, call(body=b"{}"))
    assert isinstance(hit, Hit)
    assert (b"Set-Cookie", b"session=s3cret") in hit.recorded.response_headers


@pytest.mark.parametrize(
    ("value", "volatile"),
    [
        ("2024-05-01", True),
        ("2024-05-01T10:00:00Z", True),
        ("2024-05-01 10:00:00.123456+02:00", True),
        ("0b9e6c1c-3f7e-4a57-9d3c-2a1f6f3e9b10", True),
        ("42", False),
        ("2024-05-01; DROP", False),
        ("", False),
    ],
)
def test_what_counts_as_volatile(value: str, volatile: bool) -> None:
    assert is_volatile(value) is volatile
