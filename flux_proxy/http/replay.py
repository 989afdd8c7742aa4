"""The mitmproxy addon that answers outbound calls from recordings in replay mode.

Fail-closed: in replay mode no connection to an upstream is opened, not even to
learn its certificate. mitmproxy would open one in three places, and each is
settled per flow here, so record mode keeps its behaviour (the eager strategy
that mirrors the upstream's ALPN and certificate) and a run-time switch takes
effect with the next request:

- a CONNECT: ``http_connect`` answers it itself (200, or a refusal for
  ``--no-intercept`` hosts, whose tunnels carry nothing we could answer);
- the TLS handshake with the client: ``tls_clienthello`` tells mitmproxy not to
  handshake with the upstream first, so the interception certificate is made
  from the SNI (or the CONNECT host) alone;
- the request: ``request`` sets ``flow.response``, so mitmproxy never asks for
  a server connection.

The recorder addon's ``server_connect`` still refuses any connection attempted
in replay mode: this addon is the answer, that hook is the guarantee.

A miss is ``502 Bad Gateway`` with ``x-flux-replay: miss`` and a plain-text
body naming the closest recording. 502, the status a proxy gives when it got no
usable answer from upstream, rather than 504: nothing timed out, and a client
that retries on 504 would only miss again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Final

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.tls import ClientHelloData, TlsData

from protocols.traceparent import parse_traceparent
from recorder.abc import PayloadSealer
from recorder.httpcapture import split_target
from recorder.httpreplay import CallRequest, Hit, HttpReplayIndex, Miss, RecordedCall
from recorder.model import HTTP_OUTBOUND, Event
from recorder.store import StoreError, open_store

from .. import inflight
from ..state import SidecarState
from .hosts import HostMatcher

log = logging.getLogger("flux.http")

REPLAY_HEADER: Final = "x-flux-replay"
# Recordings loaded for a run that is not scoped to one trace (the newest are kept).
LOAD_LIMIT: Final = 20_000
_ALL: Final = "*"  # load key: every recording; trace ids are hex, so it cannot clash
# Meaningful for one connection only, or describing a framing we redo (RFC 9110, 7.6.1).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"content-length",
    }
)


def _text_response(status: int, text: str, tag: str) -> http.Response:
    return http.Response.make(
        status,
        text.encode() + b"\n",
        {"content-type": "text/plain; charset=utf-8", REPLAY_HEADER: tag},
    )


def replayed_response(recorded: RecordedCall, request: http.Request) -> http.Response:
    """The recorded response, framed anew for this client: the body is sent whole, so
    the recorded framing (chunked, its connection options) gives way to a length."""
    if recorded.error is not None and not recorded.response_headers:
        return _text_response(
            recorded.status,
            f"flux replay mode: the recorded call failed: {recorded.error}",
            "error",
        )
    status, body = recorded.status, recorded.response_body
    h2 = request.is_http2 or request.is_http3
    named = {
        token.strip().lower().encode()
        for name, value in recorded.response_headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    fields = []
    length: bytes | None = None
    for name, value in recorded.response_headers:
        lowered = name.lower()
        if lowered == b"content-length":
            length = value
        if lowered in HOP_BY_HOP or lowered in named:
            continue
        if lowered == b"content-encoding" and not body:
            continue  # nothing to decode: a client would fail on an empty gzip stream
        fields.append((lowered if h2 else name, value))  # HTTP/2 field names are lowercase
    if request.method == "HEAD" or status == 304:
        body = b""
        if length is not None:  # the length of what a GET would have returned
            fields.append((b"content-length", length))
    elif status == 204 or 100 <= status < 200:
        body = b""
    else:
        fields.append((b"content-length", str(len(body)).encode()))
    now = time.time()
    return http.Response(
        http_version=request.data.http_version,
        status_code=status,
        reason=recorded.reason.encode("latin-1", "replace"),
        headers=tuple(fields),
        content=body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )


class HttpReplaySource:
    """The recordings of the current replay run, read from the store as calls need them.

    Reads run in a worker thread: a store read must not stall the event loop that
    every other connection of the sidecar shares."""

    def __init__(self, store_location: str, sealer: PayloadSealer | None = None) -> None:
        self.location = store_location
        self.sealer = sealer
        self.index = HttpReplayIndex()
        self._generation = -1
        self._loaded: set[str | None] = set()
        self._ids: set[int] = set()
        self._lock = asyncio.Lock()

    async def index_for(self, state: SidecarState, trace: str | None) -> HttpReplayIndex:
        if self._generation != state.replay_generation:
            # A new run: every recording is unused again.
            self._generation = state.replay_generation
            self.index = HttpReplayIndex()
            self._loaded.clear()
            self._ids.clear()
        index = self.index
        keys: tuple[str | None, ...] = (
            (_ALL,) if trace is None or state.replay_scope is None else (trace, None)
        )
        async with self._lock:
            missing = [k for k in keys if k not in self._loaded]
            if missing and index is self.index:
                events = await asyncio.to_thread(self._read, missing)
                if index is self.index:  # not superseded by a new run meanwhile
                    self._loaded.update(missing)
                    index.add_events(events)
        return index

    def _read(self, keys: Iterable[str | None]) -> list[Event]:
        try:
            store = open_store(self.location, readonly=True, sealer=self.sealer)
        except (StoreError, OSError) as exc:
            log.error("replay cannot read the store at %s: %s", self.location, exc)
            return []
        events: list[Event] = []
        try:
            for key in keys:
                if key is None or key == _ALL:
                    stored = store.events(kind=HTTP_OUTBOUND)
                    keep = deque(
                        (e for e in stored if key == _ALL or e.event.trace_id is None),
                        maxlen=LOAD_LIMIT,
                    )
                else:
                    keep = deque(store.events(kind=HTTP_OUTBOUND, trace_id=key))
                for item in keep:
                    if item.id not in self._ids:
                        self._ids.add(item.id)
                        events.append(item.event)
        except (StoreError, OSError) as exc:
            log.error("replay cannot read the store at %s: %s", self.location, exc)
        finally:
            store.close()
        return events


class HttpReplay:
    """mitmproxy addon, after mitmproxy's own: answers the forward proxy in replay mode."""

    def __init__(
        self,
        *,
        state: SidecarState,
        store_location: str,
        sealer: PayloadSealer | None,
        no_intercept: HostMatcher,
    ) -> None:
        self.state = state
        self.source = HttpReplaySource(store_location, sealer)
        self.no_intercept = no_intercept

    def _replaying(self, flow: http.HTTPFlow) -> bool:
        # The inbound proxy's app is the code under test, not an upstream: it is reached.
        return self.state.mode == "replay" and not isinstance(
            flow.client_conn.proxy_mode, ReverseMode
        )

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._replaying(flow) or flow.response is not None:
            return
        request = flow.request
        if self.no_intercept.matches(request.host, request.port):
            self.state.counters["http.replay_refused"] += 1
            flow.response = _text_response(
                502,
                f"flux replay mode: {request.host}:{request.port} is a --no-intercept host; its "
                "tunnel carries bytes flux cannot read, so replay has nothing to answer from",
                "refused",
            )
            return
        # Answered here, mitmproxy does not connect to the upstream (its eager strategy).
        now = time.time()
        flow.response = http.Response(
            request.data.http_version, 200, b"Connection established", (), b"", None, now, now
        )

    def tls_clienthello(self, data: ClientHelloData) -> None:
        # After mitmproxy's TlsConfig, which asks for the upstream's handshake first.
        if self.state.mode == "replay" and not isinstance(
            data.context.client.proxy_mode, ReverseMode
        ):
            data.establish_server_tls_first = False

    async def tls_start_client(self, data: TlsData) -> None:
        """Offer the client the protocol the upstream chose when the calls were recorded.

        In record mode mitmproxy mirrors the upstream's ALPN choice; with no upstream it
        would take the client's first preference, which for some clients (httpx) is
        HTTP/1.1 where the recording was HTTP/2. HTTP/1.1 only when the upstream never
        spoke HTTP/2 in a recording; otherwise HTTP/2 if offered, as servers prefer it."""
        context = data.context
        if (
            self.state.mode != "replay"
            or isinstance(context.client.proxy_mode, ReverseMode)
            or data.ssl_conn is None
            or data.is_dtls
            or context.server.address is None
        ):
            return
        host, port = context.server.address[:2]
        index = await self.source.index_for(self.state, self._weak_trace())
        http2 = index.http2(f"https://{host}:{port}")
        app_data = data.ssl_conn.get_app_data()
        # TlsConfig's ALPN callback picks server_alpn when the client offers it.
        app_data["server_alpn"] = b"http/1.1" if http2 is False else b"h2"

    async def request(self, flow: http.HTTPFlow) -> None:
        if not self._replaying(flow) or flow.response is not None:
            return
        request = flow.request
        if request.headers.get("upgrade", "").lower() == "websocket":
            self.state.counters["http.replay_refused"] += 1
            flow.response = _text_response(
                502, "flux replay mode: websocket connections are not replayed", "refused"
            )
            return
        path, query = split_target(request.path)
        call = CallRequest(
            method=request.method,
            scheme=request.scheme,
            host=request.host,
            port=request.port,
            path=path,
            query=query,
            body=request.raw_content or b"",
            content_type=request.headers.get("content-type", ""),
        )
        trace = self._trace(request)
        anywhere = self.state.replay_scope is None
        index = await self.source.index_for(self.state, trace)
        result = index.match(trace, call, anywhere=anywhere)
        report = self.state.report
        if isinstance(result, Hit):
            self.state.counters["http.replay_hits"] += 1
            report.hit(HTTP_OUTBOUND, trace, call.target, result.volatile)
            flow.response = replayed_response(result.recorded, request)
        else:
            assert isinstance(result, Miss)
            self.state.counters["http.replay_misses"] += 1
            closest = result.closest.target if result.closest is not None else None
            report.miss(HTTP_OUTBOUND, trace, call.target, result.message, closest)
            log.warning("%s", result.message)
            flow.response = _text_response(502, result.message, "miss")

    def _trace(self, request: http.Request) -> str | None:
        """The trace a call belongs to: its header, the one request in flight, the run's."""
        value = request.headers.get("traceparent")
        if value is not None and (parsed := parse_traceparent(value)) is not None:
            return parsed.trace_id
        return self._weak_trace()

    def _weak_trace(self) -> str | None:
        if (single := inflight.single_trace()) is not None:
            return single.trace_id
        return self.state.replay_scope
