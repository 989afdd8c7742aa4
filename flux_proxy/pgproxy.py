"""The PostgreSQL listener: a transparent forwarder that taps protocol cycles.

Bytes are forwarded exactly as they arrive, in both directions, with
``asyncio.Protocol`` on both sides (no stream tasks on the data path) and
backpressure each way (``pause_writing`` on one side pauses reading on the
other). The only per-message work on the data path is header scanning by
:class:`protocols.pgwire.CycleSplitter`; decoding happens in the recorder's
writer thread. Authentication traffic is relayed (:mod:`.pgauth`) and never
recorded.

A mode switch reaches a session at an idle point (ReadyForQuery, status
idle): recording starts or stops there, and a switch to replay hands the
client's connection to :class:`.pgreplay.PgReplayProtocol`, with the prepared
statements it made (:mod:`.pgprepared`), and ends the upstream session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from protocols import pgwire
from recorder.mutation.capture import StatementCapture
from recorder.pgcapture import PgCycleCaptured, PgSessionEnded, PgSessionStarted

from . import inflight
from .pgauth import AUTH, CLOSED, CONNECTING, READY, STARTUP, PgSessionSetup, cancel_packet, fatal
from .pgearly import EarlyBytes
from .pgprepared import PreparedStatements
from .pgreplay import PgReplayProtocol
from .pgrewrite import PgRewriter, capture_enabled, shared_planner
from .pgrows import server_major
from .upstream import cancel_request, set_nodelay

if TYPE_CHECKING:
    from .pgserver import PgProxy

log = logging.getLogger("flux.pg")

_TERMINATE = b"X\x00\x00\x00\x04"
_CANCEL_RETRIES = (0.1, 0.3, 1.0, 3.0)  # seconds after each send of a released cancel


def _startup_user(params: dict[str, str]) -> str | None:
    """The StartupMessage's user, or None when its settings may have made another role
    current (the preload then says which, see recorder.mutation.preload)."""
    settings = " ".join(f"{k}={v}" for k, v in params.items() if k not in ("user", "database"))
    return None if "role" in settings or "authorization" in settings else params.get("user", "")


class PgClientProtocol(PgSessionSetup):
    """One client connection and, once it has sent its StartupMessage, its upstream."""

    def __init__(self, proxy: PgProxy) -> None:
        super().__init__(proxy)
        self.splitter: pgwire.CycleSplitter | None = None
        self.prepared = PreparedStatements()  # kept for a handover to replay
        # Record mode's mutation capture: rewrites data-changing statements upstream and
        # strips what it added from the answers (pgrewrite). Kept once made, so statements
        # it prepared rewritten are still stripped after recording stops.
        self.rewriter: PgRewriter | None = None
        self.recording = False
        self._state = proxy.state
        self._mode_epoch = -1
        self._early_bytes = EarlyBytes()  # requests sent ahead of the first ReadyForQuery
        # The client's CancelRequest that came while its bytes were held behind our preload.
        self._cancel_held: bytes | None = None
        self._cycles_ended = 0  # protocol cycles answered, for a cancel sent after release

    # -- client side -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        set_nodelay(transport)
        self.proxy.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state == READY:
            splitter = self.splitter
            assert splitter is not None and self.upstream is not None
            if self._mode_epoch != self._state.mode_epoch and splitter.idle:
                # A switch made while the session was idle lands here, before any of this
                # request reaches the upstream.
                session = self._apply_mode()
                if session is not None:
                    session.data_received(data)
                    return
            try:
                splitter.frontend(data, time.time_ns() if self.recording else 0)
                self.prepared.frontend(data, splitter)
                if self.rewriter is not None:
                    data = self.rewriter.frontend(data)
            except pgwire.RemoteProtocolError as exc:
                self._protocol_violation(str(exc))
                return
            except Exception:
                self._rewriter_failed()
                return
            self.upstream.write(data)
        elif self.state == AUTH:
            assert self.upstream is not None
            data = self._early_bytes.client(data)
            if data:
                self.upstream.write(data)
        elif self.state == STARTUP:
            self._startup_data(data)
        elif self.state == CONNECTING:
            data = self._early_bytes.client(data)
            if data:
                self._early.append(data)

    def _forward(self, data: bytes) -> None:
        super()._forward(data)
        flush = self._early_bytes.server(data)
        if flush and self.upstream is not None:
            self.upstream.write(flush)

    def eof_received(self) -> bool | None:
        return None  # close our side too; PostgreSQL has no half-closed sessions

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            splitter = self.splitter
            if was == READY and splitter is not None and splitter.awaiting_backend:
                # The client vanished mid-query: cancel it so the backend is released now,
                # not when the query would have finished.
                self._send_cancel()
            # Only between messages of an established session: mid-authentication the
            # server would take a Terminate for a broken SASL exchange and log an error.
            if was == READY and splitter is not None and splitter.at_frontend_boundary:
                upstream.write(_TERMINATE)
            upstream.close()
        self._finish_recording("client closed")
        self.proxy.connection_closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- upstream side ---------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        if self.state == AUTH:
            self._auth_data(data)  # forwards each message once it is whole
            return
        # From here on the session is established: the upstream exists only from AUTH on.
        captured: list[list[StatementCapture]] = []
        if self.rewriter is not None:
            try:
                data, captured = self.rewriter.backend(data)
            except Exception:
                self._rewriter_failed()
                return
            if self.rewriter.releasing:
                if not self._release_held(self.rewriter):
                    return
            elif self._cancel_held is not None and not self.rewriter.holding:
                self._cancel_held = None  # the preload is answered; nothing was held
        transport.write(data)
        splitter = self.splitter
        assert splitter is not None
        try:
            cycles = splitter.backend(data, time.time_ns() if self.recording else 0)
        except pgwire.RemoteProtocolError as exc:
            self._upstream_violation(str(exc))
            return
        if cycles:
            self._cycles_ended += len(cycles)
            submit = self.proxy.submit
            conn_id = self.conn_id
            # The weakest attribution: the one inbound request in flight, if only one is.
            request = inflight.single_trace()
            for n, cycle in enumerate(cycles):
                captures = tuple(captured[n]) if n < len(captured) else ()
                submit(PgCycleCaptured(conn_id=conn_id, cycle=cycle, captures=captures,
                                       inflight=request))  # fmt: skip
        if self._mode_epoch != self._state.mode_epoch and splitter.idle:
            self._apply_mode()

    def _release_held(self, rewriter: PgRewriter) -> bool:
        """Client bytes held while our own query was answered go upstream now."""
        try:
            held = rewriter.release()
        except pgwire.RemoteProtocolError as exc:
            self._protocol_violation(str(exc))
            return False
        except Exception:
            self._rewriter_failed()
            return False
        if self.upstream is not None:
            self.upstream.write(held)
        cancel, self._cancel_held = self._cancel_held, None
        if cancel is not None:
            self.proxy.spawn(self._cancel_released(cancel))
        return True

    async def _cancel_released(self, packet: bytes) -> None:
        """The client's cancel, after the bytes it was meant for. The server ignores one
        that reaches it before it has read the statement (a cancel of an idle session), so
        it is sent again, a few times, for as long as the first cycle released is running."""
        ended = self._cycles_ended
        for delay in _CANCEL_RETRIES:
            if self.proxy.upstream is None or self.state == CLOSED:
                return
            await cancel_request(self.proxy.upstream, packet)
            await asyncio.sleep(delay)
            if self._cycles_ended != ended:
                return

    def _relay_cancel(self, packet: bytes) -> None:
        key = packet[8:]
        for conn in self.proxy.connections:
            if isinstance(conn, PgClientProtocol) and conn.auth.backend_key == key:
                if conn._hold_cancel(packet):
                    return
                break
        super()._relay_cancel(packet)

    def _hold_cancel(self, packet: bytes) -> bool:
        """Whether a CancelRequest for this session waits: the server would cancel our
        preload, and the client's statement held behind it would then run uncancelled.
        Held bytes are released once the preload is answered, and the cancel follows them.
        It waits even when nothing is held yet: it came on a connection of its own, and
        may have overtaken the statement it was sent for. If nothing comes before the
        preload's answer, it is dropped, as the server drops one for an idle session."""
        rewriter = self.rewriter
        if rewriter is None or not rewriter.holding:
            return False
        self._cancel_held = packet
        return True

    def _ready(self, status: str) -> None:
        self.state = READY
        self.splitter = pgwire.CycleSplitter(
            keep_bytes=False,
            max_cycle_bytes=self.proxy.max_cycle_bytes,
            max_message_length=self.proxy.max_message_length,
        )
        self.splitter.status = status
        session = self._apply_mode()
        early = self._early_bytes.take()
        if early:
            (session or self).data_received(early)

    def mode_changed(self) -> None:
        """The sidecar's mode changed: applied now if the session is idle, else at its next
        idle point."""
        splitter = self.splitter
        if self._mode_epoch != self._state.mode_epoch and self.state == READY:
            assert splitter is not None
            if splitter.idle:
                self._apply_mode()

    def _apply_mode(self) -> PgReplayProtocol | None:
        """Called at idle points only, so recording starts and stops on cycle boundaries.
        Returns the replay session that took the connection over, if it was handed over."""
        assert self.splitter is not None
        at_start = self._mode_epoch == -1
        self._mode_epoch = self._state.mode_epoch
        if self.proxy.mode == "replay":
            return self._hand_over()
        recording = self.proxy.mode == "record"
        if recording and not self.recording:
            self.proxy.submit(
                PgSessionStarted(
                    conn_id=self.conn_id,
                    parameters=self._parameters,
                    backend=bytes(self.auth.session_backend),
                    client=self.peer,
                    upstream=self.proxy.upstream.address,
                    start_ns=self._started_ns,
                    end_ns=time.time_ns(),
                )
            )
        elif self.recording and not recording:
            self.proxy.submit(
                PgSessionEnded(
                    conn_id=self.conn_id, end_ns=time.time_ns(), reason="recording stopped"
                )
            )
        self.recording = recording
        self.splitter.keep_bytes = recording
        if recording and self.rewriter is None and capture_enabled():
            params = dict(self._parameters)
            self.rewriter = PgRewriter(
                shared_planner(),
                database=params.get("database") or params.get("user", ""),
                server_major=server_major(bytes(self.auth.session_backend)),
                # Recording that starts later finds a session that may have changed role.
                user=_startup_user(params) if at_start else None,
                counters=self.proxy.state.counters,
            )
            if self.splitter.status == "I" and self.upstream is not None:
                self.upstream.write(self.rewriter.preload())
        if self.rewriter is not None:
            self.rewriter.enabled = recording
        return None

    def _hand_over(self, startup: bytes | None = None) -> PgReplayProtocol | None:
        """Replay answers this connection from now on: at an idle point of an established
        session (the client keeps its connection, its session and prepared statements), or
        with the ``startup`` packet still to answer. The upstream session ends cleanly."""
        transport = self.transport
        self._finish_recording("switched to replay")
        self.state = CLOSED
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            upstream.write(_TERMINATE)
            upstream.close()
        if transport is None or transport.is_closing():
            return None
        statements = self.prepared.statements if startup is None else {}
        session = PgReplayProtocol.adopt(
            self.proxy, transport, self.conn_id, statements, startup=startup is not None
        )
        self.proxy.handed_over(self, session)
        if self._reading_paused:
            transport.resume_reading()
        log.info(
            "connection %s: answered from recordings from now on (%d prepared statements)",
            self.conn_id,
            len(statements),
        )
        if startup:
            session.data_received(startup + self._early_bytes.take())
        return session

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state == CLOSED:
            return
        if self.state == READY and self.splitter is not None and self.splitter.awaiting_backend:
            self.proxy.count("upstream_lost_mid_query")
            log.warning(
                "connection %s: upstream closed mid-query (%s)",
                self.conn_id,
                exc or "end of stream",
            )
        # Closing is what the client would see without the sidecar; an error message of our
        # own could land in the middle of a half-forwarded message.
        self._finish_recording("upstream closed")
        if self.transport is not None:
            self.transport.close()

    # -- errors and endings ----------------------------------------------

    def _finish_recording(self, reason: str) -> None:
        if not self.recording:
            return
        self.recording = False
        now = time.time_ns()
        if self.splitter is not None:
            partial = self.splitter.close(now)
            if partial is not None:
                self.proxy.submit(PgCycleCaptured(conn_id=self.conn_id, cycle=partial))
        self.proxy.submit(PgSessionEnded(conn_id=self.conn_id, end_ns=now, reason=reason))

    def _rewriter_failed(self) -> None:
        # A bug in the capture layer: its view of the session is lost, so it could neither
        # strip what it added nor tell the client's rows from its own. Closing is honest.
        log.exception("connection %s: mutation capture failed; closing the session", self.conn_id)
        self.proxy.count("capture_errors")
        self._finish_recording("capture failed")
        self._close_with(fatal("XX000", "flux-proxy: internal error in mutation capture"))

    def _send_cancel(self) -> None:
        if self.auth.backend_key is not None:
            packet = cancel_packet(self.auth.backend_key)
            self.proxy.spawn(cancel_request(self.proxy.upstream, packet))

    def _protocol_violation(self, reason: str) -> None:
        self.proxy.count("protocol_errors")
        log.warning(
            "connection %s from %s: client protocol violation: %s", self.conn_id, self.peer, reason
        )
        self._close_with(fatal("08P01", f"protocol violation: {reason}"))
