"""How a recorded response is framed anew for the client that replays it (mitmproxy's own
request and response types, no sockets)."""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from flux_proxy.http.replay import REPLAY_HEADER, replayed_response
from recorder.httpreplay import RecordedCall


def recorded(headers: list[tuple[bytes, bytes]], body: bytes, **overrides: Any) -> RecordedCall:
    fields: dict[str, Any] = {
        "trace_id": None,
        "order": 0,
        "target": "GET https://api.example.com:443/x",
        "origin": "https://api.example.com:443",
        "query": "",
        "request_body": b"",
        "request_body_size": 0,
        "content_type": "",
        "status": 200,
        "reason": "OK",
        "http_version": "HTTP/1.1",
        "response_headers": headers,
        "response_body": body,
        "response_truncated": False,
        "error": None,
    }
    fields.update(overrides)
    return RecordedCall(**fields)


def request(method: str = "GET", version: bytes = b"HTTP/1.1") -> http.Request:
    return http.Request(
        "api.example.com", 443, method.encode(), b"https", b"api.example.com", b"/x",
        version, http.Headers(), b"", None, 0.0, 0.0,
    )  # fmt: skip


def test_a_chunked_recording_is_sent_whole_with_its_length() -> None:
    answer = replayed_response(
        recorded(
            [
                (b"Content-Type", b"text/plain"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Connection", b"keep-alive, X-Hop"),
                (b"X-Hop", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Set-Cookie", b"a=1"),
            ],
            b"hello world",
        ),
        request(),
    )
    assert answer.headers.fields == (
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"content-length", b"11"),
    )
    assert (answer.status_code, answer.reason, answer.raw_content) == (200, "OK", b"hello world")


def test_a_compressed_body_keeps_its_encoding_and_an_empty_one_drops_it() -> None:
    gz = [(b"Content-Encoding", b"gzip"), (b"Content-Length", b"999")]
    kept = replayed_response(recorded(gz, b"\x1f\x8b..."), request())
    assert kept.headers["content-encoding"] == "gzip" and kept.headers["content-length"] == "5"
    assert kept.raw_content == b"\x1f\x8b..."  # sent as recorded, not decoded
    empty = replayed_response(recorded(gz, b""), request())
    assert "content-encoding" not in empty.headers and empty.headers["content-length"] == "0"


def test_head_and_304_keep_the_recorded_length_and_send_no_body() -> None:
    headers = [(b"Content-Length", b"1234"), (b"ETag", b'"v1"')]
    head = replayed_response(recorded(headers, b""), request("HEAD"))
    assert head.headers["content-length"] == "1234" and head.raw_content == b""
    not_modified = replayed_response(recorded(headers, b"", status=304), request())
    assert not_modified.status_code == 304 and not_modified.headers["content-length"] == "1234"
    no_content = replayed_response(
        recorded([(b"Content-Length", b"0")], b"", status=204), request()
    )
    assert "content-length" not in no_content.headers


def test_http2_clients_get_lowercase_field_names() -> None:
    answer = replayed_response(
        recorded([(b"Content-Type", b"application/json")], b"{}"), request(version=b"HTTP/2.0")
    )
    assert answer.headers.fields == (
        (b"content-type", b"application/json"),
        (b"content-length", b"2"),
    )


def test_a_recorded_failure_is_replayed_as_that_failure() -> None:
    answer = replayed_response(
        recorded([], b"", status=502, reason="", error="connection refused"), request()
    )
    assert answer.status_code == 502 and answer.headers[REPLAY_HEADER] == "error"
    assert b"the recorded call failed: connection refused" in answer.raw_content
