"""HTTP exchanges as the HTTP proxy sees them, and how they become events.

The proxy (``flux_proxy/http``) copies what it needs out of mitmproxy's flow
objects into an :class:`HttpExchange` and calls :func:`exchange_event`; this
module never sees a socket nor a mitmproxy type, so the split between
plaintext ``attrs`` and sealed ``payload`` is tested here on plain data.

What is plaintext (DESIGN.md, "The record model"): method, scheme, host, port,
path, status, timings, sizes, header names and the values of ordinary headers.
What goes to the payload: bodies, the query string, and the values of the
headers that carry credentials (:data:`SECRET_HEADERS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .model import HTTP_INBOUND, HTTP_OUTBOUND, Event

# Header values that carry credentials or session state; kept out of plaintext.
SECRET_HEADERS: Final = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"x-api-key",
        b"x-auth-token",
        # URLs with their query strings (tokens, API keys) travel in these.
        b"referer",
        b"location",
        b"content-location",
    }
)

HeaderFields = Sequence[tuple[bytes, bytes]]


class BodyCapture:
    """Keeps the first ``cap`` bytes of a body and counts the rest.

    An instance is the callable mitmproxy calls with each chunk of a streamed
    body (``flow.response.stream = capture``): it returns the chunk unchanged,
    so the body is forwarded as it arrives and memory stays bounded by ``cap``.
    """

    __slots__ = ("cap", "chunks", "kept", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.kept = 0
        self.size = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        room = self.cap - self.kept
        if room > 0 and chunk:
            piece = chunk if len(chunk) <= room else chunk[:room]
            self.chunks.append(piece)
            self.kept += len(piece)
        return chunk

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def truncated(self) -> bool:
        return self.size > self.kept


def _text(value: bytes) -> str | bytes:
    # msgpack strings must be UTF-8; a header that is not stays bytes rather than mojibake.
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def split_headers(
    fields: Iterable[tuple[bytes, bytes]], secret: frozenset[bytes] = SECRET_HEADERS
) -> tuple[list[list[str | bytes | None]], list[str | bytes]]:
    """Header fields as ``[name, value]`` pairs with the values of ``secret`` headers
    (lowercase names) replaced by None, and those values in order, for the payload.
    :func:`join_headers` undoes it."""
    shown: list[list[str | bytes | None]] = []
    secrets: list[str | bytes] = []
    for name, value in fields:
        # Runs for every header of every exchange on the proxy's loop: decode inline, and
        # take the slow path only for the rare header that is not UTF-8.
        text_name: str | bytes
        text_value: str | bytes
        try:
            text_name, text_value = name.decode(), value.decode()
        except UnicodeDecodeError:
            text_name, text_value = _text(name), _text(value)
        if name.lower() in secret:
            shown.append([text_name, None])
            secrets.append(text_value)
        else:
            shown.append([text_name, text_value])
    return shown, secrets


def join_headers(
    shown: Sequence[Sequence[str | bytes | None]], secrets: Sequence[str | bytes]
) -> list[tuple[str | bytes, str | bytes]]:
    """The original header fields from :func:`split_headers`'s two halves.

    A sealed payload the reader cannot open has no secrets: those values come back
    as empty strings rather than failing the whole list."""
    out: list[tuple[str | bytes, str | bytes]] = []
    pending = iter(secrets)
    for name, value in shown:
        assert name is not None
        out.append((name, next(pending, "") if value is None else value))
    return out


def split_target(target: str) -> tuple[str, str]:
    """``/path?query`` -> (``/path``, ``query``); the query may hold user data."""
    path, _, query = target.partition("?")
    return path, query


def classify_error(message: str) -> str:
    """A short, stable name for a failure, for display and filtering."""
    text = message.lower()
    if "refused" in text:
        return "connection_refused"
    if "certificate" in text or "tls" in text or "ssl" in text or "handshake" in text:
        return "tls"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
        return "dns"
    if "reset" in text or "eof" in text or "closed" in text or "disconnect" in text:
        return "connection_closed"
    return "other"


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def _span(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(int((end - start) * 1e9), 0)


@dataclass(slots=True, kw_only=True)
class HttpExchange:
    """One request/response (or attempt) as seen by the proxy. Times are epoch seconds,
    as mitmproxy keeps them; the event gets nanoseconds."""

    inbound: bool
    method: str
    scheme: str
    host: str
    port: int
    target: str = ""  # path and query as sent
    http_version: str = ""
    request_headers: HeaderFields = ()
    request_body: bytes = b""
    request_body_size: int = 0
    status: int | None = None
    reason: str = ""
    response_headers: HeaderFields = ()
    response_body: bytes = b""
    response_body_size: int = 0
    start: float
    end: float
    connect_start: float | None = None  # set only on the exchange that opened the connection
    reused: bool = False  # went over a connection an earlier exchange opened
    tcp_setup: float | None = None
    tls_setup: float | None = None
    first_byte: float | None = None
    error: str | None = None
    client: str = ""
    server: str = ""
    streamed: bool = False
    websocket: list[list[Any]] = field(default_factory=list)  # [from_client, t, is_text, data]
    websocket_frames: int = 0
    websocket_bytes: int = 0
    websocket_close: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """Where an exchange belongs: its trace, its own span, its parent, and why."""

    trace_id: str | None
    span_id: str
    parent_span_id: str | None
    source: str  # "header", "inflight", "inbound" or "" (unattributed)


def call_target(method: str, scheme: str, host: str, port: int, path: str) -> str:
    """The fingerprint of a call: what replay matches on, without the query."""
    return f"{method} {scheme}://{host}:{port}{path}"


def exchange_event(
    x: HttpExchange,
    where: Attribution,
    conn_id: str | None,
    secret_headers: frozenset[bytes] = SECRET_HEADERS,
) -> Event:
    """The event of one exchange; ``secret_headers`` is :data:`SECRET_HEADERS` plus the
    names given with ``--sensitive-header``, lowercase."""
    path, query = split_target(x.target)
    request_headers, request_secrets = split_headers(x.request_headers, secret_headers)
    response_headers, response_secrets = split_headers(x.response_headers, secret_headers)
    attrs: dict[str, Any] = {
        "method": x.method,
        "scheme": x.scheme,
        "host": x.host,
        "port": x.port,
        "path": path,
        "http_version": x.http_version,
        "status": x.status,
        "request_headers": request_headers,
        "request_body_size": x.request_body_size,
        "response_headers": response_headers,
        "response_body_size": x.response_body_size,
        "request_body_truncated": x.request_body_size > len(x.request_body),
        "response_body_truncated": x.response_body_size > len(x.response_body),
        "first_byte_ns": _span(x.start, x.first_byte),
        "client": x.client,
        "server": x.server,
        "trace_source": where.source,
    }
    if x.reason:
        attrs["reason"] = x.reason
    if x.streamed:
        attrs["streamed"] = True
    if x.connect_start is not None:
        attrs["connect_ns"] = _span(x.connect_start, x.tcp_setup)
        if x.tls_setup is not None:
            attrs["tls_ns"] = _span(x.tcp_setup, x.tls_setup)
    elif x.reused:
        attrs["reused_connection"] = True
    if x.error is not None:
        attrs["error"] = x.error
        attrs["error_kind"] = classify_error(x.error)
    payload: dict[str, Any] = {}
    if query:
        payload["query"] = query
    if x.request_body:
        payload["request_body"] = x.request_body
    if x.response_body:
        payload["response_body"] = x.response_body
    if request_secrets:
        payload["request_secrets"] = request_secrets
    if response_secrets:
        payload["response_secrets"] = response_secrets
    if x.websocket_frames:
        attrs["websocket_frames"] = x.websocket_frames
        attrs["websocket_bytes"] = x.websocket_bytes
        attrs["websocket_close"] = x.websocket_close
        payload["websocket"] = x.websocket
    failed = x.error is not None or (x.status is not None and x.status >= 500)
    # A CONNECT names an authority, not a resource.
    target = (
        f"CONNECT {x.host}:{x.port}"
        if x.method == "CONNECT"
        else call_target(x.method, x.scheme, x.host, x.port, path)
    )
    start_ns = _ns(x.start)
    assert start_ns is not None
    return Event(
        kind=HTTP_INBOUND if x.inbound else HTTP_OUTBOUND,
        trace_id=where.trace_id,
        span_id=where.span_id,
        parent_span_id=where.parent_span_id,
        conn_id=conn_id,
        start_ns=start_ns,
        duration_ns=_span(x.start, x.end) or 0,
        error=failed,
        fingerprint=target,
        attrs=attrs,
        payload=payload,
    )


@dataclass(slots=True, kw_only=True)
class Tunnel:
    """A CONNECT tunnel forwarded without interception (``--no-intercept``)."""

    host: str
    port: int
    start: float
    end: float
    bytes_up: int = 0  # client to server
    bytes_down: int = 0
    error: str | None = None
    client: str = ""
    server: str = ""


def tunnel_event(t: Tunnel, where: Attribution, conn_id: str | None) -> Event:
    attrs: dict[str, Any] = {
        "method": "CONNECT",
        "tunnel": True,
        "host": t.host,
        "port": t.port,
        "bytes_up": t.bytes_up,
        "bytes_down": t.bytes_down,
        "client": t.client,
        "server": t.server,
        "trace_source": where.source,
    }
    if t.error is not None:
        attrs["error"] = t.error
        attrs["error_kind"] = classify_error(t.error)
    start_ns = _ns(t.start)
    assert start_ns is not None
    return Event(
        kind=HTTP_OUTBOUND,
        trace_id=where.trace_id,
        span_id=where.span_id,
        parent_span_id=where.parent_span_id,
        conn_id=conn_id,
        start_ns=start_ns,
        duration_ns=_span(t.start, t.end) or 0,
        error=t.error is not None,
        fingerprint=f"CONNECT {t.host}:{t.port}",
        attrs=attrs,
    )
