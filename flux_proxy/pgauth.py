"""Session establishment for the forwarding proxy: everything before ReadyForQuery.

The startup packet (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage),
TLS with the client, the connection to the upstream, and authentication,
relayed: the sidecar never authenticates anyone itself. It forwards the
server's challenges and the client's answers, and only follows the exchange
far enough to know where it ends (the ReadyForQuery after AuthenticationOk).
Nothing of it is kept before AuthenticationOk; what follows (ParameterStatus,
BackendKeyData) is kept for the session event and for cancelling queries.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from typing import TYPE_CHECKING, cast

from protocols import pgwire

from .upstream import UpstreamProtocol, cancel_request, connect_upstream

if TYPE_CHECKING:
    from .pgserver import PgProxy

log = logging.getLogger("flux.pg")

STARTUP, CONNECTING, AUTH, READY, CLOSED = range(5)
_AUTH_OK = 0
_AUTH_SASL = 10
_R = ord("R")
_K = ord("K")
_Z = ord("Z")


def without_channel_binding(message: bytes) -> bytes:
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


def cancel_packet(backend_key: bytes) -> bytes:
    """The CancelRequest for a session, from its BackendKeyData's body."""
    body = struct.pack("!I", 80877102) + backend_key
    return struct.pack("!I", len(body) + 4) + body


class AuthRelay:
    """The backend half of authentication: fed the server's bytes, it says what to forward
    to the client (whole messages only) and when the session is established."""

    __slots__ = ("_buf", "authenticated", "backend_key", "session_backend")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.authenticated = False
        self.session_backend = bytearray()  # after AuthenticationOk, up to ReadyForQuery
        self.backend_key: bytes | None = None

    def feed(self, data: bytes) -> tuple[bytes, str | None, bytes]:
        """Returns the bytes to forward now, the ReadyForQuery status once authentication
        has ended (None before), and the bytes that followed that ReadyForQuery.

        Raises :class:`pgwire.RemoteProtocolError` on a malformed message."""
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 5:
            type_byte = buf[pos]
            length = struct.unpack_from("!I", buf, pos + 1)[0]
            if length < 4 or length > pgwire.STARTUP_MAX_LENGTH * 100:
                raise pgwire.RemoteProtocolError(f"invalid message length {length} during startup")
            end = pos + 1 + length
            if end > len(buf):
                break
            message = bytes(buf[pos:end])
            pos = end
            if type_byte == _R:
                code = struct.unpack_from("!I", message, 5)[0]
                self.authenticated = code == _AUTH_OK
                if code == _AUTH_SASL:
                    message = without_channel_binding(message)
            elif self.authenticated:
                self.session_backend += message
                if type_byte == _K:
                    self.backend_key = message[5:]
                elif type_byte == _Z:
                    out.append(message)
                    rest = bytes(buf[pos:])
                    buf.clear()
                    return b"".join(out), chr(message[-1]), rest
            out.append(message)
        del buf[:pos]
        return b"".join(out), None, b""


class PgSessionSetup(asyncio.Protocol):
    """A client connection up to its established session, which subclasses carry on:
    they answer ``_ready`` (authentication ended), ``upstream_data`` and ``_hand_over``
    (the sidecar switched to replay before the upstream was reached)."""

    def __init__(self, proxy: PgProxy) -> None:
        self.proxy = proxy
        self.conn_id = proxy.next_conn_id()
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.state = STARTUP
        self.peer = "?"
        self._startup = bytearray()
        self._startup_packet = b""
        self._parameters: tuple[tuple[str, str], ...] = ()
        self._early: list[bytes] = []  # client bytes that arrived before the upstream was ready
        self.auth = AuthRelay()
        self._started_ns = 0
        self._writing_paused = False
        self._reading_paused = False  # the upstream cannot take more yet

    def upstream_data(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    def upstream_pause_writing(self) -> None:
        if self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _ready(self, status: str) -> None:
        raise NotImplementedError

    def _relay_cancel(self, packet: bytes) -> None:
        """A CancelRequest this connection carried, for the session its key names."""
        assert self.proxy.upstream is not None
        self.proxy.spawn(cancel_request(self.proxy.upstream, packet))

    def _hand_over(self, startup: bytes | None = None) -> object:
        raise NotImplementedError

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
                if self.proxy.mode != "replay" and self.proxy.upstream is not None:
                    self._relay_cancel(packet)
                self.transport.close()
            case pgwire.StartupMessage(protocol_version=version, parameters=parameters):
                if version >> 16 != 3:
                    self._reject(
                        f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}"
                    )
                    return
                if self.proxy.mode == "replay":  # switched since the accept: nothing upstream
                    self._hand_over(packet + rest)
                    return
                self._startup_packet = packet
                self._parameters = parameters
                self._started_ns = time.time_ns()
                self.state = CONNECTING
                if rest:
                    self.data_received(rest)  # the subclass sorts early bytes (CONNECTING)
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
        if self.proxy.upstream is None:
            self.proxy.count("upstream_connect_errors")
            self._close_with(
                fatal(
                    "08001",
                    f"flux-proxy has no upstream database (--upstream-db, FLUX_UPSTREAM_DB): "
                    f"only replay mode answers without one, and the mode is {self.proxy.mode}",
                )
            )
            return
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
        if self.state == CLOSED or self.proxy.mode == "replay":
            upstream.close()
            if self.state != CLOSED:  # switched while connecting: not a byte upstream
                self._hand_over(self._startup_packet + b"".join(self._early))
            return
        self.upstream = upstream
        self.state = AUTH
        upstream.write(self._startup_packet + b"".join(self._early))
        self._early.clear()
        if self._writing_paused:
            upstream.pause_reading()

    def _auth_data(self, data: bytes) -> None:
        try:
            forward, status, rest = self.auth.feed(data)
        except pgwire.RemoteProtocolError as exc:
            self._upstream_violation(str(exc))
            return
        self._forward(forward)
        if status is not None:
            self._ready(status)
            if rest and self.state == READY:
                self.upstream_data(rest)

    def _forward(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _reject(self, reason: str) -> None:
        self.proxy.count("rejected_connections")
        log.warning("rejected connection %s from %s: %s", self.conn_id, self.peer, reason)
        self._close_with(fatal("08P01", f"invalid startup from client: {reason}"))

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
