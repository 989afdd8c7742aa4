"""Replay matching for HTTP calls: recorded ``http.outbound`` events, and how a new call
finds its answer.

Pure: the sidecar loads the events from a store (payloads opened with its private
keys) and turns a :class:`Hit` into a response or a :class:`Miss` into an error.

A call matches a recording of the same target (method, scheme, host, port, path)
with the same query and request body. Scope first: the trace being replayed, then
what could not be attributed when it was recorded, then (when the run is scoped to
no trace) any recording. Repeats are consumed in recorded order. A query parameter,
form field or JSON value that differs only in a volatile value (a timestamp, a
generated UUID) still matches, and the difference is returned for the report. A
miss says what differs from the closest recording, or names the most similar
recorded target.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from .httpcapture import call_target, join_headers
from .model import HTTP_OUTBOUND, Event
from .store import payload_problem

# Values expected to change between runs: ISO 8601 dates and times, UUIDs.
_VOLATILE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}(:?\d{2})?|Z)?)?"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SHOWN: Final = 40  # characters of a differing value shown in a miss message

Difference = tuple[str, Any, Any]  # (where, recorded, new)


def is_volatile(value: str) -> bool:
    return _VOLATILE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    """A call the app makes now, as the proxy received it."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: str = ""
    body: bytes = b""
    content_type: str = ""

    @property
    def target(self) -> str:
        return call_target(self.method, self.scheme, self.host, self.port, self.path)


