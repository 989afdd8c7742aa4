"""UDP and DNS through the sidecar: real sockets, dnspython and dig as clients.

The upstream is a small authoritative server of our own on loopback; replay
runs against a sentinel bound to the same port that counts every datagram.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from flux_proxy.keysetup import reader_sealer
from flux_proxy.render import describe
from protocols.dns import decode, peek_id
from recorder.model import UDP, Event, StoredEvent
from recorder.store import open_store
from tests.fix_sidecar import SidecarProcess
from tests.fix_udp import DnsUpstream, EchoUpstream, UdpPeer

Factory = Callable[..., SidecarProcess]
DIG = shutil.which("dig")


def start(
    factory: Factory, *mappings: str, flags: tuple[str, ...] = (), mode: str = "record"
) -> SidecarProcess:
    args = [arg for mapping in mappings for arg in ("--udp", mapping)]
    # "admin" is announced last: by then the loop is done starting (the HTTP proxy's CA).
    return factory(None, *args, *flags, mode=mode, expect=("udp", "admin"))


def dns_mapping(port: int) -> str:
    return f"127.0.0.1:0=127.0.0.1:{port}/dns"


def udp_mapping(port: int) -> str:
    return f"127.0.0.1:0=127.0.0.1:{port}"


def resolve(address: tuple[str, int], name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    response = dns.query.udp(query, address[0], port=address[1], timeout=5)
    assert response.id == query.id  # dnspython checks it too; this says what the test relies on
    return response


def values(response: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


def dig(address: tuple[str, int], name: str, rdtype: str = "A") -> str:
    assert DIG is not None
    result = subprocess.run(
        [DIG, f"@{address[0]}", "-p", str(address[1]), name, rdtype, "+tries=1", "+time=5"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return result.stdout


def exchange(address: tuple[str, int], data: bytes, *, expect: int = 1) -> list[bytes]:
    """Sends one datagram and collects up to ``expect`` answers (fewer if none come)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5 if expect else 0.5)
        sock.sendto(data, address)
        answers: list[bytes] = []
        try:
            while len(answers) < max(expect, 1):
                answers.append(sock.recv(65535))
                sock.settimeout(0.5)  # later answers of the same request come right after
        except TimeoutError:
            pass
        return answers


def recorded(data_dir: Path) -> list[Event]:
    # With the data dir's development key when there is one: payloads may be sealed.
    store = open_store(data_dir, readonly=True, sealer=reader_sealer(None, data_dir))
    try:
        return [stored.event for stored in store.events(kind=UDP)]
    finally:
        store.close()


def counters(data_dir: Path) -> dict[str, int]:
    store = open_store(data_dir, readonly=True)
    try:
        return store.counters()
    finally:
        store.close()


def test_record_then_replay_dns_and_generic_udp_without_the_upstreams(
    dns_upstream: DnsUpstream, sidecar_factory: Factory
) -> None:
    echo = EchoUpstream()
    try:
        sidecar = start(sidecar_factory, dns_mapping(dns_upstream.port), udp_mapping(echo.port))
        queries = _record_dns(sidecar.udp_listener(dns_upstream.port), dns_upstream)
        _record_echo(sidecar.udp_listener(echo.port))
        assert sidecar.stop() == 0
    finally:
        echo.close()
    assert len(dns_upstream.received) == queries
    events = recorded(sidecar.data_dir)
    assert len(events) == queries + 3
    assert counters(sidecar.data_dir)["udp.requests"] == queries + 3
    _check_dns_events([e for e in events if e.attrs["dns"]], dns_upstream)
    _check_echo_events([e for e in events if not e.attrs["dns"]])

    # Replay: the upstreams are gone and sentinels on their ports count what reaches them.
    dns_upstream.close()
    dns_sentinel, echo_sentinel = UdpPeer(dns_upstream.port), UdpPeer(echo.port)
    try:
        replay = start(
            sidecar_factory,
            dns_mapping(dns_sentinel.port),
            udp_mapping(echo_sentinel.port),
            mode="replay",
        )
        hits, misses = _replay_dns(replay.udp_listener(dns_sentinel.port))
        _replay_echo(replay.udp_listener(echo_sentinel.port))
        assert replay.stop() == 0
    finally:
        dns_sentinel.close()
        echo_sentinel.close()
    assert dns_sentinel.received == [] and echo_sentinel.received == []
    totals = counters(replay.data_dir)
    assert totals["udp.replay_hits"] == hits + 3 and totals["udp.replay_misses"] == misses + 1
    assert len(recorded(replay.data_dir)) == queries + 3  # replay records nothing new


