"""Two mitmproxy layers that behave the way a sidecar needs.

:class:`TunnelLayer`: CONNECT tunnels to ``--no-intercept`` hosts, forwarded
opaque, counted, recorded once. mitmproxy's own ignored-host layer forwards
without telling anyone, and its recorded variant keeps every chunk on the flow
for the tunnel's lifetime; this is mitmproxy's relay plus two counters, and it
reports one :class:`recorder.httpcapture.Tunnel` when both directions are closed.

:class:`InboundProxy`: the reverse proxy in front of the app, connecting per
request. mitmproxy's reverse mode connects when the client does (the "eager"
strategy, which the forward proxy keeps for ALPN mirroring) and, if the app is
down, closes the client's connection without a word; per request, a client
gets a 502 naming the failure, and the attempt is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mitmproxy.proxy import events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.modes import ReverseProxy
from mitmproxy.proxy.layers.tcp import TCPLayer

from recorder.httpcapture import Tunnel

from .hosts import format_address


class TunnelLayer(TCPLayer):
    """A :class:`TCPLayer` without a flow (no per-chunk hooks, nothing kept) that counts."""

    def __init__(self, context: Context, on_done: Callable[[TunnelLayer, Tunnel], None]) -> None:
        super().__init__(context, ignore=True)
        server = context.server
        assert server.address is not None
        self.on_done = on_done
        self.tunnel = Tunnel(
            host=str(server.address[0]),
            port=int(server.address[1]),
            start=server.timestamp_start or time.time(),
            end=0.0,
            client=format_address(context.client.peername),
            server=format_address(server.peername),
        )
        self._reported = False

    def start(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from super().start(event)
        if self._handle_event == self.done:  # the upstream could not be reached
            self.tunnel.error = self.context.server.error or "cannot connect to the upstream"
            self._report()

    _handle_event = start  # TCPLayer binds its own start this way; ours must replace it

    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            if event.connection is self.context.client:
                self.tunnel.bytes_up += len(event.data)
            else:
                self.tunnel.bytes_down += len(event.data)
        yield from super().relay_messages(event)
        if self._handle_event == self.done:
            self._report()

    def _report(self) -> None:
        if not self._reported:
            self._reported = True
            self.tunnel.end = time.time()
            self.on_done(self, self.tunnel)


class InboundProxy(ReverseProxy):
    """mitmproxy's ReverseProxy without the connection at client connect."""

    def finish_start(self) -> layer.CommandGenerator[str | None]:
        self._handle_event = self.child_layer.handle_event  # type: ignore[method-assign]
        yield from self.child_layer.handle_event(events.Start())
        return None
