"""One ``--udp`` listener: its client-facing socket, per-client upstream sockets, pending table.

See ``flux_proxy.udp`` for the theory of operation.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import asyncio_dgram

from protocols import dns
from recorder.abc import PayloadSealer
from recorder.model import UDP
from recorder.store import StoreError, open_store
from recorder.udpcapture import CLOSED, TIMEOUT, udp_event
from recorder.udpreplay import UdpReplay

from .config import parse_hostport
from .state import SidecarState

log = logging.getLogger("flux.udp")

Address = tuple[str, int]
MAX_RESPONSES: Final = 16  # recorded per request; more are relayed but only counted
LINGER: Final = 0.2  # seconds of quiet that end a non-DNS request's answers
SWEEP_EVERY: Final = 0.25  # seconds between expiry checks
MISSES_LOGGED: Final = 20  # replay misses logged one by one, per listener


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class UdpMapping:
    listen: Address
    upstream: Address
    dns: bool

    @classmethod
    def parse(cls, text: str) -> UdpMapping:
        """``LISTEN=UPSTREAM`` with ``/dns`` appended for a DNS-aware mapping."""
        spec = text.strip()
        is_dns = spec.lower().endswith("/dns")
        if is_dns:
            spec = spec[: -len("/dns")]
        listen, sep, upstream = spec.partition("=")
        if not sep or not listen or not upstream:
            raise ValueError(f"--udp expects LISTEN=UPSTREAM[/dns], got {text!r}")
        try:
            listen_addr = parse_hostport(listen, flag="--udp LISTEN")
            upstream_addr = parse_hostport(upstream, flag="--udp UPSTREAM")
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{exc} (in --udp {text!r})") from exc
        if upstream_addr[1] == 0:
            raise ValueError(f"--udp {text!r}: the upstream needs a port")
        return cls(listen=listen_addr, upstream=upstream_addr, dns=is_dns)

    @property
    def upstream_text(self) -> str:
        return format_address(self.upstream)


@dataclass(slots=True)
class _Pending:
    """One request waiting for its answer(s)."""

    client: Address
    request: bytes
    deadline: float  # time.monotonic() past which it is recorded as it stands
    start_ns: int = field(default_factory=time.time_ns)
    start_mono: int = field(default_factory=time.monotonic_ns)
    end_mono: int = 0
    responses: list[bytes] = field(default_factory=list)
    dropped: int = 0  # answers beyond MAX_RESPONSES: relayed, not kept


class _Upstream:
    """One client's connected socket toward the upstream, and the task relaying its answers."""

    __slots__ = ("last_used", "latest", "pending", "stream", "task")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.task: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()
        self.pending = 0  # entries of this client in the pending table
        self.latest: tuple[Address, int] | None = None  # non-DNS: the request answers go to


