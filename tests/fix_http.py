"""Pytest plugin: a real HTTPS origin with its own test CA, for the HTTP proxy tests.

``test_pki`` (session)
    A CA made with :mod:`tests.fix_tls` and a server certificate it signed for
    ``127.0.0.1``/``localhost``; ``ca_path`` is what ``--upstream-ca`` gets.
``origin`` (session)
    Hypercorn serving :func:`origin_app` on 127.0.0.1 over HTTPS (HTTP/2 and
    HTTP/1.1, websockets) and plain HTTP, on ports bound before it starts.
``untrusted_origin`` (session)
    The same app behind a certificate from a CA nobody is told about: what a
    TLS failure toward an upstream looks like.

Routes: ``/hello`` (JSON: method, path, query, HTTP version, the traceparent
received), ``/echo`` (the request body back), ``/bytes?n=N`` (N bytes in 64 KiB
chunks, no length declared), ``/gated`` (one chunk, then waits until the test
sets ``origin.gate``, then a last chunk: a proxy that buffered would deadlock),
``/next`` (a different answer each time: the number of requests seen, in the JSON
body and in a ``set-cookie``), ``/status/NNN``, and the websocket ``/ws`` (echoes
each message).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from recorder.model import Event
from recorder.store import StoreError, open_store
from tests.fix_sidecar import SidecarProcess
from tests.fix_tls import make_ca, make_leaf

HOST = "127.0.0.1"
CHUNK = 64 << 10

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Pki:
    ca_path: Path
    cert_path: Path
    key_path: Path


def make_pki(directory: Path, label: str) -> Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(f"{label} CA")
    pki = Pki(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server.key",
    )
    ca.write(pki.ca_path)
    make_leaf(ca, ["localhost"], [HOST]).write(pki.cert_path, pki.key_path)
    return pki


@dataclass
class Origin:
    pki: Pki
    https_port: int = 0
    http_port: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)  # one entry per HTTP request
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def url(self, path: str = "/", *, tls: bool = True) -> str:
        return (
            f"https://{HOST}:{self.https_port}{path}"
            if tls
            else f"http://{HOST}:{self.http_port}{path}"
        )

    def start(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        listeners = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, 0))
            sock.listen(128)  # connections wait in the backlog until hypercorn accepts them
            listeners.append(sock)
        self.https_port = listeners[0].getsockname()[1]
        self.http_port = listeners[1].getsockname()[1]
        config = Config()
        # fd:// hands hypercorn the sockets already bound, so the ports are known and kept.
        config.bind = [f"fd://{listeners[0].detach()}"]
        config.insecure_bind = [f"fd://{listeners[1].detach()}"]
        config.certfile = str(self.pki.cert_path)
        config.keyfile = str(self.pki.key_path)
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            started.set()
            app: Any = self.app
            await serve(app, config, shutdown_trigger=self._stop.wait)

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        started.wait(10)

    def stop(self) -> None:
        """Stops serving and releases both ports; a second call does nothing."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await self._websocket(receive, send)
        else:
            await self._http(scope, receive, send)

    async def _websocket(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                reply = {k: message[k] for k in ("text", "bytes") if message.get(k) is not None}
                await send({"type": "websocket.send", **reply})
            else:
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        self.seen.append({"path": path, "headers": headers, "http_version": scope["http_version"]})

        async def start(
            status: int = 200, length: int | None = None, kind: str = "text/plain"
        ) -> None:
            fields = [(b"content-type", kind.encode())]
            if length is not None:
                fields.append((b"content-length", str(length).encode()))
            await send({"type": "http.response.start", "status": status, "headers": fields})

        if path == "/hello":
            data = json.dumps(
                {
                    "method": scope["method"],
                    "path": path,
                    "query": scope["query_string"].decode(),
                    "http_version": scope["http_version"],
                    "traceparent": headers.get("traceparent"),
                }
            ).encode()
            await start(200, len(data), "application/json")
            await send({"type": "http.response.body", "body": data})
        elif path == "/echo":
            await start(200, len(body), headers.get("content-type", "application/octet-stream"))
            await send({"type": "http.response.body", "body": body})
        elif path == "/bytes":
            remaining = int(query.get("n", ["0"])[0])
            await start(200)
            block = bytes(range(256)) * (CHUNK // 256)
            while remaining > 0:
                piece = block[: min(CHUNK, remaining)]
                remaining -= len(piece)
                await send(
                    {"type": "http.response.body", "body": piece, "more_body": remaining > 0}
                )
        elif path == "/gated":
            await start(200)
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            released = await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 20)
            last = b"released\n" if released else b"timed out\n"
            await send({"type": "http.response.body", "body": last})
        elif path == "/next":
            data = json.dumps({"n": len(self.seen)}).encode()
            fields = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"set-cookie", f"seen={len(self.seen)}; Path=/".encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": fields})
            await send({"type": "http.response.body", "body": data})
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            await start(status, 0)
            await send({"type": "http.response.body", "body": b""})
        else:
            await start(404, 9)
            await send({"type": "http.response.body", "body": b"not found"})


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "flux test origin")


def _serve(pki: Pki) -> Iterator[Origin]:
    origin = Origin(pki)
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()


@pytest.fixture(scope="session")
def origin(test_pki: Pki) -> Iterator[Origin]:
    yield from _serve(test_pki)


@pytest.fixture(scope="session")
def untrusted_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    yield from _serve(make_pki(tmp_path_factory.mktemp("pki-untrusted"), "unknown"))


# -- the sidecar's side: its CA, what it recorded ----------------------------------------


def export_ca(sidecar: SidecarProcess) -> Path:
    """``flux ca export`` into a file next to the sidecar's data directory."""
    path = sidecar.data_dir.parent / f"{sidecar.data_dir.name}-ca.pem"
    path.write_text(sidecar.flux("ca", "export").stdout)
    return path


def traceparent() -> tuple[str, str, str]:
    """A fresh (trace id, span id, header value)."""
    trace, span = secrets.token_hex(16), secrets.token_hex(8)
    return trace, span, f"00-{trace}-{span}-01"


def recorded(
    sidecar: SidecarProcess,
    trace_id: str,
    count: int,
    predicate: Callable[[list[dict[str, Any]]], bool] | None = None,
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    """The events of one trace (``flux trace -o json``) once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = sidecar.flux("trace", trace_id, "--output", "json", check=False)
        if result.returncode == 0:
            events = json.loads(result.stdout)["events"]
            if len(events) >= count and (predicate is None or predicate(events)):
                return events
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id}: wanted {count} events, have {events}")


def stored(
    sidecar: SidecarProcess,
    predicate: Callable[[Event], bool],
    timeout: float = 20.0,
) -> Event:
    """The first stored event (attributed or not) matching ``predicate``, read from the store
    itself: unattributed events have no trace to ask ``flux trace`` for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            store = open_store(sidecar.data_dir, readonly=True)
        except StoreError:
            store = None
        if store is not None:
            try:
                for item in store.events():
                    if predicate(item.event):
                        return item.event
            finally:
                store.close()
        time.sleep(0.2)
    raise AssertionError("no stored event matched")


def no_proxy_env(**extra: str) -> dict[str, str]:
    """The environment for a client subprocess: our proxy settings, nobody else's."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    env.update(extra)
    return env
