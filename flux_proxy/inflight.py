"""Inbound requests in flight, for attributing traffic that carries no trace.

DESIGN.md's weakest attribution rule: when exactly one inbound request is in
flight, an outbound call or query without a ``traceparent`` (and outside an
attributed transaction) belongs to it. The inbound proxy calls :func:`begin`
when a request arrives and :func:`end` when its response is done;
:func:`single_trace` is what the HTTP proxy (and the PostgreSQL proxy) ask.

Everything runs on the sidecar's one event loop, so a plain dict is enough;
each call is O(1) because it sits on the data path of every request.
"""

from __future__ import annotations

from protocols.traceparent import TraceParent

__all__ = ["begin", "count", "end", "single_trace"]

# key (the inbound flow's id) -> the traceparent injected toward the app, whose
# parent_id is the inbound span: a child of that is a child of the request.
_in_flight: dict[str, TraceParent] = {}


def begin(key: str, trace: TraceParent) -> None:
    _in_flight[key] = trace


def end(key: str) -> None:
    _in_flight.pop(key, None)


def count() -> int:
    return len(_in_flight)


def single_trace() -> TraceParent | None:
    """The trace of the only inbound request in flight; None when there are none or several."""
    if len(_in_flight) != 1:
        return None
    return next(iter(_in_flight.values()))
