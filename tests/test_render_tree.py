"""``flux trace``'s span tree and its HTTP lines, on plain data."""

from __future__ import annotations

from typing import Any

from flux_proxy.render_tree import describe_http, span_tree
from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, PG_QUERY, Event, StoredEvent


def stored(seq: int, kind: str, span: str, parent: str | None, start: int) -> StoredEvent:
    event = Event(
        kind=kind,
        trace_id="t" * 32,
        span_id=span,
        parent_span_id=parent,
        conn_id=None,
        start_ns=start,
        duration_ns=1,
    )
    return StoredEvent(id=seq, seq=seq, event=event)


def shape(events: list[StoredEvent]) -> list[tuple[int, str]]:
    return [(depth, s.event.span_id) for depth, s in span_tree(events)]


def test_children_nest_under_their_parent_span_in_start_order() -> None:
    events = [
        stored(1, PG_QUERY, "q1", "in", 30),  # recorded first, started after the call
        stored(2, HTTP_OUTBOUND, "out", "in", 20),
        stored(3, HTTP_INBOUND, "in", "caller", 10),  # the root arrives last: it ends last
        stored(4, PG_QUERY, "q2", "out", 25),  # a query under the call (the callee is us)
    ]
    assert shape(events) == [(0, "in"), (1, "out"), (2, "q2"), (1, "q1")]


def test_unknown_parents_go_under_the_request_they_happened_in() -> None:
    events = [
        stored(1, HTTP_INBOUND, "in1", None, 10),
        stored(2, PG_QUERY, "q1", "app-span", 15),  # the app's own span id, never seen
        stored(3, HTTP_INBOUND, "in2", None, 20),
        stored(4, HTTP_OUTBOUND, "c2", "app-span-2", 25),
        stored(5, PG_QUERY, "before", "x", 5),  # before any request: a root of its own
    ]
    assert shape(events) == [(0, "before"), (0, "in1"), (1, "q1"), (0, "in2"), (1, "c2")]


def test_parent_cycles_do_not_loop() -> None:
    events = [stored(1, PG_QUERY, "a", "b", 1), stored(2, PG_QUERY, "b", "a", 2)]
    assert sorted(span for _, span in shape(events)) == ["a", "b"]


def test_http_lines() -> None:
    inbound: dict[str, Any] = {"method": "GET", "path": "/orders/1", "status": 200}
    assert describe_http(HTTP_INBOUND, inbound) == "GET /orders/1 → 200"
    call: dict[str, Any] = {
        "method": "POST", "scheme": "https", "host": "api", "port": 443, "path": "/x",
        "status": 201, "connect_ns": 1_000_000, "tls_ns": 2_500_000, "first_byte_ns": 4_000_000,
        "response_body_size": 2048,
    }  # fmt: skip
    assert describe_http(HTTP_OUTBOUND, call) == (
        "POST https://api:443/x → 201 (connect 1.0ms, tls 2.5ms, ttfb 4.0ms, 2.0 KiB)"
    )
    failed = {
        "method": "GET", "scheme": "http", "host": "h", "port": 1, "path": "/", "status": 502,
        "error": "[Errno 111] Connection refused", "error_kind": "connection_refused",
    }  # fmt: skip
    assert describe_http(HTTP_OUTBOUND, failed).endswith(
        "✗ connection_refused: [Errno 111] Connection refused"
    )
    tunnel = {"method": "CONNECT", "tunnel": True, "host": "db", "port": 443, "bytes_up": 10,
              "bytes_down": 5 << 20}  # fmt: skip
    assert describe_http(HTTP_OUTBOUND, tunnel) == (
        "CONNECT db:443 tunnel (not intercepted) ↑10 B ↓5.0 MiB"
    )
