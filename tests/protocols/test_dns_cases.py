"""Real DNS packets and the messages they decode to: the one table that drives
the decode, encode, truncation and fuzz tests (style rule 11).

The wire bytes were produced once with dnspython 2.9.2 (`make_query`,
`make_response`, `Message.to_wire()`, which compresses names;
`response_uncompressed` went through a `dns.renderer.Renderer` with compression
switched off) and pasted here, so the tests need no generator at run time.
The expected messages were written from dnspython's reading of the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    Header,
    Message,
    Question,
    Rcode,
    RData,
    ResourceRecord,
    RRClass,
    RRType,
    Unknown,
)

DO_BIT = 0x8000  # DNSSEC OK, in the OPT TTL


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    wire: bytes
    message: Message
    # Whether `wire` is the compressed form, i.e. what encode(message) reproduces
    # byte for byte; otherwise encode(message, compress=False) does.
    compressed: bool = True


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


# The type numbers are spelled out here rather than taken from the codec, so a
# wrong mapping in the codec cannot also make its expected value wrong.
_TYPE_OF: dict[type, int] = {
    A: 1,
    AAAA: 28,
    CNAME: 5,
    NS: 2,
    PTR: 12,
    MX: 15,
    TXT: 16,
    SRV: 33,
    SOA: 6,
}


def rr(name: str, ttl: int, data: RData, rclass: int = RRClass.IN) -> ResourceRecord:
    rtype = data.rtype if isinstance(data, Unknown) else _TYPE_OF[type(data)]
    return ResourceRecord(name=name, rtype=rtype, rclass=rclass, ttl=ttl, data=data)


def opt(*, payload: int, ttl: int, options: bytes) -> ResourceRecord:
    return ResourceRecord(name=".", rtype=41, rclass=payload, ttl=ttl, data=OPT(options=options))


def q(name: str, qtype: int, qclass: int = RRClass.IN) -> Question:
    return Question(name=name, qtype=qtype, qclass=qclass)


CASES: list[Case] = [
    Case(
        name="query_a",
        wire=bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001"),
        message=Message(
            header=Header(id=0x1234, rd=True),
            questions=(q("example.com.", RRType.A),),
        ),
    ),
    Case(
        name="response_a",
        wire=bytes.fromhex(
            "123481800001000200000000076578616d706c6503636f6d0000010001c00c0001000100000e1000"
            "045db8d823c00c0001000100000e1000045db8d822"
        ),
        message=Message(
            header=Header(id=0x1234, qr=True, rd=True, ra=True),
            questions=(q("example.com.", RRType.A),),
            answers=(
                rr("example.com.", 3600, A(address="93.184.216.35")),
                rr("example.com.", 3600, A(address="93.184.216.34")),
            ),
        ),
    ),
    Case(
        name="query_aaaa_edns",
        wire=bytes.fromhex(
            "beef01000001000000000001076578616d706c6503636f6d00001c000100002904d000008000000c"
            "000a00080123456789abcdef"
        ),
        message=Message(
            header=Header(id=0xBEEF, rd=True),
            questions=(q("example.com.", RRType.AAAA),),
            additional=(
                opt(payload=1232, ttl=DO_BIT, options=bytes.fromhex("000a00080123456789abcdef")),
            ),
        ),
    ),
    Case(
        name="response_aaaa_edns",
        wire=bytes.fromhex(
            "beef81800001000100000001076578616d706c6503636f6d00001c0001c00c001c00010000012c00"
            "1026062800022000010248189325c8194600002904d000008000001c000a00180123456789abcdef"
            "00000000000000000000000000000000"
        ),
        message=Message(
            header=Header(id=0xBEEF, qr=True, rd=True, ra=True),
            questions=(q("example.com.", RRType.AAAA),),
            answers=(rr("example.com.", 300, AAAA(address="2606:2800:220:1:248:1893:25c8:1946")),),
            additional=(
                opt(
                    payload=1232,
                    ttl=DO_BIT,
                    options=bytes.fromhex("000a00180123456789abcdef" + "00" * 16),
                ),
            ),
        ),
    ),
    Case(
        name="response_cname_chain",
        wire=bytes.fromhex(
            "00078180000100040000000003777777074578616d706c6503434f4d0000010001c00c0005000100"
            "00003c002103777777076578616d706c6503636f6d0363646e076578616d706c65036e657400c02d"
            "000500010000003c000906656467652d31c03dc05a00010001000000140004c000020ac05a000100"
            "01000000140004c000020b"
        ),
        message=Message(
            header=Header(id=0x0007, qr=True, rd=True, ra=True),
            questions=(q("www.Example.COM.", RRType.A),),
            answers=(
                rr("www.Example.COM.", 60, CNAME(target="www.example.com.cdn.example.net.")),
                rr("www.example.com.cdn.example.net.", 60, CNAME(target="edge-1.cdn.example.net.")),
                rr("edge-1.cdn.example.net.", 20, A(address="192.0.2.10")),
                rr("edge-1.cdn.example.net.", 20, A(address="192.0.2.11")),
            ),
        ),
    ),
    Case(
        name="response_txt",
        wire=bytes.fromhex(
            "010281800001000200000000076578616d706c65036f72670000100001c00c001000010000012c00"
            "0c0b763d73706631202d616c6cc00c001000010000012c00290870617274206f6e65087061727420"
            "74776f00157461620971756f7465226261636b5c736c617368ff"
        ),
        message=Message(
            header=Header(id=0x0102, qr=True, rd=True, ra=True),
            questions=(q("example.org.", RRType.TXT),),
            answers=(
                rr("example.org.", 300, TXT(strings=(b"v=spf1 -all",))),
                rr(
                    "example.org.",
                    300,
                    TXT(strings=(b"part one", b"part two", b"", b'tab\tquote"back\\slash\xff')),
                ),
            ),
        ),
    ),
    Case(
        name="response_srv",
        wire=bytes.fromhex(
            "555581800001000200000001045f736970045f746370076578616d706c6503636f6d0000210001c0"
            "0c0021000100015180001d000a001413c409736d616c6c626f7831076578616d706c6503636f6d00"
            "c00c0021000100015180001a000a003c13c406626967626f78076578616d706c6503636f6d000662"
            "6967626f78c01600010001000151800004c6336401"
        ),
        message=Message(
            header=Header(id=0x5555, qr=True, rd=True, ra=True),
            questions=(q("_sip._tcp.example.com.", RRType.SRV),),
            answers=(
                rr(
                    "_sip._tcp.example.com.",
                    86400,
                    SRV(priority=10, weight=20, port=5060, target="smallbox1.example.com."),
                ),
                rr(
                    "_sip._tcp.example.com.",
                    86400,
                    SRV(priority=10, weight=60, port=5060, target="bigbox.example.com."),
                ),
            ),
            additional=(rr("bigbox.example.com.", 86400, A(address="198.51.100.1")),),
        ),
    ),
    Case(
        name="response_mx",
        wire=bytes.fromhex(
            "222281800001000200000001076578616d706c65036e657400000f0001c00c000f000100000e1000"
            "190014066261636b7570026d78076578616d706c65036f726700c00c000f000100000e100009000a"
            "046d61696cc00cc050001c000100000e10001020010db8000000000000000000000025"
        ),
        message=Message(
            header=Header(id=0x2222, qr=True, rd=True, ra=True),
            questions=(q("example.net.", RRType.MX),),
            answers=(
                rr("example.net.", 3600, MX(preference=20, exchange="backup.mx.example.org.")),
                rr("example.net.", 3600, MX(preference=10, exchange="mail.example.net.")),
            ),
            additional=(rr("mail.example.net.", 3600, AAAA(address="2001:db8::25")),),
        ),
    ),
    Case(
        name="response_ptr",
        wire=bytes.fromhex(
            "333381800001000100000000023334033231360331383402393307696e2d61646472046172706100"
            "000c0001c00c000c000100015180000d076578616d706c6503636f6d00"
        ),
        message=Message(
            header=Header(id=0x3333, qr=True, rd=True, ra=True),
            questions=(q("34.216.184.93.in-addr.arpa.", RRType.PTR),),
            answers=(rr("34.216.184.93.in-addr.arpa.", 86400, PTR(target="example.com.")),),
        ),
    ),
    Case(
        name="response_nxdomain",
        wire=bytes.fromhex(
            "444485830001000000010000046e6f7065076578616d706c6503636f6d0000010001c01100060001"
            "00000384002c026e73056963616e6e036f726700036e6f6303646e73c03178a5080c00001c200000"
            "0e100012750000000e10"
        ),
        message=Message(
            header=Header(id=0x4444, qr=True, aa=True, rd=True, ra=True, rcode=Rcode.NXDOMAIN),
            questions=(q("nope.example.com.", RRType.A),),
            authority=(
                rr(
                    "example.com.",
                    900,
                    SOA(
                        mname="ns.icann.org.",
                        rname="noc.dns.icann.org.",
                        serial=2024081420,
                        refresh=7200,
                        retry=3600,
                        expire=1209600,
                        minimum=3600,
                    ),
                ),
            ),
        ),
    ),
    Case(
        name="response_https_unknown",
        wire=bytes.fromhex(
            "656581800001000200000001076578616d706c6503636f6d0000410001c00c004100010000012c00"
            "0d00010000010006026832026833c00cff0000010000012c0004deadbeef00002910000000000000"
            "00"
        ),
        message=Message(
            header=Header(id=0x6565, qr=True, rd=True, ra=True),
            questions=(q("example.com.", RRType.HTTPS),),
            answers=(
                rr(
                    "example.com.",
                    300,
                    Unknown(rtype=65, data=bytes.fromhex("00010000010006026832026833")),
                ),
                rr("example.com.", 300, Unknown(rtype=65280, data=b"\xde\xad\xbe\xef")),
            ),
            additional=(opt(payload=4096, ttl=0, options=b""),),
        ),
    ),
    Case(
        name="response_ns_glue",
        wire=bytes.fromhex(
            "777781800001000200000003076578616d706c6503636f6d0000020001c00c000200010001518000"
            "1401610c69616e612d73657276657273036e657400c00c000200010001518000040162c02bc02900"
            "010001000007080004c72b8735c029001c000100000708001020010500008f000000000000000000"
            "53c04900010001000007080004c72b8535"
        ),
        message=Message(
            header=Header(id=0x7777, qr=True, rd=True, ra=True),
            questions=(q("example.com.", RRType.NS),),
            answers=(
                rr("example.com.", 86400, NS(target="a.iana-servers.net.")),
                rr("example.com.", 86400, NS(target="b.iana-servers.net.")),
            ),
            additional=(
                rr("a.iana-servers.net.", 1800, A(address="199.43.135.53")),
                rr("a.iana-servers.net.", 1800, AAAA(address="2001:500:8f::53")),
                rr("b.iana-servers.net.", 1800, A(address="199.43.133.53")),
            ),
        ),
    ),
    Case(
        name="response_uncompressed",
        compressed=False,
        wire=bytes.fromhex(
            "0a0a818000010002000000000361706908496e7465726e616c076578616d706c6500000100010361"
            "706908496e7465726e616c076578616d706c650000050001000000050015026c6208696e7465726e"
            "616c076578616d706c6500026c6208696e7465726e616c076578616d706c65000001000100000005"
            "00040a000007"
        ),
        message=Message(
            header=Header(id=0x0A0A, qr=True, rd=True, ra=True),
            questions=(q("api.Internal.example.", RRType.A),),
            answers=(
                rr("api.Internal.example.", 5, CNAME(target="lb.internal.example.")),
                rr("lb.internal.example.", 5, A(address="10.0.0.7")),
            ),
        ),
    ),
    Case(
        name="response_truncated",
        wire=bytes.fromhex("0c0c8380000100000000000003626967076578616d706c6503636f6d0000100001"),
        message=Message(
            header=Header(id=0x0C0C, qr=True, tc=True, rd=True, ra=True),
            questions=(q("big.example.com.", RRType.TXT),),
        ),
    ),
    Case(
        name="response_chaos_txt",
        wire=bytes.fromhex(
            "0d0d810000010001000000000776657273696f6e0462696e640000100003c00c0010000300000000"
            "000807392e31382e3238"
        ),
        message=Message(
            header=Header(id=0x0D0D, qr=True, rd=True),
            questions=(q("version.bind.", RRType.TXT, RRClass.CH),),
            answers=(rr("version.bind.", 0, TXT(strings=(b"9.18.28",)), rclass=RRClass.CH),),
        ),
    ),
    Case(
        name="response_badvers",
        wire=bytes.fromhex(
            "0e0e81000001000000000001076578616d706c6503636f6d000001000100002904d0010000000000"
        ),
        message=Message(
            header=Header(id=0x0E0E, qr=True, rd=True),
            questions=(q("example.com.", RRType.A),),
            additional=(opt(payload=1232, ttl=1 << 24, options=b""),),
        ),
    ),
]
