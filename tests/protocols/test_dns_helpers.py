"""Replay helpers, display forms, constants, and the package's layering."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import dns.message
import dns.rcode
import pytest

import protocols.dns
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
    DNSEncodeError,
    Header,
    Message,
    Opcode,
    Question,
    Rcode,
    RData,
    RRClass,
    RRType,
    Unknown,
    class_name,
    decode,
    edns_options,
    is_truncated,
    opcode_name,
    peek_id,
    question_key,
    rcode_name,
    rdata_text,
    servfail,
    summary,
    type_name,
    with_id,
)
from tests.protocols.test_dns_cases import DO_BIT, case

QUERY_A = case("query_a").wire
QUERY_EDNS = case("query_aaaa_edns").wire


def test_question_key_lowercases_the_name() -> None:
    assert question_key(decode(QUERY_A)) == ("example.com.", RRType.A, RRClass.IN)
    chain = decode(case("response_cname_chain").wire)
    assert question_key(chain) == ("www.example.com.", RRType.A, RRClass.IN)
    assert question_key(Message(header=Header(id=1))) is None


def test_with_id_changes_only_the_id() -> None:
    wire = case("response_nxdomain").wire
    rewritten = with_id(wire, 0xBEEF)
    assert rewritten[:2] == b"\xbe\xef" and rewritten[2:] == wire[2:]
    assert decode(rewritten).header.id == 0xBEEF
    with pytest.raises(DNSEncodeError):
        with_id(wire, 0x10000)
    with pytest.raises(DNSDecodeError):
        with_id(wire[:11], 1)


def test_peek_id_and_is_truncated_read_only_the_header() -> None:
    assert peek_id(QUERY_A) == 0x1234
    assert peek_id(QUERY_A[:12]) == 0x1234  # the rest need not be valid
    assert peek_id(QUERY_A[:11]) is None
    assert is_truncated(case("response_truncated").wire)
    assert not is_truncated(case("response_a").wire)
    assert not is_truncated(b"\x00\x00\x02")


def _dnspython(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


def test_servfail_echoes_the_query() -> None:
    reply = servfail(QUERY_A)
    parsed = decode(reply)
    assert parsed.header == Header(id=0x1234, qr=True, rd=True, ra=True, rcode=Rcode.SERVFAIL)
    assert parsed.questions == decode(QUERY_A).questions
    assert parsed.answers == parsed.authority == parsed.additional == ()
    assert servfail(decode(QUERY_A)) == reply
    theirs = _dnspython(reply)
    assert theirs.rcode() == dns.rcode.SERVFAIL and theirs.edns < 0
    assert _dnspython(QUERY_A).is_response(theirs)


def test_servfail_keeps_case_cd_and_edns() -> None:
    query = decode(QUERY_EDNS)
    query = Message(
        header=Header(id=9, rd=False, cd=True),
        questions=(Question(name="ExAmPle.COM.", qtype=28, qclass=1),),
        additional=query.additional,
    )
    parsed = decode(servfail(query))
    assert parsed.header == Header(id=9, qr=True, ra=True, cd=True, rcode=Rcode.SERVFAIL)
    assert parsed.questions[0].name == "ExAmPle.COM."
    assert parsed.edns is not None and parsed.edns.ttl == DO_BIT
    assert _dnspython(servfail(QUERY_EDNS)).edns == 0


def test_servfail_for_undecodable_bytes_still_answers_by_id() -> None:
    garbage = QUERY_A[:12] + b"\xc0\x0c" + QUERY_A[14:]  # self-pointing question name
    reply = servfail(garbage)
    parsed = decode(reply)
    assert parsed.header == Header(id=0x1234, qr=True, rd=True, ra=True, rcode=Rcode.SERVFAIL)
    assert parsed.questions == ()
    with pytest.raises(DNSDecodeError):
        servfail(QUERY_A[:11])


def test_summary_of_an_answer() -> None:
    assert summary(decode(case("response_a").wire)) == {
        "id": 0x1234,
        "opcode": "QUERY",
        "rcode": "NOERROR",
        "flags": ["qr", "rd", "ra"],
        "qname": "example.com.",
        "qtype": "A",
        "qclass": "IN",
        "answers": ["A 93.184.216.35", "A 93.184.216.34"],
        "authority": [],
        "additional": [],
        "edns": None,
    }


def test_summary_of_nxdomain_edns_and_raw_types() -> None:
    nx = summary(decode(case("response_nxdomain").wire))
    assert nx["rcode"] == "NXDOMAIN" and nx["flags"] == ["qr", "aa", "rd", "ra"]
    assert nx["authority"] == [
        "SOA ns.icann.org. noc.dns.icann.org. 2024081420 7200 3600 1209600 3600"
    ]
    https = summary(decode(case("response_https_unknown").wire))
    assert https["qtype"] == "HTTPS"
    assert https["answers"] == [
        "HTTPS \\# 13 00010000010006026832026833",
        "TYPE65280 \\# 4 deadbeef",
    ]
    assert https["additional"] == []  # the OPT is shown under "edns" instead
    edns = summary(decode(QUERY_EDNS))["edns"]
    assert edns == {"udp_payload": 1232, "version": 0, "dnssec_ok": True, "options": [10]}
    assert summary(decode(case("response_badvers").wire))["rcode"] == "BADVERS"
    empty = summary(Message(header=Header(id=3)))
    assert empty["qname"] is None and empty["qtype"] is None


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (A(address="192.0.2.1"), "192.0.2.1"),
        (AAAA(address="2001:db8::1"), "2001:db8::1"),
        (CNAME(target="a.example."), "a.example."),
        (NS(target="ns.example."), "ns.example."),
        (PTR(target="host.example."), "host.example."),
        (MX(preference=10, exchange="mx.example."), "10 mx.example."),
        (
            TXT(strings=(b"v=spf1", b'say "hi"\\', b"\x00\xff")),
            '"v=spf1" "say \\"hi\\"\\\\" "\\000\\255"',
        ),
        (SRV(priority=1, weight=2, port=443, target="t.example."), "1 2 443 t.example."),
        (
            SOA(mname="m.", rname="r.", serial=1, refresh=2, retry=3, expire=4, minimum=5),
            "m. r. 1 2 3 4 5",
        ),
        (OPT(options=b""), "\\# 0"),
        (Unknown(rtype=99, data=b"\x01\xab"), "\\# 2 01ab"),
    ],
)
def test_rdata_text(data: RData, text: str) -> None:
    assert rdata_text(data) == text


def test_edns_options_split_the_raw_bytes() -> None:
    assert edns_options(bytes.fromhex("000a0002abcd00080000")) == ((10, b"\xab\xcd"), (8, b""))
    with pytest.raises(DNSDecodeError):
        edns_options(b"\x00\x0a\x00")


def test_names_and_numbers() -> None:
    assert [RRType.A, RRType.NS, RRType.CNAME, RRType.SOA, RRType.PTR, RRType.MX] == [
        1,
        2,
        5,
        6,
        12,
        15,
    ]
    assert [RRType.TXT, RRType.AAAA, RRType.SRV, RRType.OPT, RRType.ANY] == [16, 28, 33, 41, 255]
    assert list(range(6)) == [
        Rcode.NOERROR,
        Rcode.FORMERR,
        Rcode.SERVFAIL,
        Rcode.NXDOMAIN,
        Rcode.NOTIMP,
        Rcode.REFUSED,
    ]
    assert type_name(28) == "AAAA" and type_name(65) == "HTTPS" and type_name(65280) == "TYPE65280"
    assert rcode_name(3) == "NXDOMAIN" and rcode_name(4000) == "RCODE4000"
    assert class_name(1) == "IN" and class_name(42) == "CLASS42"
    assert opcode_name(Opcode.UPDATE) == "UPDATE" and opcode_name(9) == "OPCODE9"


def test_package_imports_only_the_stdlib() -> None:
    # Style rule 1: protocols/ is sans-I/O and knows nothing of the sidecar.
    allowed = sys.stdlib_module_names - {"asyncio", "socket", "selectors", "ssl", "threading"}
    package = Path(protocols.dns.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed or root == "__future__", f"{path.name} imports {root}"
