"""Table-driven decode/encode tests, with dnspython as the independent oracle."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import dns.flags
import dns.message
import dns.name
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.dns import (
    AAAA,
    CNAME,
    MX,
    NS,
    OPT,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    DNSDecodeError,
    Header,
    Message,
    RData,
    ResourceRecord,
    RRClass,
    Unknown,
    decode,
    encode,
)
from tests.protocols.test_dns_cases import CASES, Case, opt, q, rr

by_name = pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
both_modes = pytest.mark.parametrize("compress", [True, False], ids=["compressed", "plain"])


# --- the oracle: dnspython's reading of a packet, and ours, in one comparable shape --


def _labels(name: str) -> tuple[bytes, ...]:
    # dnspython's zone-file parser reads our \DDD text form independently of our code.
    return tuple(dns.name.from_text(name).labels)


def _our_rdata(data: RData) -> object:
    match data:
        case A(address=address) | AAAA(address=address):
            # Packed, since text forms of odd IPv6 addresses differ between libraries.
            return ip_address(address).packed
        case CNAME(target=target) | NS(target=target) | PTR(target=target):
            return _labels(target)
        case MX():
            return (data.preference, _labels(data.exchange))
        case TXT(strings=strings):
            return strings
        case SRV():
            return (data.priority, data.weight, data.port, _labels(data.target))
        case SOA():
            timers = (data.serial, data.refresh, data.retry, data.expire, data.minimum)
            return (_labels(data.mname), _labels(data.rname), *timers)
        case OPT() | Unknown():
            return data.options if isinstance(data, OPT) else data.data


def _their_rdata(rdata: Any) -> object:
    name = type(rdata).__name__
    if name in ("A", "AAAA"):
        return ip_address(rdata.address).packed
    if name in ("CNAME", "NS", "PTR"):
        return tuple(rdata.target.labels)
    if name == "MX":
        return (rdata.preference, tuple(rdata.exchange.labels))
    if name == "TXT":
        return tuple(rdata.strings)
    if name == "SRV":
        return (rdata.priority, rdata.weight, rdata.port, tuple(rdata.target.labels))
    if name == "SOA":
        timers = (rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum)
        return (tuple(rdata.mname.labels), tuple(rdata.rname.labels), *timers)
    return rdata.to_wire()  # generic and types we carry raw (HTTPS): their wire bytes


def _flags(h: Header) -> int:
    bits = (h.qr, h.aa, h.tc, h.rd, h.ra, h.z, h.ad, h.cd)
    masks = (0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020, 0x0010)
    return sum(m for b, m in zip(bits, masks, strict=True) if b) | h.opcode << 11 | h.rcode


def _rfc2181_ttl(ttl: int) -> int:
    # dnspython reads TTLs with the top bit set as 0 (RFC 2181 section 8); we keep the
    # raw value so that re-encoding is byte-faithful.
    return ttl if ttl < 1 << 31 else 0


def our_view(m: Message) -> dict[str, object]:
    def section(records: tuple[ResourceRecord, ...]) -> list[object]:
        return [
            (_labels(r.name), r.rtype, r.rclass, _rfc2181_ttl(r.ttl), _our_rdata(r.data))
            for r in records
            if not isinstance(r.data, OPT)
        ]

    edns = m.edns
    return {
        "id": m.header.id,
        "flags": _flags(m.header),
        "rcode": m.full_rcode,
        "question": [(_labels(x.name), x.qtype, x.qclass) for x in m.questions],
        "answer": section(m.answers),
        "authority": section(m.authority),
        "additional": section(m.additional),
        "edns": None if edns is None else (edns.rclass, edns.ttl, _our_rdata(edns.data)),
    }


def their_view(wire: bytes) -> dict[str, object]:
    m = dns.message.from_wire(wire, one_rr_per_rrset=True)

    def section(rrsets: list[Any]) -> list[object]:
        return [
            (tuple(s.name.labels), s.rdtype, s.rdclass, s.ttl, _their_rdata(s[0])) for s in rrsets
        ]

    ednsflags = (m.ednsflags & 0xFFFF) | (m.edns << 16) | ((m.rcode() >> 4) << 24)
    return {
        "id": m.id,
        "flags": m.flags,
        "rcode": m.rcode(),
        "question": [(tuple(x.name.labels), x.rdtype, x.rdclass) for x in m.question],
        "answer": section(m.answer),
        "authority": section(m.authority),
        "additional": section(m.additional),
        "edns": None if m.opt is None else (m.payload, ednsflags, m.opt[0].to_wire()),
    }


# --- the fixture table ---------------------------------------------------------------


@by_name
def test_decode(c: Case) -> None:
    assert decode(c.wire) == c.message


@by_name
def test_decode_accepts_bytes_like(c: Case) -> None:
    assert decode(bytearray(c.wire)) == c.message
    assert decode(memoryview(c.wire)) == c.message


@by_name
def test_encode_reproduces_the_wire(c: Case) -> None:
    assert encode(c.message, compress=c.compressed) == c.wire


@by_name
@both_modes
def test_round_trip(c: Case, compress: bool) -> None:
    assert decode(encode(c.message, compress=compress)) == c.message


@by_name
def test_compression_never_grows(c: Case) -> None:
    assert len(encode(c.message)) <= len(encode(c.message, compress=False))


@by_name
def test_dnspython_agrees_with_the_expected_message(c: Case) -> None:
    assert their_view(c.wire) == our_view(c.message)


@by_name
@both_modes
def test_dnspython_reads_our_encoding(c: Case, compress: bool) -> None:
    assert their_view(encode(c.message, compress=compress)) == our_view(c.message)


@by_name
def test_every_truncation_is_rejected(c: Case) -> None:
    for cut in range(len(c.wire)):
        with pytest.raises(DNSDecodeError):
            decode(c.wire[:cut])


@by_name
@pytest.mark.parametrize("extra", [b"\x00", b"\xc0\x0c", bytes(11)], ids=["1", "ptr", "11"])
def test_trailing_data_is_rejected(c: Case, extra: bytes) -> None:
    with pytest.raises(DNSDecodeError, match="trailing"):
        decode(c.wire + extra)


# --- generated messages ----------------------------------------------------------------

# A small alphabet with both cases makes shared suffixes (and case near-misses) common,
# which is what exercises compression; the odd bytes exercise \DDD escaping.
_label = st.binary(min_size=1, max_size=12) | st.builds(
    bytes, st.lists(st.sampled_from(b'aAbB-_.\\ \x00\xff"('), min_size=1, max_size=6)
)


def _name_text(labels: list[bytes]) -> str:
    def esc(b: int) -> str:
        if 0x21 <= b <= 0x7E and b not in b".\\":
            return chr(b)
        return f"\\{b:03d}"

    return "".join("".join(esc(b) for b in label) + "." for label in labels) or "."


names = st.lists(_label, max_size=4).map(_name_text)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
# Private-use types: dnspython (our oracle) has no typed parser for them either.
private_type = st.integers(65280, 65534)

in_rdata: st.SearchStrategy[RData] = st.one_of(
    st.builds(A, address=ipv4),
    st.builds(AAAA, address=ipv6),
    st.builds(SRV, priority=u16, weight=u16, port=u16, target=names),
)
any_class_rdata: st.SearchStrategy[RData] = st.one_of(
    st.builds(CNAME, target=names),
    st.builds(NS, target=names),
    st.builds(PTR, target=names),
    st.builds(MX, preference=u16, exchange=names),
    st.builds(TXT, strings=st.lists(st.binary(max_size=40), min_size=1, max_size=3).map(tuple)),
    st.builds(
        SOA, mname=names, rname=names, serial=u32, refresh=u32, retry=u32, expire=u32, minimum=u32
    ),
    st.builds(Unknown, rtype=private_type, data=st.binary(max_size=30)),
)


@st.composite
def records(draw: st.DrawFn) -> ResourceRecord:
    if draw(st.booleans()):
        return rr(draw(names), draw(u32), draw(in_rdata))
    rclass = draw(st.sampled_from([RRClass.IN, RRClass.CH, 42]))
    return rr(draw(names), draw(u32), draw(any_class_rdata), rclass=rclass)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    flags = {f: draw(st.booleans()) for f in ("qr", "aa", "tc", "rd", "ra", "z", "ad", "cd")}
    header = Header(
        id=draw(u16), opcode=draw(st.integers(0, 15)), rcode=draw(st.integers(0, 15)), **flags
    )
    additional = draw(st.lists(records(), max_size=3))
    if draw(st.booleans()):
        # Experimental option codes: dnspython checks the contents of the ones it knows.
        tlvs = draw(
            st.lists(st.tuples(st.integers(65001, 65534), st.binary(max_size=6)), max_size=3)
        )
        options = b"".join(c.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v for c, v in tlvs)
        edns = opt(payload=draw(u16), ttl=draw(u32), options=options)
        additional.insert(draw(st.integers(0, len(additional))), edns)
    return Message(
        header=header,
        questions=tuple(draw(st.lists(st.builds(q, names, u16, u16), max_size=2))),
        answers=tuple(draw(st.lists(records(), max_size=4))),
        authority=tuple(draw(st.lists(records(), max_size=2))),
        additional=tuple(additional),
    )


# Generating messages is the slow part, so one test checks each message both ways.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages(m: Message) -> None:
    for compress in (True, False):
        assert decode(encode(m, compress=compress)) == m
    # dnspython reads UPDATE (and other opcodes) into differently named sections.
    m = replace(m, header=replace(m.header, opcode=0))
    for compress in (True, False):
        assert their_view(encode(m, compress=compress)) == our_view(m)
