"""A TCP listener standing where an upstream was, counting every connection it is offered.

Replay must never reach an upstream: a test stops the real one, puts a
:class:`Sentinel` on the same address, replays, and asserts ``connections == 0``.
"""

from __future__ import annotations

import socket
import threading
from typing import Protocol


class Sentinel:
    """Accepts and closes at once; ``port`` 0 picks a free one."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        # The upstream it replaces may leave connections in TIME_WAIT on this port.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class _Server(Protocol):
    host: str
    port: int

    def stop(self, mode: str = ...) -> None: ...


def stand_in_for(server: _Server) -> Sentinel:
    """Stops ``server`` and binds a Sentinel where it listened. Close the sentinel before
    the server starts again (the ``pg_db`` fixture restarts a stopped shared server)."""
    server.stop()
    return Sentinel(server.port, server.host)
