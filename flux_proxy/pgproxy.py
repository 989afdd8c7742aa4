"""The PostgreSQL listener: a transparent forwarder that taps protocol cycles.

Bytes are forwarded exactly as they arrive, in both directions, with
``asyncio.Protocol`` on both sides (no stream tasks on the data path) and
backpressure each way (``pause_writing`` on one side pauses reading on the
other). The only per-message work on the data path is header scanning by
:class:`protocols.pgwire.CycleSplitter`; decoding happens in the recorder's
writer thread. Authentication traffic is forwarded and never recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
import time
from typing import TYPE_CHECKING, cast

from protocols import pgwire
from recorder.mutation.capture import StatementCapture
from recorder.pgcapture import PgCycleCaptured, PgSessionEnded, PgSessionStarted

from .pgrewrite import PgRewriter, shared_planner
from .pgrows import server_major
from .upstream import UpstreamProtocol, cancel_request, connect_upstream, set_nodelay

if TYPE_CHECKING:
    from .pgserver import PgProxy

log = logging.getLogger("flux.pg")

_STARTUP, _CONNECTING, _AUTH, _READY, _CLOSED = range(5)
_TERMINATE = b"X\x00\x00\x00\x04"
_AUTH_OK = 0
_AUTH_SASL = 10
# Mutation capture rewrites data-changing statements in record mode; FLUX_CAPTURE_MUTATIONS=off
# records cycles only (an escape hatch: capture is on by default).
CAPTURE_MUTATIONS = os.environ.get("FLUX_CAPTURE_MUTATIONS", "on").lower() not in ("0", "off", "no")
REPLAY_UNAVAILABLE = (
    "flux-proxy is in replay mode; PostgreSQL replay is not available in this version, "
    "and nothing is forwarded to the upstream"
)


def _without_channel_binding(message: bytes) -> bytes:
    """AuthenticationSASL minus SCRAM-SHA-256-PLUS: channel binding ties SCRAM to one TLS
    session, and the client's session (if any) ends at the sidecar, not at the server."""
    body = message[9:]  # type, length, the SASL code
    mechanisms = [m for m in body.split(b"\0") if m and not m.endswith(b"-PLUS")]
    payload = struct.pack("!I", _AUTH_SASL) + b"".join(m + b"\0" for m in mechanisms) + b"\0"
    return b"R" + struct.pack("!I", len(payload) + 4) + payload


def fatal(code: str, message: str, detail: str | None = None) -> bytes:
    """An ErrorResponse of our own making (the sidecar speaking, not the upstream)."""
    extra = {"detail": detail} if detail else {}
    return pgwire.encode(pgwire.error_response("FATAL", code, message, **extra))


