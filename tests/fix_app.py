"""A small web app on loopback for the tests that record through the sidecar's inbound
proxy, and the steps such a recording takes.

A test module writes only its routes, as an :class:`AppHandler` subclass: it queries
PostgreSQL at ``self.server.dsn`` and calls out with ``self.server.session()``, and both go
through the sidecar once :func:`start_recording` has put the app behind it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.fix_http import Origin, Pki, export_ca
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess, start_sidecar

Server = TypeVar("Server", bound=ThreadingHTTPServer)


class AppServer(ThreadingHTTPServer):
    """The app's view of its dependencies: ``dsn`` (PostgreSQL), ``proxy`` (the forward
    proxy its calls go through), ``ca`` (the CA it trusts), ``origin`` (the HTTPS API)."""

    daemon_threads = True
    dsn = ""
    proxy = ""
    ca = ""
    origin = ""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def session(self) -> requests.Session:
        """A client for the app's outbound calls, through ``proxy`` and trusting ``ca``."""
        session = requests.Session()
        session.trust_env = False  # the machine's own proxy and CA settings are not under test
        session.proxies = {"http": self.proxy, "https": self.proxy}
        session.verify = self.ca
        return session


class AppHandler(BaseHTTPRequestHandler):
    server: AppServer

    @property
    def traceparent(self) -> str:
        """The traceparent the app got ("" when none), which an instrumented app passes on."""
        return self.headers.get("traceparent", "")

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(server: Server) -> Iterator[Server]:
    """``server`` answering on a thread of its own until the block ends."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -- recording through the sidecar -----------------------------------------------------


def start_recording(
    app: AppServer,
    data_dir: Path,
    pg: PgServer | None,
    pki: Pki,
    origin: Origin,
    *args: str,
    **kwargs: Any,
) -> SidecarProcess:
    """A recording sidecar in front of ``pg`` (none: HTTP only) that trusts the origin's
    CA, with ``app`` behind its inbound proxy, reaching PostgreSQL and the origin through it."""
    expect = ("pg", "http", "inbound") if pg is not None else ("http", "inbound")
    sidecar = start_sidecar(
        data_dir, pg, "--upstream-ca", str(pki.ca_path), *args,
        expect=expect, app_url=app.url, **kwargs,
    )  # fmt: skip
    try:
        app.dsn = sidecar.dsn() if pg is not None else ""
        app.proxy, app.ca, app.origin = sidecar.url("http"), str(export_ca(sidecar)), origin.url("")
    except BaseException:
        sidecar.stop()
        raise
    return sidecar


def send(sidecar: SidecarProcess, method: str, path: str, **kwargs: Any) -> requests.Response:
    """A request to the app through the inbound proxy, which answers with the id of the
    trace it recorded the request under (``x-flux-trace-id``)."""
    response = requests.request(method, sidecar.url("inbound") + path, timeout=60, **kwargs)
    assert "x-flux-trace-id" in response.headers, response.text
    return response


# -- loopback ports -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def accepting(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
