"""A small HTTP/1.1 server on asyncio streams, with h11 doing the parsing.

The admin API and the admission webhook each answer a handful of small JSON or
text requests, so they share this instead of a web framework: one coroutine
per connection turns h11 events into a :class:`Request`, awaits the handler,
and writes its :class:`Response`. Keep-alive is honoured (the kube-apiserver
reuses connections to a webhook); bodies and heads are bounded so a client
cannot make the sidecar buffer without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

log = logging.getLogger("flux.http")

MAX_HEAD = 16 << 10
MAX_BODY = 4 << 20  # an AdmissionReview of a large pod stays well under this
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls, status: int, value: Any, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        return cls(status=status, body=body, content_type="application/json", headers=headers or [])

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status=status, body=text.encode())


Handler = Callable[[Request], Awaitable[Response]]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class HttpServer:
    """Serves ``handler`` on one listening socket until :meth:`close`."""

    def __init__(self, handler: Handler, *, name: str, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.name = name
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._accepted, host, port, ssl=self.ssl_context, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError, h11.ProtocolError):
            pass  # the peer went away or spoke garbage: nothing to answer
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            request = await self._read_request(conn, reader, writer)
            if request is None:
                return
            try:
                response = await self.handler(request)
            except Exception:
                log.exception(
                    "%s: handler failed for %s %s", self.name, request.method, request.path
                )
                response = Response.text(500, "internal error\n")
            await self._write(conn, writer, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 still lets a server answer a request it could not parse.
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    with contextlib.suppress(h11.LocalProtocolError):
                        status = exc.error_status_hint
                        await self._write(conn, writer, Response.text(status, "bad request\n"))
                return None
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    await self._write(conn, writer, Response.text(413, "body too large\n"))
                    return None
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(
                    method=head.method.decode(),
                    path=path,
                    query=query,
                    headers=headers,
                    body=bytes(body),
                )
            else:  # ConnectionClosed or PAUSED: no further request on this connection
                return None

    async def _write(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            *response.headers,
        ]
        events = (
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            ),
            h11.Data(data=response.body),
            h11.EndOfMessage(),
        )
        writer.write(b"".join(conn.send(event) or b"" for event in events))
        await writer.drain()
