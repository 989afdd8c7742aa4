"""Connections to the upstream PostgreSQL server, with TLS when its URL asks for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("flux.pg")

_SSL_REQUEST = struct.pack("!II", 8, 80877103)
_TLS_MODES = ("prefer", "require", "verify-ca", "verify-full")


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small protocol messages must not wait for Nagle's algorithm."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UpstreamClient(Protocol):
    """What an upstream connection reports to (the client side of the proxy)."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    sslmode: str = "disable"
    sslrootcert: str | None = None
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> UpstreamTarget:
        """``postgresql://[user@]host[:port][/db][?sslmode=...&sslrootcert=...]``.

        Only where and how to connect is taken from the URL: user and database
        come from each client's own StartupMessage.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"upstream database URL must start with postgresql://, got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sslmode = query.get("sslmode", "disable")
        if sslmode not in ("disable", "allow", *_TLS_MODES):
            raise ValueError(f"unknown sslmode {sslmode!r} in upstream URL")
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ValueError(f"bad port in upstream URL {url!r}") from exc
        return cls(
            host=unquote(parts.hostname or "127.0.0.1"),
            port=port,
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert"),
            connect_timeout=float(query.get("connect_timeout", 10)),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.sslmode not in _TLS_MODES:
            return None
        if self.sslmode in ("verify-ca", "verify-full"):
            context = ssl.create_default_context(cafile=self.sslrootcert)
            context.check_hostname = self.sslmode == "verify-full"
        else:
            # libpq's require/prefer: encrypt, but do not verify (unless a root cert is given,
            # in which case libpq verifies the chain, like verify-ca).
            context = ssl.create_default_context(cafile=self.sslrootcert)
            context.check_hostname = False
            if self.sslrootcert is None:
                context.verify_mode = ssl.CERT_NONE
        return context


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, client: UpstreamClient | None) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._answer: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(data)
        elif self.client is not None:
            self.client.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("upstream closed during TLS negotiation"))
        if self.client is not None:
            self.client.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_resume_writing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def negotiate_tls(self, target: UpstreamTarget) -> None:
        """SSLRequest, then the handshake; the client sees none of it."""
        context = target.ssl_context()
        assert context is not None and self.transport is not None
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self.transport.write(_SSL_REQUEST)
        answer = await self._answer
        self._answer = None
        if answer[:1] == b"S" and len(answer) == 1:
            transport = await loop.start_tls(
                self.transport, self, context, server_hostname=target.host
            )
            self.transport = cast(asyncio.Transport, transport)
        elif answer[:1] == b"N" and target.sslmode == "prefer":
            return
        elif answer[:1] == b"N":
            raise ConnectionError(f"upstream refused TLS, but sslmode={target.sslmode}")
        else:
            raise ConnectionError("upstream sent an invalid answer to SSLRequest")


async def connect_upstream(
    target: UpstreamTarget, client: UpstreamClient | None
) -> UpstreamProtocol:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(target.connect_timeout):
        _, protocol = await loop.create_connection(
            lambda: UpstreamProtocol(client), target.host, target.port
        )
        if target.sslmode in _TLS_MODES:
            try:
                await protocol.negotiate_tls(target)
            except BaseException:
                protocol.close()
                raise
    return protocol


async def cancel_request(target: UpstreamTarget, packet: bytes) -> None:
    """Forwards a CancelRequest on a connection of its own, as PostgreSQL expects."""
    try:
        upstream = await connect_upstream(target, None)
    except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
        log.warning("could not deliver CancelRequest to %s: %s", target.address, exc)
        return
    upstream.write(packet)
    # The server closes the connection once it has read the request.
    await asyncio.sleep(0)
    assert upstream.transport is not None
    if upstream.transport.can_write_eof():
        upstream.transport.write_eof()
    await asyncio.sleep(0.05)
    upstream.close()
