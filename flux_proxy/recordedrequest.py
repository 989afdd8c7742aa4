"""A recorded inbound request, read back from the store to be sent again.

The query string, credentials and body are sealed at rest: they open only with the
private key, and a request that cannot be rebuilt whole is refused (exit code 2)
rather than sent in part.
"""

from __future__ import annotations

from dataclasses import dataclass

from recorder.abc import Store
from recorder.httpcapture import join_headers
from recorder.model import HTTP_INBOUND, PG_QUERY, Event
from recorder.replaycompare import ResponseView
from recorder.store import StoreError, payload_problem

from .render_tree import describe_http


class ReplayError(Exception):
    """The request could not be replayed (exit code 2); ``fatal`` when no other trace
    could be either (the admin API or the app is unreachable)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    trace_id: str
    method: str
    target: str  # path and query, as the client sent it
    path: str
    headers: list[tuple[str | bytes, str | bytes]]
    body: bytes
    start_ns: int
    duration_ns: int
    response: ResponseView
    failures: list[str]  # why the recording counts as failed; empty when it succeeded

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def _failure(event: Event) -> str:
    if event.kind in (HTTP_INBOUND, "http.outbound"):
        return describe_http(event.kind, event.attrs)
    if event.kind == PG_QUERY:
        state = event.attrs.get("sqlstate")
        return f"query {event.fingerprint or '?'} failed" + (f" ({state})" if state else "")
    return f"{event.kind} {event.fingerprint or ''} failed".replace("  ", " ")


def load_recorded(store: Store, trace_id: str) -> RecordedRequest:
    """The trace's first inbound request and its recorded response, ready to send again."""
    try:
        trace_id = store.resolve_trace_id(trace_id)
        events = store.get_trace(trace_id)
    except StoreError as exc:
        raise ReplayError(str(exc)) from None
    inbound = sorted(
        (s for s in events if s.event.kind == HTTP_INBOUND), key=lambda s: s.event.start_ns
    )
    if not inbound:
        raise ReplayError(f"trace {trace_id} has no recorded inbound request to send again")
    root = inbound[0].event
    attrs, payload = root.attrs, root.payload
    problem = payload_problem(payload)
    if problem is not None:
        raise ReplayError(
            f"trace {trace_id}: the recorded request is {problem} "
            "(give --private-key or FLUX_PRIVATE_KEY)"
        )
    if attrs.get("request_body_truncated"):
        raise ReplayError(
            f"trace {trace_id}: the request body was recorded only in part "
            f"({attrs.get('request_body_size')} bytes, more than the body cap): "
            "it cannot be sent again"
        )
    if attrs.get("websocket_frames") or attrs.get("method") == "CONNECT":
        raise ReplayError(f"trace {trace_id}: a websocket or tunnel cannot be replayed")
    query = payload.get("query") or ""
    path = str(attrs.get("path") or "/")
    headers = join_headers(attrs.get("request_headers") or [], payload.get("request_secrets") or [])
    response = ResponseView(
        status=attrs.get("status"),
        headers=[
            (text(k), text(v))
            for k, v in join_headers(
                attrs.get("response_headers") or [], payload.get("response_secrets") or []
            )
        ],
        body=payload.get("response_body") or b"",
        truncated=bool(attrs.get("response_body_truncated")),
        error=attrs.get("error"),
    )
    failures = [_failure(root)] if response.failed else []
    failures += [_failure(s.event) for s in events if s.event.error and s.event is not root]
    return RecordedRequest(
        trace_id=trace_id,
        method=str(attrs.get("method") or "GET"),
        target=f"{path}?{query}" if query else path,
        path=path,
        headers=headers,
        body=payload.get("request_body") or b"",
        start_ns=root.start_ns,
        duration_ns=root.duration_ns,
        response=response,
        failures=failures,
    )


def text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
