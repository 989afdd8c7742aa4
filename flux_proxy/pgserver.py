"""The PostgreSQL listener and what its connections share.

A connection is served by :class:`.pgproxy.PgClientProtocol` (forwarding, in
record and passthrough) or :class:`.pgreplay.PgReplayProtocol` (answering from
recordings), chosen at accept time by the mode; a mode switch reaches open
connections at their idle points, where the forwarder hands its client over
to replay and replay closes with 57P01 so that pools reconnect upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from protocols import pgwire

from .pgproxy import PgClientProtocol
from .pgreplay import PgReplayProtocol
from .replaysource import PgReplaySource
from .state import SidecarState
from .upstream import UpstreamTarget

log = logging.getLogger("flux.pg")

MODE_POLL_SECONDS = 0.1


class PgProxy:
    def __init__(
        self,
        *,
        upstream: UpstreamTarget | None,  # None: replay only (no --upstream-db)
        state: SidecarState,
        submit: Callable[[Any], bool],
        replay: PgReplaySource,
        tls_context: ssl.SSLContext | None = None,
        max_cycle_bytes: int = pgwire.DEFAULT_MAX_CYCLE_BYTES,
        max_message_length: int = pgwire.DEFAULT_MAX_MESSAGE_LENGTH,
    ) -> None:
        self.upstream = upstream
        self.state = state
        self.submit = submit
        self.replay = replay
        self._replay_generation = -1
        self.tls_context = tls_context
        self.max_cycle_bytes = max_cycle_bytes
        self.max_message_length = max_message_length
        self.connections: set[PgClientProtocol | PgReplayProtocol] = set()
        self._ids = itertools.count(1)
        self._prefix = os.urandom(2).hex()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return self.state.mode

    @property
    def mode_epoch(self) -> int:
        return self.state.mode_epoch

    def next_conn_id(self) -> str:
        return f"pg-{self._prefix}-{next(self._ids)}"

    def count(self, name: str) -> None:
        self.state.counters[f"pg.{name}"] += 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self) -> PgClientProtocol | PgReplayProtocol:
        if self.state.mode != "replay":
            return PgClientProtocol(self)
        self.replay_run()
        return PgReplayProtocol(self)

    def replay_run(self) -> None:
        """Each replay run (entering replay mode, or `flux replay` naming a trace) starts
        consumption over: every recording is unused again."""
        state = self.state
        if self._replay_generation != state.replay_generation:
            self._replay_generation = state.replay_generation
            self.replay.reset(state.replay_scope, state.report)

    def connection_opened(self, conn: PgClientProtocol | PgReplayProtocol) -> None:
        self.connections.add(conn)
        self.state.counters["pg.connections_total"] += 1

    def connection_closed(self, conn: PgClientProtocol | PgReplayProtocol) -> None:
        self.connections.discard(conn)

    def handed_over(self, old: PgClientProtocol, new: PgReplayProtocol) -> None:
        """A forwarded connection is answered from recordings from now on (same client)."""
        self.connections.discard(old)
        self.connections.add(new)
        self.count("handovers")

    async def _watch_mode(self) -> None:
        """Brings a switch to connections that are idle when it happens, so that they need
        not wait for their next request: an idle forwarded session goes to replay (and its
        upstream backend ends) at once, an idle replayed one closes at once, as a server
        terminating it would. Mode switches come from several places (admin API, pod
        annotation): following the one counter keeps them free of callbacks."""
        epoch = self.state.mode_epoch
        while True:
            await asyncio.sleep(MODE_POLL_SECONDS)
            if self.state.mode_epoch != epoch:
                epoch = self.state.mode_epoch
                for conn in list(self.connections):
                    conn.mode_changed()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, host, port, backlog=1024, reuse_address=True
        )
        self._watcher = loop.create_task(self._watch_mode())
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def serving(self) -> bool:
        """The listener accepts connections (readiness)."""
        return self._server is not None and self._server.is_serving()

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def close(self, grace: float = 0.0) -> None:
        """Stops accepting, lets open sessions finish for ``grace`` seconds, then closes them."""
        await self.stop_accepting()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
