"""The UDP listener in this process: mode switches, bounds, expiry, mapping errors.

Real sockets and a real store; the recorder process is replaced by a list, so the
events a listener emits can be checked the moment it emits them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from flux_proxy.config import Settings
from flux_proxy.sidecar import Sidecar, StartupError
from flux_proxy.state import SidecarState
from flux_proxy.udp import UdpMapping, UdpService
from flux_proxy.udplistener import UdpListener
from recorder.model import Event
from recorder.store import open_store
from tests.fix_udp import DnsUpstream, UdpPeer


class Submitted(list[Any]):
    """Stands in for the recorder link: keeps what it is handed."""

    def __call__(self, item: Any) -> bool:
        self.append(item)
        return True

    @property
    def events(self) -> list[Event]:
        return [item for item in self if isinstance(item, Event)]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def query(address: tuple[str, int], name: str, rdtype: str = "A") -> dns.message.Message:
    return await dns.asyncquery.udp(
        dns.message.make_query(name, rdtype), address[0], port=address[1], timeout=5
    )


def listener(
    port: int, state: SidecarState, submit: Submitted, store: Path, **kw: Any
) -> UdpListener:
    mapping = UdpMapping.parse(f"127.0.0.1:0=127.0.0.1:{port}/dns")
    return UdpListener(mapping, state=state, submit=submit, store_location=str(store), **kw)


async def test_switching_modes_at_run_time(tmp_path: Path, dns_upstream: DnsUpstream) -> None:
    state, submitted = SidecarState("record"), Submitted()
    udp = listener(dns_upstream.port, state, submitted, tmp_path)
    address = await udp.start()
    try:
        answer = await query(address, "example.com.")
        assert [rd.to_text() for rd in answer.answer[0]] == ["192.0.2.1"]
        await eventually(lambda: len(submitted.events) == 1)
        # What the recorder process would do with them.
        store = open_store(tmp_path)
        store.write_batch(submitted.events, {})
        store.close()

        dns_upstream.close()
        sentinel = UdpPeer(dns_upstream.port)
        try:
            state.set_mode("replay", source="test")  # seen at the next datagram
            answer = await query(address, "EXAMPLE.COM.")
            assert [rd.to_text() for rd in answer.answer[0]] == ["192.0.2.1"]
            assert (await query(address, "other.example.")).rcode() == dns.rcode.SERVFAIL
            assert len(udp.replay) == 1 and sentinel.received == []
            assert len(submitted.events) == 1  # replay records nothing

            state.set_mode("record", source="test")  # live again: forwarded
            with pytest.raises(dns.exception.Timeout):
                live = dns.message.make_query("live.example.", "A")
                await dns.asyncquery.udp(live, address[0], port=address[1], timeout=0.5)
            await eventually(lambda: len(sentinel.received) == 1)
        finally:
            sentinel.close()
    finally:
        await udp.close()
    # The live query was still pending at close: recorded, not lost.
    assert submitted.events[-1].attrs["error"] == "closed"
    assert state.counters["udp.replay_hits"] == 1 and state.counters["udp.replay_misses"] == 1


async def test_pending_table_and_client_sockets_are_bounded_and_expire(
    tmp_path: Path, silent_upstream: UdpPeer
) -> None:
    state, submitted = SidecarState("record"), Submitted()
    udp = listener(silent_upstream.port, state, submitted, tmp_path, timeout=1.0, max_pending=4)
    address = await udp.start()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    try:
        wire = dns.message.make_query("slow.example.", "A").to_wire()
        for sock in clients:  # ten clients, each its own source port
            sock.sendto(wire, address)
        await eventually(lambda: state.counters["udp.requests"] == 10)
        # Four clients got upstream sockets and pending entries; six had to be dropped
        # (every socket was busy with a pending request), none of them forwarded.
        assert state.counters["udp.dropped"] == 6
        assert udp.pending <= 4 and len(udp._clients) <= 4
        await eventually(lambda: udp.pending == 0)  # expired, not leaked
        assert state.counters["udp.timeouts"] == 4
        assert [e.attrs["error"] for e in submitted.events] == ["timeout"] * 4
        await eventually(lambda: not udp._clients)  # idle sockets are closed too
        assert len(silent_upstream.received) == 4
        # With room again, a new client is served.
        clients[0].sendto(wire, address)
        await eventually(lambda: len(silent_upstream.received) == 5)
    finally:
        for sock in clients:
            sock.close()
        await udp.close()


@pytest.mark.parametrize(
    ("text", "listen", "upstream", "is_dns"),
    [
        ("127.0.0.1:4053=10.0.0.10:53/dns", ("127.0.0.1", 4053), ("10.0.0.10", 53), True),
        (":5000=127.0.0.1:8125", ("127.0.0.1", 5000), ("127.0.0.1", 8125), False),
        ("[::1]:0=[fd00::1]:53/DNS", ("::1", 0), ("fd00::1", 53), True),
    ],
)
def test_mapping_parse(
    text: str, listen: tuple[str, int], upstream: tuple[str, int], is_dns: bool
) -> None:
    mapping = UdpMapping.parse(text)
    assert (mapping.listen, mapping.upstream, mapping.dns) == (listen, upstream, is_dns)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:4053", "LISTEN=UPSTREAM"),
        ("127.0.0.1:4053=", "LISTEN=UPSTREAM"),
        ("127.0.0.1:4053=10.0.0.10", "HOST:PORT"),
        ("127.0.0.1:x=10.0.0.10:53", "HOST:PORT"),
        ("127.0.0.1:0=10.0.0.10:0/dns", "needs a port"),
    ],
)
def test_bad_mapping_is_a_startup_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UdpMapping.parse(text)

    async def start() -> None:
        sidecar = Sidecar(Settings(udp=[text], data_dir=tmp_path))
        sidecar.recorder = Submitted()  # type: ignore[assignment]  # only .submit is used
        sidecar.recorder.submit = sidecar.recorder  # type: ignore[attr-defined]
        await sidecar._start_udp()

    with pytest.raises(StartupError, match=message):
        asyncio.run(start())


async def test_counters_reach_the_recorder_as_increments(
    tmp_path: Path, dns_upstream: DnsUpstream
) -> None:
    state, submitted = SidecarState("record"), Submitted()
    settings = Settings(udp=[f"127.0.0.1:0=127.0.0.1:{dns_upstream.port}/dns"], data_dir=tmp_path)
    service = UdpService(settings, state, submitted)
    ((_, address),) = await service.start()
    await query(address, "example.com.")
    await query(address, "example.com.")
    await service.close()
    increments = [item.values for item in submitted if not isinstance(item, Event)]
    assert sum(i.get("udp.requests", 0) for i in increments) == 2