def _record_dns(address: tuple[str, int], upstream: DnsUpstream) -> int:
    assert values(resolve(address, "example.com.")) == ["192.0.2.1"]
    assert values(resolve(address, "example.com.", "AAAA")) == ["2001:db8::1"]
    assert values(resolve(address, "multi.example.")) == ["192.0.2.10", "192.0.2.11"]
    counted = [values(resolve(address, "counter.example.", "TXT")) for _ in range(3)]
    assert counted == [['"1"'], ['"2"'], ['"3"']]
    assert resolve(address, "missing.example.").rcode() == dns.rcode.NXDOMAIN
    # Truncated: relayed byte for byte, TC bit and all, so the client retries over TCP.
    (answer,) = exchange(address, dns.message.make_query("big.example.", "TXT").to_wire())
    assert answer == upstream.sent[-1]
    assert dns.message.from_wire(answer).flags & dns.flags.TC
    assert resolve(address, "big.example.", "TXT").flags & dns.flags.TC
    queries = 9
    if DIG:
        assert dig(address, "example.com.").count("192.0.2.1") == 1
        queries += 1
    return queries


def _check_dns_events(events: list[Event], upstream: DnsUpstream) -> None:
    by_question = {(e.attrs["qname"], e.attrs["qtype"]): e for e in events}
    a = by_question[("example.com.", "A")]
    assert a.attrs["rcode"] == "NOERROR" and a.attrs["answers"] == ["A 192.0.2.1"]
    assert a.attrs["upstream"] == f"127.0.0.1:{upstream.port}" and a.trace_id is None
    assert a.payload["responses"][0] in upstream.sent
    assert a.fingerprint == "dns IN A example.com."
    assert by_question[("missing.example.", "A")].attrs["rcode"] == "NXDOMAIN"
    assert by_question[("big.example.", "TXT")].attrs["tc"] is True
    shown = [describe(_stored(e)) for e in events]
    assert "DNS A multi.example. → NOERROR A 192.0.2.10, A 192.0.2.11" in shown
    assert "DNS TXT big.example. → NOERROR (truncated)" in shown


def _replay_dns(address: tuple[str, int]) -> tuple[int, int]:
    query = dns.message.make_query("example.com.", "A")
    query.id = 4242
    answer = dns.query.udp(query, address[0], port=address[1], timeout=5)
    assert answer.id == 4242 and values(answer) == ["192.0.2.1"]
    assert values(resolve(address, "EXAMPLE.com.", "AAAA")) == ["2001:db8::1"]
    # Recorded order, then the last recording keeps answering.
    counted = [values(resolve(address, "counter.example.", "TXT")) for _ in range(4)]
    assert counted == [['"1"'], ['"2"'], ['"3"'], ['"3"']]
    assert resolve(address, "missing.example.").rcode() == dns.rcode.NXDOMAIN
    assert resolve(address, "big.example.", "TXT").flags & dns.flags.TC
    assert resolve(address, "never.recorded.").rcode() == dns.rcode.SERVFAIL
    (servfail,) = exchange(address, b"\xbe\xef" + b"\xff" * 30)  # garbage with a header
    assert peek_id(servfail) == 0xBEEF and decode(servfail).header.rcode == dns.rcode.SERVFAIL
    hits, misses = 8, 2
    if DIG:
        assert "192.0.2.1" in dig(address, "example.com.")
        assert "status: SERVFAIL" in dig(address, "never.recorded.")
        hits, misses = hits + 1, misses + 1
    return hits, misses


def _record_echo(address: tuple[str, int]) -> None:
    assert exchange(address, b"ping-1") == [b"echo:ping-1"]
    assert exchange(address, b"ping-2") == [b"echo:ping-2"]
    assert exchange(address, b"twice", expect=2) == [b"first of two", b"second of two"]


