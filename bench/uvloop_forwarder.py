"""The floor for a Python proxy: a pure uvloop TCP forwarder, no protocol awareness.

    python bench/uvloop_forwarder.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT

pgbench_compare.py runs it beside the sidecar so that the sidecar's overhead can
be told apart from what any asyncio.Protocol forwarder costs on this machine.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop


class Side(asyncio.Protocol):
    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def main(port: int, host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def accept() -> Side:
        client = Side()

        async def connect() -> None:
            _, upstream = await loop.create_connection(lambda: Side(client), host, upstream_port)
            client.peer = upstream
            for data in client.early:
                upstream.transport.write(data)  # type: ignore[union-attr]

        task = loop.create_task(connect())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", port)
    print(f"flux: listening pg 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