class UdpListener:
    def __init__(
        self,
        mapping: UdpMapping,
        *,
        state: SidecarState,
        submit: Callable[[Any], bool],
        store_location: str,
        timeout: float = 5.0,
        max_pending: int = 1024,
        sealer: PayloadSealer | None = None,
    ) -> None:
        self.mapping = mapping
        self.state = state
        self.submit = submit
        self.store_location = store_location
        self.sealer = sealer  # opens sealed recordings for replay (private keys)
        self.timeout = timeout
        self.max_pending = max_pending
        self.listen_text = format_address(mapping.listen)
        self.replay = UdpReplay(is_dns=mapping.dns)
        self._epoch = state.mode_epoch
        self._server: Any = None
        self._serve_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._pending: dict[tuple[Address, int], _Pending] = {}
        self._clients: OrderedDict[Address, _Upstream] = OrderedDict()
        self._seq = itertools.count(0x10000)  # above every DNS id, so keys never collide
        self._misses_logged = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def count(self, name: str, n: int = 1) -> None:
        self.state.counters[f"udp.{name}"] += n

    async def start(self) -> Address:
        if self.state.mode == "replay":
            await self._load_replay()
        self._server = await asyncio_dgram.bind(self.mapping.listen)
        host, port = self._server.sockname[:2]
        self.listen_text = format_address((host, port))
        loop = asyncio.get_running_loop()
        self._serve_task = loop.create_task(self._serve())
        self._sweeper = loop.call_later(min(SWEEP_EVERY, self.timeout / 2), self._sweep)
        return host, port

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for key in list(self._pending):
            entry = self._take(key)
            if entry is not None:
                self._finish(entry, None if entry.responses else CLOSED)
        tasks = [c.task for c in self._clients.values() if c.task is not None]
        for address in list(self._clients):
            self._close_client(address)
        if self._server is not None:
            self._server.close()
        if self._serve_task is not None:
            tasks.append(self._serve_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the client-facing socket

    async def _serve(self) -> None:
        server = self._server
        while True:
            try:
                data, address = await server.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                # An ICMP error about an earlier answer to a client that has gone away:
                # the socket itself is fine.
                log.debug("%s: %s", self.listen_text, exc)
                continue
            self.count("requests")
            try:
                if self.state.mode_epoch != self._epoch:
                    self._epoch = self.state.mode_epoch
                    if self.state.mode == "replay":
                        await self._load_replay()
                if self.state.mode == "replay":
                    await self._answer_from_recordings(data, address[:2])
                else:
                    await self._forward(data, address[:2])
            except Exception:  # one bad datagram must not end the listener
                log.exception("%s: could not handle a datagram from %s", self.listen_text, address)

    async def _send_to_client(self, data: bytes, address: Address) -> None:
        try:
            await self._server.send(data, address)
        except (OSError, asyncio_dgram.TransportClosed) as exc:
            log.debug("%s: answer to %s not sent: %s", self.listen_text, address, exc)

    # -- live modes

    async def _forward(self, data: bytes, client: Address) -> None:
        upstream = await self._upstream_for(client)
        if upstream is None:
            self.count("dropped")  # every client socket is busy: the datagram is lost
            return
        if self.state.mode == "record":
            self._track(data, client, upstream)
        try:
            await upstream.stream.send(data)
        except (OSError, asyncio_dgram.TransportClosed) as exc:
            # Often an ICMP "port unreachable" left over from an earlier datagram.
            log.debug("%s: to %s: %s", self.listen_text, self.mapping.upstream_text, exc)

    async def _upstream_for(self, client: Address) -> _Upstream | None:
        upstream = self._clients.get(client)
        if upstream is not None:
            self._clients.move_to_end(client)
            upstream.last_used = time.monotonic()
            return upstream
        if len(self._clients) >= self.max_pending and not self._evict_idle_client():
            return None
        try:
            stream = await asyncio_dgram.connect(self.mapping.upstream)
        except OSError as exc:
            log.warning("%s: cannot reach %s: %s", self.listen_text, self.mapping.upstream_text,
                        exc)  # fmt: skip
            return None
        upstream = self._clients[client] = _Upstream(stream)
        upstream.task = asyncio.get_running_loop().create_task(self._relay(client, upstream))
        return upstream

    def _evict_idle_client(self) -> bool:
        for address, upstream in self._clients.items():  # least recently used first
            if upstream.pending == 0:
                self._close_client(address)
                return True
        return False

    def _close_client(self, address: Address) -> None:
        upstream = self._clients.pop(address, None)
        if upstream is not None:
            upstream.stream.close()  # its relay task sees TransportClosed and ends

    async def _relay(self, client: Address, upstream: _Upstream) -> None:
        while True:
            try:
                data, _ = await upstream.stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:  # ICMP from the upstream, reported on the next call
                log.debug("%s: from %s: %s", self.listen_text, self.mapping.upstream_text, exc)
                continue
            upstream.last_used = time.monotonic()
            await self._send_to_client(data, client)
            try:
                self._answered(client, upstream, data)
            except Exception:
                log.exception("%s: could not record an answer", self.listen_text)

    # -- recording

    def _track(self, data: bytes, client: Address, upstream: _Upstream) -> None:
        key: tuple[Address, int] | None = None
        if self.mapping.dns:
            ident = dns.peek_id(data)
            if ident is not None:
                key = (client, ident)
                if key in self._pending:
                    return  # a retransmission: the first answer answers both
        elif upstream.latest is not None:
            # A new request ends the previous one's answers (answers go to the latest).
            previous = self._take(upstream.latest)
            if previous is not None:
                self._finish(previous, None)
        if len(self._pending) >= self.max_pending:
            self.count("dropped")  # forwarded, not recorded: memory stays bounded
            return
        if key is None:
            key = (client, next(self._seq))
        self._pending[key] = _Pending(client, data, time.monotonic() + self.timeout)
        upstream.pending += 1
        if not self.mapping.dns:
            upstream.latest = key

    def _answered(self, client: Address, upstream: _Upstream, data: bytes) -> None:
        if self.mapping.dns:
            ident = dns.peek_id(data)
            entry = self._take((client, ident)) if ident is not None else None
            if entry is not None:
                entry.responses.append(data)
                entry.end_mono = time.monotonic_ns()
                self._finish(entry, None)
            return
        entry = self._pending.get(upstream.latest) if upstream.latest is not None else None
        if entry is None:
            return
        if len(entry.responses) < MAX_RESPONSES:
            entry.responses.append(data)
        else:
            entry.dropped += 1
        entry.end_mono = time.monotonic_ns()
        entry.deadline = time.monotonic() + LINGER

    def _take(self, key: tuple[Address, int]) -> _Pending | None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            upstream = self._clients.get(entry.client)
            if upstream is not None:
                upstream.pending -= 1
                if upstream.latest == key:
                    upstream.latest = None
        return entry

    def _finish(self, entry: _Pending, error: str | None) -> None:
        end = entry.end_mono or time.monotonic_ns()
        try:
            event = udp_event(
                listen=self.listen_text,
                upstream=self.mapping.upstream_text,
                client=format_address(entry.client),
                is_dns=self.mapping.dns,
                request=entry.request,
                responses=entry.responses,
                start_ns=entry.start_ns,
                duration_ns=end - entry.start_mono,
                error=error,
                responses_dropped=entry.dropped,
            )
        except Exception:
            log.exception("%s: could not build a udp event", self.listen_text)
            return
        self.submit(event)

    def _sweep(self) -> None:
        try:
            self._expire(time.monotonic())
        except Exception:  # the sweep must go on, or pending requests would never expire
            log.exception("%s: expiry sweep failed", self.listen_text)
        self._sweeper = asyncio.get_running_loop().call_later(
            min(SWEEP_EVERY, self.timeout / 2), self._sweep
        )

    def _expire(self, now: float) -> None:
        expired = [key for key, entry in self._pending.items() if entry.deadline <= now]
        for key in expired:
            entry = self._take(key)
            if entry is None:
                continue
            if not entry.responses:
                self.count("timeouts")
            self._finish(entry, None if entry.responses else TIMEOUT)
        idle_since = now - self.timeout
        for address in [a for a, c in self._clients.items() if not c.pending and
                        c.last_used < idle_since]:  # fmt: skip
            self._close_client(address)

    # -- replay

    async def _load_replay(self) -> None:
        self.replay = await asyncio.to_thread(
            load_recordings, self.store_location, self.mapping.upstream_text, self.mapping.dns,
            self.sealer,
        )  # fmt: skip
        self._misses_logged = 0
        log.info("%s: replaying %d recorded exchanges with %s", self.listen_text,
                 len(self.replay), self.mapping.upstream_text)  # fmt: skip

    async def _answer_from_recordings(self, data: bytes, client: Address) -> None:
        answer = self.replay.answer(data)
        if answer.hit:
            self.count("replay_hits")
        else:
            self.count("replay_misses")
            if self._misses_logged < MISSES_LOGGED:
                self._misses_logged += 1
                log.info("%s: replay miss from %s: %s", self.listen_text,
                         format_address(client), answer.reason)  # fmt: skip
        for packet in answer.packets:
            await self._send_to_client(packet, client)


def load_recordings(
    location: str, upstream: str, is_dns: bool, sealer: PayloadSealer | None = None
) -> UdpReplay:
    """The recordings toward ``upstream``; runs in a thread (SQLite reads block)."""
    table = UdpReplay(is_dns=is_dns)
    try:
        store = open_store(location, readonly=True, sealer=sealer)
    except (StoreError, OSError) as exc:
        log.warning("no recordings to replay from %s: %s", location, exc)
        return table
    try:
        table.load((stored.event for stored in store.events(kind=UDP)), upstream=upstream)
    finally:
        store.close()
    if table.skipped:
        log.info("%d udp recordings toward %s cannot be replayed (unanswered, malformed or "
                 "sealed)", table.skipped, upstream)  # fmt: skip
    return table
