"""Reading one execution's events: order, parents, failures, one-line descriptions.

Parents follow ``parent_span_id`` where it names a span of the same trace; where it
does not (an app with its own tracing propagates span ids the sidecar never sees),
an event belongs to the inbound request it happened during, the latest
``http.inbound`` that started before it. ``flux trace`` draws its tree by the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocols.sqlcommenter import strip_comment
from recorder.model import (
    HTTP_INBOUND,
    HTTP_OUTBOUND,
    MUTATION,
    PG_QUERY,
    UDP,
    Event,
    StoredEvent,
)
from recorder.store import payload_problem

HTTP_KINDS: Final = frozenset({HTTP_INBOUND, HTTP_OUTBOUND})
WHAT_WIDTH: Final = 160

# How sure we are that a span failed: a flagged error (an SQLSTATE, a 5xx, no answer)
# outranks an HTTP 4xx answer, which an application often handles (a 404 before a create).
ERROR_TIER: Final = 0
CLIENT_ERROR_TIER: Final = 1


def order_key(s: StoredEvent) -> tuple[int, int]:
    return (s.event.start_ns, s.seq)


def end_ns(e: Event) -> int:
    return e.start_ns + e.duration_ns


def as_int(value: Any) -> int | None:
    # bool is an int subclass; a True status is a producer bug, not a status.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def values_of(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload's values, or None when it is sealed to a key we lack or unreadable."""
    return None if payload_problem(payload) is not None else dict(payload)


