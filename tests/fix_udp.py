"""Pytest plugin: datagram peers on loopback for the UDP/DNS tests.

``DnsUpstream`` is a small authoritative server (dnspython's message API) that
stands in for a cluster resolver; ``UdpPeer`` alone never answers, which makes
it both the unanswering upstream and the replay sentinel that counts datagrams.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest


class UdpPeer:
    """A UDP socket on loopback served by a thread; subclasses decide what to answer."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.sent: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def answer(self, data: bytes) -> list[bytes]:
        return []

    def _run(self) -> None:
        while True:
            try:
                data, client = self.sock.recvfrom(65535)
            except TimeoutError:
                if self._stop.is_set():
                    return  # the buffer is drained: nothing sent before close is missed
                continue
            self.received.append(data)
            for reply in self.answer(data):
                self.sent.append(reply)
                self.sock.sendto(reply, client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class DnsUpstream(UdpPeer):
    """Authoritative for a few names; counter.example. answers 1, 2, 3... in turn."""

    def __init__(self, port: int = 0) -> None:
        self.counter = 0
        super().__init__(port)

    def answer(self, data: bytes) -> list[bytes]:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            if len(data) < 12:
                return []
            return [data[:2] + bytes([0x80 | (data[2] & 0x78), dns.rcode.FORMERR]) + bytes(8)]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        records = {
            ("example.com.", "A"): ["192.0.2.1"],
            ("example.com.", "AAAA"): ["2001:db8::1"],
            ("multi.example.", "A"): ["192.0.2.10", "192.0.2.11"],
        }
        if name == "counter.example." and rdtype == "TXT":
            self.counter += 1
            records[(name, rdtype)] = [f'"{self.counter}"']
        if name == "big.example.":
            response.flags |= dns.flags.TC  # too big for UDP: the client should retry over TCP
        elif (name, rdtype) in records:
            for value in records[(name, rdtype)]:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", rdtype, value))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire: bytes = response.to_wire()
        return [wire]


class EchoUpstream(UdpPeer):
    def answer(self, data: bytes) -> list[bytes]:
        if data == b"twice":
            return [b"first of two", b"second of two"]
        if data == b"silence":
            return []
        return [b"echo:" + data]


@pytest.fixture
def dns_upstream() -> Iterator[DnsUpstream]:
    server = DnsUpstream()
    yield server
    server.close()


@pytest.fixture
def silent_upstream() -> Iterator[UdpPeer]:
    peer = UdpPeer()
    yield peer
    peer.close()
