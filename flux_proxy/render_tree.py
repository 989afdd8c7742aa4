"""What ``flux trace`` needs beyond a list: the span tree, and one line per HTTP event.

The tree follows parent span ids where they name a span of the same trace.
Where they do not (an app with its own tracing propagates its own span ids,
which the sidecar never sees as events), the event goes under the inbound
request it happened during: the latest ``http.inbound`` that started before
it. Siblings are in start order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, StoredEvent


def _order(s: StoredEvent) -> tuple[int, int]:
    return (s.event.start_ns, s.seq)


def span_tree(events: list[StoredEvent]) -> list[tuple[int, StoredEvent]]:
    """Events in display order, each with its depth (0 for roots)."""
    ordered = sorted(events, key=_order)
    by_span = {s.event.span_id: s for s in ordered}
    inbound = [s for s in ordered if s.event.kind == HTTP_INBOUND]
    children: dict[int, list[StoredEvent]] = {}
    roots: list[StoredEvent] = []
    for s in ordered:
        parent = by_span.get(s.event.parent_span_id or "")
        if parent is None or parent is s:
            parent = _enclosing_request(s, inbound)
        if parent is None:
            roots.append(s)
        else:
            children.setdefault(parent.id, []).append(s)
    out: list[tuple[int, StoredEvent]] = []
    seen: set[int] = set()

    def walk(s: StoredEvent, depth: int) -> Iterator[tuple[int, StoredEvent]]:
        if s.id in seen:  # parent ids come from clients: never loop on a cycle
            return
        seen.add(s.id)
        yield depth, s
        for child in children.get(s.id, ()):
            yield from walk(child, depth + 1)

    for root in roots:
        out.extend(walk(root, 0))
    for s in ordered:  # only members of a parent cycle are left; show them flat
        if s.id not in seen:
            out.extend(walk(s, 0))
    return out


def _enclosing_request(s: StoredEvent, inbound: list[StoredEvent]) -> StoredEvent | None:
    if s.event.kind == HTTP_INBOUND:
        return None
    found = None
    for request in inbound:
        if request.event.start_ns > s.event.start_ns:
            break
        found = request
    return found


def _ms(ns: Any) -> str:
    return f"{ns / 1e6:.1f}ms" if isinstance(ns, int) else ""


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def describe_http(kind: str, attrs: dict[str, Any]) -> str:
    """``GET /orders → 200`` for a request in; ``GET https://api:443/x → 200 (connect ..)``
    for a call out; tunnels and failures say what happened."""
    method = attrs.get("method", "?")
    status = attrs.get("status")
    outcome = f"→ {status}" if status is not None else "→ no response"
    if kind == HTTP_INBOUND:
        return f"{method} {attrs.get('path', '')} {outcome}"
    host, port = attrs.get("host", "?"), attrs.get("port", "")
    if attrs.get("tunnel"):
        line = (
            f"CONNECT {host}:{port} tunnel (not intercepted) "
            f"↑{_size(attrs.get('bytes_up'))} ↓{_size(attrs.get('bytes_down'))}"
        )
    elif method == "CONNECT":
        line = f"CONNECT {host}:{port} {outcome}"
    else:
        scheme, path = attrs.get("scheme", ""), attrs.get("path", "")
        line = f"{method} {scheme}://{host}:{port}{path} {outcome}"
    timings = [
        f"{label} {_ms(attrs[key])}"
        for key, label in (("connect_ns", "connect"), ("tls_ns", "tls"), ("first_byte_ns", "ttfb"))
        if isinstance(attrs.get(key), int)
    ]
    if attrs.get("response_body_size"):
        timings.append(_size(attrs["response_body_size"]))
    if attrs.get("websocket_frames"):
        timings.append(f"websocket {attrs['websocket_frames']} messages")
    if timings:
        line += f" ({', '.join(timings)})"
    if attrs.get("error"):
        line += f" ✗ {attrs.get('error_kind', 'error')}: {attrs['error']}"
    return line


HTTP_KINDS = frozenset({HTTP_INBOUND, HTTP_OUTBOUND})