class PgClientProtocol(asyncio.Protocol):
    """One client connection and, once it has sent its StartupMessage, its upstream."""

    def __init__(self, proxy: PgProxy) -> None:
        self.proxy = proxy
        self.conn_id = proxy.next_conn_id()
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.state = _STARTUP
        self.peer = "?"
        self._startup = bytearray()
        self._startup_packet = b""
        self._parameters: tuple[tuple[str, str], ...] = ()
        self._early: list[bytes] = []  # client bytes that arrived before the upstream was ready
        self._auth = bytearray()  # backend bytes during authentication, parsed for its end
        self._authenticated = False
        self._session_backend = bytearray()  # after AuthenticationOk, kept for the session event
        self._backend_key: bytes | None = None
        self._started_ns = 0
        self.splitter: pgwire.CycleSplitter | None = None
        # Record mode's mutation capture: rewrites data-changing statements upstream and
        # strips what it added from the answers (pgrewrite). Kept once made, so statements
        # it prepared rewritten are still stripped after recording stops.
        self.rewriter: PgRewriter | None = None
        self.recording = False
        self._mode_epoch = -1
        self._writing_paused = False

    # -- client side -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        set_nodelay(transport)
        self.proxy.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _READY:
            assert self.splitter is not None and self.upstream is not None
            try:
                self.splitter.frontend(data, time.time_ns() if self.recording else 0)
                if self.rewriter is not None:
                    data = self.rewriter.frontend(data)
            except pgwire.RemoteProtocolError as exc:
                self._protocol_violation(str(exc))
                return
            except Exception:
                self._rewriter_failed()
                return
            self.upstream.write(data)
        elif self.state == _AUTH:
            assert self.upstream is not None
            self.upstream.write(data)
        elif self.state == _STARTUP:
            self._startup_data(data)
        elif self.state == _CONNECTING:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too; PostgreSQL has no half-closed sessions

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = _CLOSED
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            splitter = self.splitter
            if was == _READY and splitter is not None and splitter.awaiting_backend:
                # The client vanished mid-query: cancel it so the backend is released now,
                # not when the query would have finished.
                self._send_cancel()
            # Only between messages of an established session: mid-authentication the
            # server would take a Terminate for a broken SASL exchange and log an error.
            if was == _READY and splitter is not None and splitter.at_frontend_boundary:
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

    # -- startup ---------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        self._startup += data
        if len(self._startup) < 4:
            return
        if self._startup[0] == 0x16:
            self._reject("direct TLS negotiation is not supported; use sslmode with SSLRequest")
            return
        length = struct.unpack_from("!I", self._startup)[0]
        if length < 8 or length > pgwire.STARTUP_MAX_LENGTH:
            self._reject(f"invalid startup packet length {length}")
            return
        if len(self._startup) < length:
            return
        packet = bytes(self._startup[:length])
        rest = bytes(self._startup[length:])
        self._startup.clear()
        try:
            message = pgwire.decode_startup(packet)
        except pgwire.RemoteProtocolError as exc:
            self._reject(str(exc))
            return
        assert self.transport is not None
        match message:
            case pgwire.SSLRequest():
                if rest:  # bytes sent before the TLS handshake could be injected: refuse
                    self._reject("unexpected data after SSLRequest")
                elif self.proxy.tls_context is not None:
                    self.transport.write(b"S")
                    self.proxy.spawn(self._start_tls())
                else:
                    self.transport.write(b"N")
            case pgwire.GSSENCRequest():
                self.transport.write(b"N")
                if rest:
                    self._startup_data(rest)
            case pgwire.CancelRequest():
                if self.proxy.mode != "replay":
                    self.proxy.spawn(cancel_request(self.proxy.upstream, packet))
                self.transport.close()
            case pgwire.StartupMessage(protocol_version=version, parameters=parameters):
                if version >> 16 != 3:
                    self._reject(
                        f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}"
                    )
                    return
                if self.proxy.mode == "replay":
                    # Fail-closed: in replay mode nothing may reach the upstream.
                    self.proxy.count("replay_refused")
                    self._close_with(fatal("08004", REPLAY_UNAVAILABLE))
                    return
                self._startup_packet = packet
                self._parameters = parameters
                self._started_ns = time.time_ns()
                self.state = _CONNECTING
                if rest:
                    self._early.append(rest)
                self.proxy.spawn(self._connect())

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.proxy.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self, self.proxy.tls_context, server_side=True
            )
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s failed: %s", self.peer, exc)
            self.transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    async def _connect(self) -> None:
        try:
            upstream = await connect_upstream(self.proxy.upstream, self)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self.proxy.count("upstream_connect_errors")
            log.warning(
                "connection %s: upstream %s unreachable: %s",
                self.conn_id,
                self.proxy.upstream.address,
                exc,
            )
            self._close_with(
                fatal(
                    "08001",
                    f"flux-proxy could not connect to the upstream "
                    f"server {self.proxy.upstream.address}",
                    str(exc),
                )
            )
            return
        if self.state == _CLOSED:
            upstream.close()
            return
        self.upstream = upstream
        self.state = _AUTH
        upstream.write(self._startup_packet + b"".join(self._early))
        self._early.clear()
        if self._writing_paused:
            upstream.pause_reading()

    # -- upstream side ---------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return
        if self.state == _AUTH:
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
        transport.write(data)
        splitter = self.splitter
        assert splitter is not None
        try:
            cycles = splitter.backend(data, time.time_ns() if self.recording else 0)
        except pgwire.RemoteProtocolError as exc:
            self._upstream_violation(str(exc))
            return
        if cycles:
            submit = self.proxy.submit
            conn_id = self.conn_id
            for n, cycle in enumerate(cycles):
                captures = tuple(captured[n]) if n < len(captured) else ()
                submit(PgCycleCaptured(conn_id=conn_id, cycle=cycle, captures=captures))
        if self._mode_epoch != self.proxy.mode_epoch and splitter.idle:
            self._apply_mode()

    def _auth_data(self, data: bytes) -> None:
        """Follows authentication to its end, forwarding each message once it is whole;
        nothing of it is kept before AuthenticationOk."""
        self._auth += data
        buf = self._auth
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 5:
            type_byte = buf[pos]
            length = struct.unpack_from("!I", buf, pos + 1)[0]
            if length < 4 or length > pgwire.STARTUP_MAX_LENGTH * 100:
                self._upstream_violation(f"invalid message length {length} during startup")
                return
            end = pos + 1 + length
            if end > len(buf):
                break
            message = bytes(buf[pos:end])
            pos = end
            if type_byte == ord("R"):
                code = struct.unpack_from("!I", message, 5)[0]
                self._authenticated = code == _AUTH_OK
                if code == _AUTH_SASL:
                    message = _without_channel_binding(message)
            elif self._authenticated:
                self._session_backend += message
                if type_byte == ord("K"):
                    self._backend_key = message[5:]
                elif type_byte == ord("Z"):
                    out.append(message)
                    self._forward(b"".join(out))
                    rest = bytes(buf[pos:])
                    buf.clear()
                    self._ready(chr(message[-1]))
                    if rest and self.state == _READY:
                        self.upstream_data(rest)
                    return
            out.append(message)
        self._forward(b"".join(out))
        del buf[:pos]

    def _forward(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _ready(self, status: str) -> None:
        self.state = _READY
        self.splitter = pgwire.CycleSplitter(
            keep_bytes=False,
            max_cycle_bytes=self.proxy.max_cycle_bytes,
            max_message_length=self.proxy.max_message_length,
        )
        self.splitter.status = status
        self._apply_mode()

    def _apply_mode(self) -> None:
        """Called at idle points only, so recording starts and stops on cycle boundaries."""
        assert self.splitter is not None
        self._mode_epoch = self.proxy.mode_epoch
        if self.proxy.mode == "replay":
            self._finish_recording("switched to replay")
            self._close_with(
                fatal(
                    "57P01",
                    "terminating connection: flux-proxy switched to replay mode",
                    REPLAY_UNAVAILABLE,
                )
            )
            return
        recording = self.proxy.mode == "record"
        if recording and not self.recording:
            self.proxy.submit(
                PgSessionStarted(
                    conn_id=self.conn_id,
                    parameters=self._parameters,
                    backend=bytes(self._session_backend),
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
        if recording and self.rewriter is None and CAPTURE_MUTATIONS:
            params = dict(self._parameters)
            self.rewriter = PgRewriter(
                shared_planner(),
                database=params.get("database") or params.get("user", ""),
                server_major=server_major(bytes(self._session_backend)),
            )
        if self.rewriter is not None:
            self.rewriter.enabled = recording

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state == _CLOSED:
            return
        if self.state == _READY and self.splitter is not None and self.splitter.awaiting_backend:
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

    def upstream_pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

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
        if self._backend_key is None:
            return
        pid = self._backend_key[:4]
        packet_body = struct.pack("!I", 80877102) + pid + self._backend_key[4:]
        packet = struct.pack("!I", len(packet_body) + 4) + packet_body
        self.proxy.spawn(cancel_request(self.proxy.upstream, packet))

    def _reject(self, reason: str) -> None:
        self.proxy.count("rejected_connections")
        log.warning("rejected connection %s from %s: %s", self.conn_id, self.peer, reason)
        self._close_with(fatal("08P01", f"invalid startup from client: {reason}"))

    def _protocol_violation(self, reason: str) -> None:
        self.proxy.count("protocol_errors")
        log.warning(
            "connection %s from %s: client protocol violation: %s", self.conn_id, self.peer, reason
        )
        self._close_with(fatal("08P01", f"protocol violation: {reason}"))

    def _upstream_violation(self, reason: str) -> None:
        self.proxy.count("protocol_errors")
        log.warning("connection %s: upstream protocol violation: %s", self.conn_id, reason)
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def _close_with(self, message: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(message)
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()