@dataclass(slots=True, kw_only=True)
class RecordedCall:
    """One recorded exchange, with what is needed to answer it again."""

    trace_id: str | None
    order: int
    target: str
    origin: str  # scheme://host:port
    query: str
    request_body: bytes
    request_body_size: int
    content_type: str
    status: int
    reason: str
    http_version: str
    response_headers: list[tuple[bytes, bytes]]  # secret values restored when opened
    response_body: bytes
    response_truncated: bool
    error: str | None
    consumed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    recorded: RecordedCall
    volatile: tuple[Difference, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Miss:
    message: str
    closest: RecordedCall | None


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _header(shown: Any, name: str) -> str:
    for pair in shown if isinstance(shown, list) else ():
        if len(pair) == 2 and str(pair[0]).lower() == name and isinstance(pair[1], str):
            return pair[1]
    return ""


def _recorded(event: Event, order: int) -> RecordedCall | None:
    attrs, payload = event.attrs, event.payload
    if (
        event.kind != HTTP_OUTBOUND
        or attrs.get("method") == "CONNECT"  # tunnels and failed CONNECTs answer nothing
        or attrs.get("status") == 101  # websockets are not replayed
        or "websocket_frames" in attrs
    ):
        return None
    shown = attrs.get("response_headers") or []
    headers = join_headers(shown, payload.get("response_secrets") or [])
    query, request_body = payload.get("query", ""), payload.get("request_body", b"")
    response_body = payload.get("response_body", b"")
    if not isinstance(request_body, bytes) or not isinstance(response_body, bytes):
        return None
    scheme, host = str(attrs.get("scheme")), str(attrs.get("host"))
    port = int(attrs.get("port") or 0)
    return RecordedCall(
        trace_id=event.trace_id,
        order=order,
        target=call_target(str(attrs.get("method")), scheme, host, port, str(attrs.get("path"))),
        origin=f"{scheme}://{host}:{port}",
        query=query if isinstance(query, str) else "",
        request_body=request_body,
        request_body_size=int(attrs.get("request_body_size") or len(request_body)),
        content_type=_header(attrs.get("request_headers"), "content-type"),
        status=int(attrs.get("status") or 502),
        reason=str(attrs.get("reason") or ""),
        http_version=str(attrs.get("http_version") or "HTTP/1.1"),
        response_headers=[(_bytes(k), _bytes(v)) for k, v in headers],
        response_body=response_body,
        response_truncated=bool(attrs.get("response_body_truncated")),
        error=attrs.get("error") if isinstance(attrs.get("error"), str) else None,
    )


class HttpReplayIndex:
    """Recorded calls of the stored ``http.outbound`` events, ready for matching."""

    def __init__(self) -> None:
        self.recorded: list[RecordedCall] = []
        self.sealed = 0  # recordings whose payload could not be opened (no private key)
        self._by_trace: dict[str | None, list[RecordedCall]] = {}

    def __len__(self) -> int:
        return len(self.recorded)

    def add_events(self, events: Iterable[Event]) -> int:
        """Adds the replayable calls among ``events``, in the order they started."""
        added = 0
        for event in sorted(events, key=lambda e: e.start_ns):  # stable: ties keep order
            if event.kind != HTTP_OUTBOUND:
                continue
            if payload_problem(event.payload) is not None:
                self.sealed += 1
                continue
            recorded = _recorded(event, len(self.recorded))
            if recorded is not None:
                self.recorded.append(recorded)
                self._by_trace.setdefault(recorded.trace_id, []).append(recorded)
                added += 1
        return added

    def http2(self, origin: str) -> bool | None:
        """Whether ``origin`` (``scheme://host:port``) answered over HTTP/2 in a recording,
        None when nothing was recorded toward it: replay then negotiates with a client what
        the upstream would. Which version a call used depends on its client's offer too,
        so one HTTP/2 call is the evidence that the upstream takes HTTP/2 when offered."""
        versions = {r.http_version for r in self.recorded if r.origin == origin}
        return "HTTP/2.0" in versions if versions else None

    def _pool(self, trace: str | None, anywhere: bool) -> Iterator[RecordedCall]:
        if trace is None:
            yield from self.recorded
            return
        yield from self._by_trace.get(trace, ())
        yield from self._by_trace.get(None, ())
        if anywhere:
            yield from (r for r in self.recorded if r.trace_id not in (trace, None))

    def match(
        self, trace: str | None, request: CallRequest, *, anywhere: bool = False
    ) -> Hit | Miss:
        """The recording answering ``request``, consumed; ``trace`` None searches every
        recording, ``anywhere`` extends a trace's search to other traces' recordings."""
        target = request.target
        same = [r for r in self._pool(trace, anywhere) if r.target == target and not r.consumed]
        found: Hit | None = None
        for recorded in same:
            if recorded.query == request.query and _same_body(recorded, request.body):
                found = Hit(recorded=recorded)
                break
        if found is None:
            for recorded in same:
                volatile = _volatile_differences(recorded, request)
                if volatile is not None:
                    found = Hit(recorded=recorded, volatile=tuple(volatile))
                    break
        if found is None:
            return self._miss(trace, request, anywhere)
        recorded = found.recorded
        if recorded.response_truncated:
            return Miss(
                message=_headline(trace, request)
                + f"; the recorded response of {target} was cut at the body cap "
                "(raise --body-cap and record it again to replay it)",
                closest=recorded,
            )
        recorded.consumed = True
        return found

    def _miss(self, trace: str | None, request: CallRequest, anywhere: bool) -> Miss:
        pool = list(self._pool(trace, anywhere))
        target = request.target
        same = [r for r in pool if r.target == target]
        unused = [r for r in same if not r.consumed]
        closest: RecordedCall | None
        if unused:  # the one with the fewest differences that matter, the earliest on ties
            closest = min(unused, key=lambda r: sum(not v for *_, v in _differences(r, request)))
            what = f"the recorded call {target} had {_difference(closest, request)}"
        elif same:
            closest = same[-1]
            times = "once" if len(same) == 1 else f"{len(same)} times"
            what = f"{target} was recorded {times} and every recording was already used"
        else:
            candidates = pool or self.recorded
            closest = max(
                candidates,
                key=lambda r: difflib.SequenceMatcher(None, r.target, target).ratio(),
                default=None,
            )
            what = (
                f"the closest recorded call is {closest.target}"
                if closest is not None
                else "no HTTP call was recorded"
            )
        if self.sealed:
            what += (
                f" ({self.sealed} recorded calls could not be opened: "
                "the sidecar lacks their private key)"
            )
        return Miss(message=f"{_headline(trace, request)}; {what}", closest=closest)


def _headline(trace: str | None, request: CallRequest) -> str:
    scope = f"trace {trace}" if trace else "the recordings"
    return f"flux is in replay mode and has no recorded answer for {request.target} in {scope}"


def _same_body(recorded: RecordedCall, body: bytes) -> bool:
    if recorded.request_body_size > len(recorded.request_body):  # kept up to the body cap
        return len(body) == recorded.request_body_size and body.startswith(recorded.request_body)
    return body == recorded.request_body


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# -- comparing a request with a recording ------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT: Final = _Absent()
# (where, recorded, new, volatile): one value that differs between two requests.
_Found = list[tuple[str, Any, Any, bool]]


def _leaf(where: str, old: Any, new: Any, found: _Found) -> None:
    if type(old) is not type(new) or old != new:
        volatile = isinstance(old, str) and isinstance(new, str)
        found.append((where, old, new, volatile and is_volatile(old) and is_volatile(new)))


def _form(where: str, old: str, new: str, found: _Found) -> None:
    """Field by field, in order; fields that differ in name or number differ wholly."""
    recorded = parse_qsl(old, keep_blank_values=True)
    now = parse_qsl(new, keep_blank_values=True)
    if [k for k, _ in recorded] != [k for k, _ in now]:
        names = (" ".join(k for k, _ in fields) for fields in (recorded, now))
        found.append((f"{where} parameters", next(names), next(names), False))
        return
    for (key, a), (_, b) in zip(recorded, now, strict=True):
        _leaf(f"{where} {key}", a, b, found)


def _json_walk(where: str, old: Any, new: Any, found: _Found) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            _json_walk(f"{where}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT), found)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _json_walk(f"{where}[{i}]", a, b, found)
    else:
        _leaf(where, old, new, found)


def _json(body: bytes) -> tuple[bool, Any]:
    if body.lstrip()[:1] not in (b"{", b"["):
        return False, None
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


def _is_form(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def _differences(recorded: RecordedCall, request: CallRequest) -> _Found:
    """Every value that differs between a recording and a request to its target. A body
    that is neither JSON nor a form on both sides differs as a whole."""
    found: _Found = []
    if recorded.query != request.query:
        _form("query", recorded.query, request.query, found)
    if _same_body(recorded, request.body):
        return found
    old_ok, old = _json(recorded.request_body)
    new_ok, new = _json(request.body)
    whole = recorded.request_body_size > len(recorded.request_body)  # only a prefix kept
    if old_ok and new_ok and not whole:
        _json_walk("body $", old, new, found)
    elif _is_form(recorded.content_type) and _is_form(request.content_type) and not whole:
        text = recorded.request_body.decode("utf-8", "replace")
        _form("body", text, request.body.decode("utf-8", "replace"), found)
    else:
        found.append(("body size (bytes)", recorded.request_body_size, len(request.body), False))
    return found


def _volatile_differences(recorded: RecordedCall, request: CallRequest) -> list[Difference] | None:
    """The differing values when every difference is in a volatile value, else None."""
    found = _differences(recorded, request)
    if not all(volatile for *_, volatile in found):
        return None
    return [(where, old, new) for where, old, new, _ in found]


def _difference(recorded: RecordedCall, request: CallRequest) -> str:
    """Why a request missed a recording of its target, in a phrase: the first difference
    that is not volatile (the volatile ones would have matched)."""
    found = [f for f in _differences(recorded, request) if not f[3]]
    if not found:
        return "the same request"
    where, old, new, _ = found[0]
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    what = "query" if where.startswith("query") else "request body"
    as_json = where.startswith("body $")
    shown = f"recorded {_shown(old, as_json)}, now {_shown(new, as_json)}"
    return f"another {what} ({where}: {shown}{more})"


def _shown(value: Any, as_json: bool) -> str:
    if value is _ABSENT:
        return "absent"
    return _clip(repr(value) if isinstance(value, str) and not as_json else json.dumps(value))