def clip(text: str, width: int = WHAT_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why a span counts as failed, from its plaintext fields only."""

    tier: int
    sqlstate: str | None = None
    status: int | None = None
    error_kind: str | None = None  # connection_refused, tls, timeout, dns, ...
    error: str | None = None  # the proxy's plaintext reason, for HTTP and UDP


def failure_of(e: Event) -> Failure | None:
    attrs = e.attrs
    if e.kind == PG_QUERY:
        sqlstate = as_str(attrs.get("sqlstate"))
        if sqlstate is not None:
            return Failure(tier=ERROR_TIER, sqlstate=sqlstate)
        if e.error or attrs.get("complete") is False:
            return Failure(
                tier=ERROR_TIER, error_kind="connection_lost", error="connection ended mid-cycle"
            )
        return None
    if e.kind in HTTP_KINDS:
        status = as_int(attrs.get("status"))
        error = as_str(attrs.get("error"))
        if error is not None:
            kind = as_str(attrs.get("error_kind")) or "other"
            return Failure(tier=ERROR_TIER, status=status, error_kind=kind, error=error)
        if status is not None and status >= 500:
            return Failure(tier=ERROR_TIER, status=status)
        if status is not None and status >= 400:
            return Failure(tier=CLIENT_ERROR_TIER, status=status)
        if status is None and e.error:
            return Failure(tier=ERROR_TIER, error_kind="no_response", error="no response")
        return None
    if e.kind == UDP:
        error = as_str(attrs.get("error"))
        if error is not None:
            return Failure(tier=ERROR_TIER, error_kind=error, error=error)
        rcode = as_str(attrs.get("rcode"))
        if rcode == "SERVFAIL":
            return Failure(tier=ERROR_TIER, error_kind="dns", error=rcode)
        if rcode == "NXDOMAIN":
            return Failure(tier=CLIENT_ERROR_TIER, error_kind="dns", error=rcode)
        return None
    return None


def statements(e: Event) -> list[str]:
    """The normalized statements of a ``pg.query`` (literals stripped: plaintext)."""
    found = []
    for item in e.attrs.get("statements") or ():
        if isinstance(item, Mapping):
            text = as_str(item.get("normalized"))
            if text is not None:
                found.append(text)
    return found


def sql_texts(values: Mapping[str, Any]) -> list[str]:
    """The SQL a ``pg.query`` sent, with literals, from its opened payload; without the
    sqlcommenter comment, which names the trace and so differs in every execution."""
    sql = values.get("sql")
    return [strip_comment(str(text)) for text in sql] if isinstance(sql, list) else []


def call_target(e: Event) -> str:
    """``GET https://host:443/path`` for a call out, ``GET /path`` for a request in."""
    attrs = e.attrs
    method = as_str(attrs.get("method")) or "?"
    if e.kind == HTTP_INBOUND:
        return f"{method} {attrs.get('path', '')}"
    if method == "CONNECT" or attrs.get("tunnel"):
        return f"CONNECT {attrs.get('host', '?')}:{attrs.get('port', '')}"
    if e.fingerprint:
        return e.fingerprint
    return (
        f"{method} {attrs.get('scheme', '')}://{attrs.get('host', '?')}:{attrs.get('port', '')}"
        f"{attrs.get('path', '')}"
    )


def what(e: Event) -> str:
    """One line saying what a span was, from its plaintext fields."""
    attrs = e.attrs
    if e.kind == PG_QUERY:
        line = "; ".join(statements(e)) or "(no statement)"
        tags = [t for t in attrs.get("tags") or () if isinstance(t, str) and t]
        if tags and tags != [line.upper()]:  # "BEGIN → BEGIN" says nothing twice
            line += f" → {', '.join(tags)}"
        if attrs.get("sqlstate"):
            line += f" ERROR {attrs['sqlstate']}"
        return clip(line)
    if e.kind in HTTP_KINDS:
        code = as_int(attrs.get("status"))
        line = f"{call_target(e)} → {code if code is not None else 'no response'}"
        if attrs.get("error"):
            line += f" ({attrs.get('error_kind', 'error')}: {attrs['error']})"
        return clip(line)
    if e.kind == MUTATION:
        status = attrs.get("status") or "open"
        return f"{attrs.get('op', '?')} {attrs.get('table', '?')} ({status})"
    if e.kind == UDP:
        if attrs.get("dns"):
            outcome = attrs.get("error") or attrs.get("rcode") or "?"
            return f"DNS {attrs.get('qtype', '?')} {attrs.get('qname', '?')} → {outcome}"
        return f"udp {attrs.get('request_bytes', 0)} bytes → {attrs.get('error') or 'answered'}"
    return e.kind


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanRef:
    """A span as the debugging commands name it: its seq, kind and what it was."""

    seq: int
    kind: str
    span_id: str
    conn_id: str | None
    offset_ms: float  # from the start of its execution
    duration_ms: float
    what: str
    error: bool

    @classmethod
    def of(cls, s: StoredEvent, trace_start_ns: int) -> SpanRef:
        e = s.event
        return cls(
            seq=s.seq,
            kind=e.kind,
            span_id=e.span_id,
            conn_id=e.conn_id,
            offset_ms=(e.start_ns - trace_start_ns) / 1e6,
            duration_ms=e.duration_ns / 1e6,
            what=what(e),
            error=failure_of(e) is not None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "span_id": self.span_id,
            "conn_id": self.conn_id,
            "offset_ms": round(self.offset_ms, 3),
            "duration_ms": round(self.duration_ms, 3),
            "what": self.what,
            "error": self.error,
        }


class SpanIndex:
    """One execution's events in start order, with each event's parent resolved."""

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.events = sorted(events, key=order_key)
        self.start_ns = min((s.event.start_ns for s in self.events), default=0)
        self.end_ns = max((end_ns(s.event) for s in self.events), default=0)
        by_span: dict[str, StoredEvent] = {}
        for s in self.events:
            by_span.setdefault(s.event.span_id, s)
        self.inbound = [s for s in self.events if s.event.kind == HTTP_INBOUND]
        self._parent: dict[int, StoredEvent | None] = {}
        for s in self.events:
            parent = by_span.get(s.event.parent_span_id or "")
            if parent is None or parent is s:
                parent = self._enclosing_request(s)
            self._parent[s.id] = parent

    def _enclosing_request(self, s: StoredEvent) -> StoredEvent | None:
        if s.event.kind == HTTP_INBOUND:
            return None
        found = None
        for request in self.inbound:
            if request.event.start_ns > s.event.start_ns:
                break
            found = request
        return found

    @property
    def root(self) -> StoredEvent | None:
        """The execution's inbound request, if it has one."""
        return self.inbound[0] if self.inbound else None

    def ref(self, s: StoredEvent) -> SpanRef:
        return SpanRef.of(s, self.start_ns)

    def parent(self, s: StoredEvent) -> StoredEvent | None:
        return self._parent.get(s.id)

    def ancestors(self, s: StoredEvent) -> list[StoredEvent]:
        """From the root down to the span's parent; parent ids come from clients, so a
        cycle ends the walk."""
        chain: list[StoredEvent] = []
        seen = {s.id}
        parent = self.parent(s)
        while parent is not None and parent.id not in seen:
            seen.add(parent.id)
            chain.append(parent)
            parent = self.parent(parent)
        chain.reverse()
        return chain
