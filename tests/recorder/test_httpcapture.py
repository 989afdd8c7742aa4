"""HTTP exchanges to events: what is plaintext, what is payload, bodies, timings, failures."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.httpcapture import (
    SECRET_HEADERS,
    Attribution,
    BodyCapture,
    HttpExchange,
    Tunnel,
    classify_error,
    exchange_event,
    join_headers,
    split_headers,
    split_target,
    tunnel_event,
)
from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND

WHERE = Attribution(trace_id="a" * 32, span_id="b" * 16, parent_span_id="c" * 16, source="header")
T0 = 1_700_000_000.0


def exchange(**overrides: Any) -> HttpExchange:
    fields: dict[str, Any] = {
        "inbound": False,
        "method": "POST",
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "target": "/v1/orders?customer=42&token=s3cret",
        "http_version": "HTTP/1.1",
        "request_headers": (
            (b"Host", b"api.example.com"),
            (b"Authorization", b"Bearer abc"),
            (b"Content-Type", b"application/json"),
            (b"Cookie", b"a=1"),
            (b"Cookie", b"b=2"),
        ),
        "request_body": b'{"item": 1}',
        "request_body_size": 11,
        "status": 201,
        "reason": "Created",
        "response_headers": ((b"Set-Cookie", b"s=xyz"), (b"Content-Length", b"2")),
        "response_body": b"ok",
        "response_body_size": 2,
        "start": T0,
        "end": T0 + 0.050,
        "first_byte": T0 + 0.020,
    }
    fields.update(overrides)
    return HttpExchange(**fields)


def test_plaintext_attrs_and_sealed_payload_are_split_by_the_record_model() -> None:
    event = exchange_event(exchange(), WHERE, "conn-1")
    assert event.kind == HTTP_OUTBOUND
    assert (event.trace_id, event.span_id, event.parent_span_id) == ("a" * 32, "b" * 16, "c" * 16)
    attrs, payload = event.attrs, event.payload
    assert (attrs["method"], attrs["host"], attrs["port"], attrs["path"]) == (
        "POST",
        "api.example.com",
        443,
        "/v1/orders",
    )
    assert attrs["status"] == 201 and attrs["reason"] == "Created"
    assert attrs["trace_source"] == "header"
    assert event.fingerprint == "POST https://api.example.com:443/v1/orders"
    # Secrets and user data never reach the plaintext half.
    flat = msgpack.packb(attrs)
    for secret in (b"s3cret", b"Bearer abc", b"a=1", b"s=xyz", b'{"item"'):
        assert secret not in flat, secret
    assert payload["query"] == "customer=42&token=s3cret"
    assert payload["request_body"] == b'{"item": 1}' and payload["response_body"] == b"ok"
    assert payload["request_secrets"] == ["Bearer abc", "a=1", "b=2"]
    assert payload["response_secrets"] == ["s=xyz"]
    assert ["Content-Type", "application/json"] in attrs["request_headers"]
    assert ["Authorization", None] in attrs["request_headers"]


def test_timings_and_duration_are_nanoseconds_from_the_request_start() -> None:
    fresh = exchange(connect_start=T0 - 0.010, tcp_setup=T0 - 0.008, tls_setup=T0 - 0.002)
    event = exchange_event(fresh, WHERE, None)
    assert event.start_ns == int(T0 * 1e9)
    assert event.duration_ns == pytest.approx(50_000_000, abs=1000)
    assert event.attrs["first_byte_ns"] == pytest.approx(20_000_000, abs=1000)
    assert event.attrs["connect_ns"] == pytest.approx(2_000_000, abs=1000)
    assert event.attrs["tls_ns"] == pytest.approx(6_000_000, abs=1000)
    reused = exchange_event(exchange(reused=True), WHERE, None)
    assert reused.attrs["reused_connection"] is True and "connect_ns" not in reused.attrs


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("[Errno 111] Connection refused", "connection_refused"),
        ("Certificate verify failed: unable to get local issuer certificate", "tls"),
        ("TLS handshake failed", "tls"),
        ("Connection timed out", "timeout"),
        ("[Errno -2] Name or service not known", "dns"),
        ("Connection reset by peer", "connection_closed"),
        ("peer closed connection", "connection_closed"),
        ("something else", "other"),
    ],
)
def test_failures_get_a_stable_kind(message: str, kind: str) -> None:
    assert classify_error(message) == kind


def test_a_failure_is_an_error_event_with_its_reason() -> None:
    failed = exchange(status=502, response_headers=(), response_body=b"", response_body_size=0)
    failed.error = "[Errno 111] Connection refused"
    failed.first_byte = None
    event = exchange_event(failed, WHERE, None)
    assert event.error is True
    assert event.attrs["error"] == "[Errno 111] Connection refused"
    assert event.attrs["error_kind"] == "connection_refused"
    assert event.attrs["first_byte_ns"] is None


@pytest.mark.parametrize(
    ("status", "error"), [(200, False), (404, False), (500, True), (503, True)]
)
def test_server_errors_count_as_errors(status: int, error: bool) -> None:
    assert exchange_event(exchange(status=status), WHERE, None).error is error


def test_inbound_exchange_and_connect_fingerprint() -> None:
    inbound = exchange_event(exchange(inbound=True), WHERE, None)
    assert inbound.kind == HTTP_INBOUND
    connect = exchange_event(
        exchange(method="CONNECT", target="", host="h", port=8443), WHERE, None
    )
    assert connect.fingerprint == "CONNECT h:8443"


def test_truncated_bodies_are_counted() -> None:
    event = exchange_event(
        exchange(response_body=b"x" * 10, response_body_size=1000, streamed=True), WHERE, None
    )
    assert event.attrs["response_body_size"] == 1000
    assert event.attrs["response_body_truncated"] is True and event.attrs["streamed"] is True
    assert event.attrs["request_body_truncated"] is False


def test_websocket_frames_are_payload_and_counts_are_plaintext() -> None:
    frames = [[True, T0, True, b"hi"], [False, T0 + 1, False, b"\x00"]]
    event = exchange_event(
        exchange(
            status=101,
            websocket=frames,
            websocket_frames=2,
            websocket_bytes=3,
            websocket_close=1000,
        ),
        WHERE,
        None,
    )
    assert event.attrs["websocket_frames"] == 2 and event.attrs["websocket_close"] == 1000
    assert event.payload["websocket"] == frames


def test_tunnel_event() -> None:
    tunnel = Tunnel(host="db.internal", port=443, start=T0, end=T0 + 2, bytes_up=10, bytes_down=20)
    event = tunnel_event(tunnel, WHERE, "c")
    assert event.kind == HTTP_OUTBOUND and event.fingerprint == "CONNECT db.internal:443"
    assert event.attrs["tunnel"] is True and event.attrs["bytes_down"] == 20
    assert event.duration_ns == 2_000_000_000 and event.error is False
    tunnel.error = "[Errno 111] Connection refused"
    assert tunnel_event(tunnel, WHERE, "c").error is True


def test_event_fields_are_msgpack_values() -> None:
    event = exchange_event(exchange(request_headers=((b"X-Bin", b"\xff\xfe"),)), WHERE, None)
    packed = msgpack.packb([event.attrs, event.payload], use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False)[0]["request_headers"] == [["X-Bin", b"\xff\xfe"]]


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/a", "/a", ""),
        ("/a?b=1", "/a", "b=1"),
        ("/?", "/", ""),
        ("/a?b?c", "/a", "b?c"),
        ("", "", ""),
    ],
)
def test_split_target(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


header_bytes = st.binary(min_size=0, max_size=20)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"Cookie", b"Accept", b"authorization", b"X-Api-Key"]), header_bytes
        )
    )
)
def test_split_and_join_headers_round_trip(fields: list[tuple[bytes, bytes]]) -> None:
    shown, secrets = split_headers(fields)
    joined = join_headers(shown, secrets)
    as_bytes = [
        (n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
        for n, v in joined
    ]
    assert as_bytes == fields


def test_join_headers_without_the_payload_keeps_the_names() -> None:
    shown, _ = split_headers([(b"Authorization", b"x"), (b"Accept", b"*/*")])
    assert join_headers(shown, []) == [("Authorization", ""), ("Accept", "*/*")]


@pytest.mark.parametrize(
    ("chunks", "cap", "kept", "size"),
    [
        ([b"abc", b"def"], 10, b"abcdef", 6),
        ([b"abc", b"def"], 4, b"abcd", 6),
        ([b"abc", b"def"], 3, b"abc", 6),
        ([b"", b"abc"], 0, b"", 3),
        ([b"a"] * 5, 2, b"aa", 5),
    ],
)
def test_body_capture_keeps_the_head_and_counts_the_rest(
    chunks: list[bytes], cap: int, kept: bytes, size: int
) -> None:
    capture = BodyCapture(cap)
    forwarded = [capture(c) for c in chunks]
    assert forwarded == chunks  # what is forwarded is never altered
    assert capture.body == kept and capture.size == size
    assert capture.truncated is (size > len(kept))


def test_sensitive_header_names_given_at_start_are_sealed_too() -> None:
    x = exchange(request_headers=((b"X-Tenant-Secret", b"t0p"), (b"Accept", b"*/*")))
    secret = SECRET_HEADERS | {b"x-tenant-secret"}
    event = exchange_event(x, WHERE, None, secret)
    assert event.attrs["request_headers"] == [["X-Tenant-Secret", None], ["Accept", "*/*"]]
    assert event.payload["request_secrets"] == ["t0p"]
    assert exchange_event(x, WHERE, None).attrs["request_headers"][0] == ["X-Tenant-Secret", "t0p"]
