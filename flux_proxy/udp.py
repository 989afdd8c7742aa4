"""Datagram listeners (``--udp LISTEN=UPSTREAM[/dns]``) on asyncio-dgram.

Theory of operation. Each listener has one socket facing its clients and, in
live modes, one connected socket per client facing the upstream: the upstream
sees a distinct source port per client, so its answers come back on the socket
of the client they belong to, with no demultiplexing guesswork. Every answer is
relayed as it came (a TC answer included: the client retries over TCP itself).

Recording pairs each request with its answer(s) in a pending table: DNS by
(client, query id), finished by the first answer; other UDP by the client's
latest request, which collects answers until a short quiet period ends it (a
datagram protocol does not say how many answers there will be; a request the
client follows up before any answer is recorded without one, which is how
fire-and-forget senders such as statsd look). A request nobody answers expires
after ``timeout`` and is recorded as a timeout; one still pending at shutdown is
recorded as "closed". The table and the per-client sockets are capped; past the
cap datagrams are still forwarded when a socket exists, but not recorded
(``udp.dropped``), so a flood costs bounded memory and never stalls the listener.

Replay never sends a datagram upstream: answers come from ``recorder.udpreplay``
over the recordings toward the same upstream address (the listen port may differ
between runs), loaded at start and again whenever the mode switches to replay.
Recordings written moments before a switch may still be in the recorder's batch.

Events are unattributed (trace id None) for now, and ``udp.*`` counters reach the
store (``flux stats``) as increments once a second and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from recorder.abc import PayloadSealer
from recorder.ingest import Counters

from .config import Settings
from .state import SidecarState
from .udplistener import Address, UdpListener, UdpMapping

__all__ = ["UdpListener", "UdpMapping", "UdpService"]

log = logging.getLogger("flux.udp")

COUNTERS_EVERY: Final = 1.0  # seconds between counter hand-overs to the recorder


class UdpService:
    """Every ``--udp`` listener of one sidecar, and the hand-over of their counters."""

    def __init__(
        self,
        settings: Settings,
        state: SidecarState,
        submit: Callable[[Any], bool],
        sealer: PayloadSealer | None = None,  # opens sealed recordings for replay
    ) -> None:
        self.mappings = [UdpMapping.parse(text) for text in settings.udp]  # ValueError
        self.state = state
        self.submit = submit
        timeout, max_pending = settings.udp_timeout, settings.udp_max_pending
        if timeout <= 0 or max_pending <= 0:
            raise ValueError("--udp-timeout and --udp-max-pending must be positive")
        self.listeners = [
            UdpListener(m, state=state, submit=submit, store_location=settings.store_location,
                        timeout=timeout, max_pending=max_pending, sealer=sealer)
            for m in self.mappings
        ]  # fmt: skip
        self._sent: dict[str, int] = {}
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> list[tuple[UdpMapping, Address]]:
        started: list[tuple[UdpMapping, Address]] = []
        for listener in self.listeners:
            try:
                address = await listener.start()
            except OSError as exc:
                raise ValueError(f"cannot listen on udp {listener.listen_text}: {exc}") from exc
            started.append((listener.mapping, address))
        self._ticker = asyncio.get_running_loop().call_later(COUNTERS_EVERY, self._tick)
        return started

    def _tick(self) -> None:
        self._hand_over_counters()
        self._ticker = asyncio.get_running_loop().call_later(COUNTERS_EVERY, self._tick)

    def _hand_over_counters(self) -> None:
        # Increments, as the store adds them up; `flux stats` then shows the udp.* totals.
        delta: dict[str, int] = {}
        for name, value in self.state.counters.items():
            if name.startswith("udp.") and value != self._sent.get(name, 0):
                delta[name] = value - self._sent.get(name, 0)
        if not delta:
            return
        if delta.get("udp.dropped"):
            log.warning("%d datagrams not recorded or not forwarded: the pending table or the "
                        "client sockets are full", delta["udp.dropped"])  # fmt: skip
        if self.submit(Counters(delta)):
            self._sent.update((name, self.state.counters[name]) for name in delta)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for listener in self.listeners:
            await listener.close()
        self._hand_over_counters()
