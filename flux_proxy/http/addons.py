"""The mitmproxy addon that records HTTP traffic.

Hooks run on the sidecar's event loop, inside mitmproxy's handling of each
connection, so each does a few dictionary look-ups and leaves: the request
hooks decide the trace and whether a body is streamed, the end hooks copy
what mitmproxy collected into an :class:`HttpExchange`, and the recorder link
packs it. Nothing here waits.

Bodies: one that declares a length within ``body_cap`` is left to mitmproxy,
which reads it whole (bounded by the cap) and hands it over at the end. Any
other (larger, chunked, HTTP/2 without a length, server-sent events) is
streamed: mitmproxy forwards each chunk as it arrives through a
:class:`BodyCapture`, which keeps the first ``body_cap`` bytes and counts the rest.

Trace attribution of an outbound call, strongest first: its ``traceparent``
header; the single inbound request in flight (:mod:`flux_proxy.inflight`);
else none (kept, unattributed). An inbound request gets a span of its own:
the app receives a ``traceparent`` naming that span as parent, so whatever
the app propagates nests under the request.

In replay mode nothing is recorded. The inbound proxy still forwards to the app
(the code under test, not an upstream), continuing the caller's trace and
registering the request in flight, so the app's calls are answered from that
trace's recordings by the replay addon (:mod:`.replay`); any other server
connection is refused here, as a last line of defence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from mitmproxy import connection, http
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.modes import ReverseProxy
from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode
from mitmproxy.tls import TlsData

from protocols.traceparent import FLAG_RANDOM, FLAG_SAMPLED, TraceParent, parse_traceparent
from recorder.httpcapture import (
    SECRET_HEADERS,
    Attribution,
    BodyCapture,
    HttpExchange,
    Tunnel,
    exchange_event,
    tunnel_event,
)
from recorder.model import Event, new_span_id, new_trace_id

from .. import inflight
from ..state import SidecarState
from .flowparts import (
    as_client_sent,
    bodies,
    framing,
    outbound_attribution,
    streams,
    weak_attribution,
)
from .hosts import HostMatcher, format_address
from .layers import InboundProxy, TunnelLayer

log = logging.getLogger("flux.http")

TRACE_HEADER: Final = "x-flux-trace-id"
_KEY: Final = "flux"  # our entry in flow.metadata
_KNOWN_FLAGS: Final = FLAG_SAMPLED | FLAG_RANDOM
_REPLAYED: Final = "flux.replayed"  # an inbound request forwarded in replay mode
REPLAY_REFUSAL: Final = "flux is in replay mode: it never connects to an upstream"
UNTRUSTED_CA: Final = (
    "if the client rejected the flux CA certificate, make it trust `flux ca export` "
    "(SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS) or list the host in --no-intercept"
)


@dataclass(slots=True)
class _Call:
    """What the request hooks decided, kept on the flow until its event is sent."""

    where: Attribution
    inbound: bool
    request_body: BodyCapture | None = None
    response_body: BodyCapture | None = None
    websocket: list[list[Any]] = field(default_factory=list)
    ws_frames: int = 0
    ws_bytes: int = 0
    ws_kept: int = 0


class Recorder:
    """mitmproxy addon: one ``http.inbound`` or ``http.outbound`` event per exchange."""

    def __init__(
        self,
        *,
        state: SidecarState,
        submit: Callable[[Event], object],
        body_cap: int,
        no_intercept: HostMatcher,
        sensitive_headers: Iterable[str] = (),
    ) -> None:
        self.state = state
        extra = {name.strip().lower().encode() for name in sensitive_headers if name.strip()}
        self.secret_headers = SECRET_HEADERS | extra
        self.submit = submit
        self.body_cap = body_cap
        self.no_intercept = no_intercept
        self.active = 0  # exchanges between their request headers and their end
        self._opened: set[str] = set()  # server connections whose set-up time was reported
        # mitmproxy's live connection handlers by client id (its proxyserver addon's).
        self.connections: dict[Any, Any] | None = None

    # -- layers and connections ------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        # Ahead of mitmproxy's NextLayer addon, which leaves a decided layer alone.
        context = nextlayer.context
        if (
            nextlayer.layer is not None
            or self.no_intercept.empty
            or context.server.address is None
            or not isinstance(context.client.proxy_mode, RegularMode)
            or not isinstance(context.layers[-1], HttpStream)  # the CONNECT's tunnel itself
        ):
            return
        host, port = context.server.address[:2]
        if self.no_intercept.matches(str(host), int(port)):
            nextlayer.layer = TunnelLayer(context, self._tunnel_done)

    def _tunnel_done(self, tunnel_layer: TunnelLayer, tunnel: Tunnel) -> None:
        if self.state.mode == "record":
            self.submit(tunnel_event(tunnel, weak_attribution(), tunnel_layer.context.client.id))

    def client_connected(self, client: connection.Client) -> None:
        # The top layer is made before any hook runs; swap the reverse proxy's for ours
        # before it starts (see InboundProxy).
        if self.connections is None or not isinstance(client.proxy_mode, ReverseMode):
            return
        handler = self.connections.get(client.id)
        if handler is not None and type(handler.layer) is ReverseProxy:
            handler.layer = InboundProxy(handler.layer.context)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Replay never reaches an upstream; the app behind the inbound proxy is not one.
        if self.state.mode == "replay" and not isinstance(data.client.proxy_mode, ReverseMode):
            # The last line of defence: the replay addon answers before anything connects.
            self.state.counters["http.replay_connects_refused"] += 1
            data.server.error = REPLAY_REFUSAL

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._opened.discard(data.server.id)

    # -- requests and responses ------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.state.mode != "record":
            if self.state.mode == "replay" and isinstance(flow.client_conn.proxy_mode, ReverseMode):
                self._begin_replayed(flow)
            return
        request = flow.request
        length, encoded, traceparent = framing(request.headers.fields)
        inbound = isinstance(flow.client_conn.proxy_mode, ReverseMode)
        where = (
            self._begin_inbound(flow, traceparent) if inbound else outbound_attribution(traceparent)
        )
        call = _Call(where, inbound)
        if streams(length, encoded, self.body_cap, request.is_http2):
            call.request_body = BodyCapture(self.body_cap)
            request.stream = call.request_body
        flow.metadata[_KEY] = call
        self.active += 1

    def _begin_replayed(self, flow: http.HTTPFlow) -> None:
        """An inbound request in replay mode reaches the app (the code under test) with
        its trace continued and in flight, so the app's calls and queries that carry no
        trace are answered from that trace's recordings; nothing is recorded."""
        _, _, traceparent = framing(flow.request.headers.fields)
        flow.metadata[_REPLAYED] = self._begin_inbound(flow, traceparent).trace_id
        self.active += 1

    def _end_replayed(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop(_REPLAYED, None) is not None:
            inflight.end(flow.id)
            self.active -= 1

    def _begin_inbound(self, flow: http.HTTPFlow, value: bytes | None) -> Attribution:
        headers = flow.request.headers
        incoming = parse_traceparent(value.decode("latin-1")) if value is not None else None
        span = new_span_id()
        if incoming is not None:
            trace_id, parent, flags = incoming.trace_id, incoming.parent_id, incoming.flags
        else:
            trace_id, parent, flags = new_trace_id(), None, FLAG_SAMPLED
        injected = TraceParent(
            version=0, trace_id=trace_id, parent_id=span, flags=flags & _KNOWN_FLAGS
        )
        headers["traceparent"] = injected.format()
        inflight.begin(flow.id, injected)
        return Attribution(trace_id=trace_id, span_id=span, parent_span_id=parent, source="inbound")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: _Call | None = flow.metadata.get(_KEY)
        if call is None:
            if (replayed := flow.metadata.get(_REPLAYED)) is not None and flow.response:
                flow.response.headers[TRACE_HEADER] = replayed
            return
        response = flow.response
        assert response is not None
        if call.inbound and call.where.trace_id is not None:
            response.headers[TRACE_HEADER] = call.where.trace_id
        length, encoded, _ = framing(response.headers.fields)
        if streams(length, encoded, self.body_cap, True):
            call.response_body = BodyCapture(self.body_cap)
            response.stream = call.response_body

    def response(self, flow: http.HTTPFlow) -> None:
        self._end_replayed(flow)
        call: _Call | None = flow.metadata.get(_KEY)
        if call is None or flow.websocket is not None:  # a websocket ends in websocket_end
            return
        self._finish(flow, call, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end_replayed(flow)
        call: _Call | None = flow.metadata.get(_KEY)
        if call is not None:
            self._finish(flow, call, flow.error.msg if flow.error else "unknown error")

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        # mitmproxy's 502 advises changing its connection_strategy, which means nothing to
        # our users; say what failed instead, and record the attempt.
        if self.state.mode == "replay":
            return  # the replay addon answered the CONNECT itself, and connected nowhere
        server = flow.server_conn
        reason = server.error or (flow.error.msg if flow.error else "connection failed")
        target = f"{flow.request.host}:{flow.request.port}"
        flow.response = http.Response.make(
            502, f"flux: cannot connect to {target}: {reason}\n", {"content-type": "text/plain"}
        )
        if self.state.mode == "record":
            self._finish(flow, _Call(weak_attribution(), False), reason, count=False)

    # -- websockets ------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        call: _Call | None = flow.metadata.get(_KEY)
        if call is None or flow.websocket is None:
            return
        messages = flow.websocket.messages
        for message in messages:
            content = message.content
            call.ws_frames += 1
            call.ws_bytes += len(content)
            room = self.body_cap - call.ws_kept
            kept = content[:room] if room > 0 else b""
            call.ws_kept += len(kept)
            call.websocket.append([message.from_client, message.timestamp, message.is_text, kept])
        # The layer holds its own reference to the message it relays; without this a
        # long-lived socket would keep every frame in memory until it closes.
        messages.clear()

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        call: _Call | None = flow.metadata.get(_KEY)
        if call is not None:
            self._finish(flow, call, None)

    # -- TLS failures the client should hear about -----------------------------------

    def tls_failed_client(self, data: TlsData) -> None:
        client, server = data.context.client, data.context.server
        if self.state.mode != "record" or isinstance(client.proxy_mode, ReverseMode):
            return
        attempt = HttpExchange(
            inbound=False,
            method="CONNECT",
            scheme="https",
            host=client.sni or (str(server.address[0]) if server.address else ""),
            port=int(server.address[1]) if server.address else 0,
            start=client.timestamp_start,
            end=time.time(),
            error=f"client TLS handshake failed ({data.conn.error or 'no reason given'}); "
            + UNTRUSTED_CA,
            client=format_address(client.peername),
            server=format_address(server.peername),
        )
        self.submit(exchange_event(attempt, weak_attribution(), client.id))

    # -- the event -------------------------------------------------------------------

    def _finish(
        self, flow: http.HTTPFlow, call: _Call, error: str | None, *, count: bool = True
    ) -> None:
        flow.metadata.pop(_KEY, None)
        if count:
            self.active -= 1
        if call.inbound:
            inflight.end(flow.id)
        request, response, server = flow.request, flow.response, flow.server_conn
        exchange = HttpExchange(
            inbound=call.inbound,
            method=request.method,
            scheme=request.scheme,
            host=request.host,
            port=request.port,
            target=request.path,
            http_version=request.http_version,
            request_headers=request.headers.fields,
            request_body=b"",
            request_body_size=0,
            start=request.timestamp_start,
            end=time.time(),
            error=error,
            client=format_address(flow.client_conn.peername),
            server=format_address(server.peername),
        )
        if call.inbound:
            as_client_sent(exchange, flow)
        bodies(exchange, (call.request_body, call.response_body), request, response, self.body_cap)
        if server.timestamp_tcp_setup is not None:
            if server.id in self._opened:
                exchange.reused = True
            else:
                self._opened.add(server.id)
                exchange.connect_start = server.timestamp_start
                exchange.tcp_setup = server.timestamp_tcp_setup
                exchange.tls_setup = server.timestamp_tls_setup
        if response is not None:
            exchange.status = response.status_code
            exchange.reason = response.reason
            exchange.response_headers = response.headers.fields
            exchange.first_byte = response.timestamp_start
            if response.timestamp_end is not None and error is None:
                exchange.end = response.timestamp_end
        elif error is not None:
            exchange.status = 502  # what mitmproxy answered the client, if it was still there
        if flow.websocket is not None:
            exchange.websocket = call.websocket
            exchange.websocket_frames = call.ws_frames
            exchange.websocket_bytes = call.ws_bytes
            close = flow.websocket.close_code
            exchange.websocket_close = None if close is None else int(close)  # an IntEnum
            exchange.end = flow.websocket.timestamp_end or exchange.end
        self.submit(exchange_event(exchange, call.where, flow.client_conn.id, self.secret_headers))