def _check_echo_events(events: list[Event]) -> None:
    by_request = {e.payload["request"]: e for e in events}
    assert by_request[b"twice"].payload["responses"] == [b"first of two", b"second of two"]
    assert describe(_stored(by_request[b"ping-1"])) == "udp 6 bytes → 11 bytes"
    assert "qname" not in by_request[b"ping-1"].attrs


def _replay_echo(address: tuple[str, int]) -> None:
    assert exchange(address, b"ping-2") == [b"echo:ping-2"]
    assert exchange(address, b"ping-1") == [b"echo:ping-1"]
    assert exchange(address, b"twice", expect=2) == [b"first of two", b"second of two"]
    assert exchange(address, b"never sent", expect=0) == []


def test_malformed_datagrams_are_forwarded_recorded_and_survived(
    dns_upstream: DnsUpstream, sidecar_factory: Factory
) -> None:
    sidecar = start(sidecar_factory, dns_mapping(dns_upstream.port))
    address = sidecar.udp_listener(dns_upstream.port)
    short, headed = b"\x01\x02\x03", b"\xab\xcd" + b"\xff" * 30
    assert exchange(address, short, expect=0) == []
    (formerr,) = exchange(address, headed)
    assert peek_id(formerr) == 0xABCD and formerr[3] & 0x0F == dns.rcode.FORMERR
    assert values(resolve(address, "example.com.")) == ["192.0.2.1"]  # the listener lives on
    assert sidecar.stop() == 0
    assert dns_upstream.received[:2] == [short, headed]  # forwarded byte for byte
    events = {e.payload["request"]: e for e in recorded(sidecar.data_dir)}
    assert events[short].attrs["decode_error"].startswith("request: ")
    assert events[short].attrs["error"] in ("timeout", "closed")
    assert events[headed].attrs["decode_error"].startswith("request: ")
    assert events[headed].attrs["rcode"] == "FORMERR" and not events[headed].error
    assert "(malformed request:" in describe(_stored(events[headed]))


def test_unanswered_request_expires_as_a_timeout(
    silent_upstream: UdpPeer, sidecar_factory: Factory
) -> None:
    sidecar = start(
        sidecar_factory, dns_mapping(silent_upstream.port), flags=("--udp-timeout", "1")
    )
    address = sidecar.udp_listener(silent_upstream.port)
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("slow.example.", "A"), address[0],
                      port=address[1], timeout=1.5)  # fmt: skip
    # Recorded while the sidecar still runs: expiry, not shutdown, finished it.
    stats = sidecar.wait_for(lambda s: s.get("udp.timeouts", 0) >= 1 and s.get("events", 0) >= 1)
    assert stats["udp.timeouts"] == 1
    (event,) = recorded(sidecar.data_dir)
    assert event.error and event.attrs["error"] == "timeout"
    assert event.attrs["qname"] == "slow.example." and event.payload["responses"] == []
    assert describe(_stored(event)) == "DNS A slow.example. → no answer (timeout)"
    assert len(silent_upstream.received) == 1


def test_a_flood_leaves_the_pending_table_bounded(
    silent_upstream: UdpPeer, sidecar_factory: Factory
) -> None:
    # A long timeout: nothing expires during the flood, so the table holds what it can.
    sidecar = start(
        sidecar_factory, dns_mapping(silent_upstream.port), flags=("--udp-timeout", "60")
    )
    address = sidecar.udp_listener(silent_upstream.port)
    query = dns.message.make_query("flood.example.", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(5000):
            sock.sendto(i.to_bytes(2, "big") + query[2:], address)
            if i % 20 == 19:
                time.sleep(0.002)  # paced: the point is the sidecar's bound, not the kernel's
    assert sidecar.stop() == 0  # shutdown records what is still pending, as "closed"
    totals = counters(sidecar.data_dir)
    requests, dropped = totals["udp.requests"], totals.get("udp.dropped", 0)
    events = recorded(sidecar.data_dir)
    assert requests > 1024, "the flood did not reach the sidecar; the test proves nothing"
    assert len(events) == 1024  # the cap, not the flood size
    assert dropped == requests - len(events)
    assert {e.attrs["error"] for e in events} == {"closed"}
    assert len(silent_upstream.received) > 1024  # past the cap, still forwarded
    assert "datagrams not recorded" in sidecar.stderr()


def _stored(event: Event) -> StoredEvent:
    return StoredEvent(id=0, seq=0, event=event)
