"""Name text form, compression on the encode side, and encode() refusing bad input."""

from __future__ import annotations

import pytest

from protocols.dns import (
    AAAA,
    CNAME,
    MX,
    OPT,
    SRV,
    TXT,
    A,
    DNSEncodeError,
    Header,
    Message,
    Question,
    ResourceRecord,
    RRClass,
    RRType,
    Unknown,
    decode,
    encode,
)
from tests.protocols.test_dns_cases import opt, q, rr

HEADER = Header(id=1, qr=True)


def _question_wire(name_wire: bytes) -> bytes:
    return bytes.fromhex("000181000001000000000000") + name_wire + b"\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("name_wire", "text"),
    [
        (b"\x00", "."),
        (b"\x03com\x00", "com."),
        (b"\x03a.b\x07example\x00", "a\\046b.example."),
        (b"\x04a\\ b\x00", "a\\092\\032b."),
        (b"\x02\x00\xff\x00", "\\000\\255."),
        (b"\x04caf\xc3\x00", "caf\\195."),
        (b"\x03WwW\x07ExAmPlE\x00", "WwW.ExAmPlE."),
        (b"\x05_x-y*\x00", "_x-y*."),
    ],
    ids=["root", "tld", "dot", "backslash-space", "binary", "non-ascii", "case", "punct"],
)
def test_name_text_form(name_wire: bytes, text: str) -> None:
    wire = _question_wire(name_wire)
    message = decode(wire)
    assert message.questions[0].name == text
    assert encode(message) == wire


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("a\\.b.example.", "a\\046b.example."),
        ("\\065\\066.", "AB."),
        ("\\a\\-.", "a-."),
        ("x\\\\y.", "x\\092y."),
    ],
)
def test_backslash_char_escapes_are_accepted(text: str, canonical: str) -> None:
    message = Message(header=HEADER, questions=(q(text, RRType.A),))
    assert decode(encode(message)).questions[0].name == canonical


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("example.com", "fully qualified"),
        ("", "fully qualified"),
        ("a..b.", "empty label"),
        (".a.", "empty label"),
        ("..", "empty label"),
        ("x" * 64 + ".", "longer than 63"),
        (("x" * 63 + ".") * 3 + "x" * 62 + ".", "longer than 255"),
        ("café.", "non-ASCII"),
        ("a\\256.", "DDD"),
        ("a\\12.", "DDD"),
        ("a\\", "escape"),
        ("a\\.", "fully qualified"),
    ],
)
def test_bad_names_are_refused(name: str, reason: str) -> None:
    message = Message(header=HEADER, questions=(q(name, RRType.A),))
    with pytest.raises(DNSEncodeError, match=reason):
        encode(message)


def test_longest_name_is_accepted() -> None:
    name = ("x" * 63 + ".") * 3 + "x" * 61 + "."  # 3 * 64 + 62 + 1 = 255 octets
    message = Message(header=HEADER, questions=(q(name, RRType.A),))
    assert decode(encode(message)) == message


def test_compression_keeps_case() -> None:
    message = Message(
        header=HEADER,
        questions=(q("WWW.Example.com.", RRType.A),),
        answers=(
            rr("www.example.com.", 60, A(address="192.0.2.1")),
            rr("WWW.Example.com.", 60, A(address="192.0.2.2")),
        ),
    )
    wire = encode(message)
    assert decode(wire) == message
    # "com" is shared by all three names; "www.example" differs in case so is written twice.
    assert wire.count(b"\x03com") == 1
    assert wire.count(b"\x07example") == 1 and wire.count(b"\x07Example") == 1
    # The last record's owner (2 + 10 fixed + 4 rdata bytes) is one pointer to the question's.
    assert wire[-16:-14] == b"\xc0\x0c"


def test_pointers_only_reach_the_first_16k() -> None:
    # The first record pushes everything after it beyond offset 0x3FFF, where a
    # 14-bit pointer cannot reach, so the two later names must be written in full.
    message = Message(
        header=HEADER,
        answers=(
            rr("big.", 0, Unknown(rtype=65280, data=bytes(0x4000))),
            rr("late.example.", 0, A(address="192.0.2.1")),
            rr("late.example.", 0, A(address="192.0.2.2")),
        ),
    )
    wire = encode(message)
    assert wire.count(b"\x04late\x07example\x00") == 2
    assert decode(wire) == message


def test_srv_target_is_never_compressed() -> None:
    # RFC 2782: the SRV target must not be compressed, even if it repeats the owner.
    message = Message(
        header=HEADER,
        answers=(
            rr("host.example.", 0, SRV(priority=0, weight=0, port=1, target="host.example.")),
        ),
    )
    assert encode(message).count(b"\x04host\x07example\x00") == 2


def test_rdata_names_are_compressed() -> None:
    message = Message(
        header=HEADER,
        answers=(
            rr("example.", 0, MX(preference=1, exchange="mail.example.")),
            rr("alias.example.", 0, CNAME(target="mail.example.")),
        ),
    )
    wire = encode(message)
    assert wire.count(b"example") == 1 and wire.count(b"mail") == 1
    assert decode(wire) == message


def _one(record: ResourceRecord) -> Message:
    return Message(header=HEADER, answers=(record,))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Message(header=Header(id=0x10000)), "id"),
        (Message(header=Header(id=1, opcode=16)), "opcode"),
        (Message(header=Header(id=1, rcode=16)), "rcode"),
        (Message(header=HEADER, questions=(Question(name=".", qtype=-1, qclass=1),)), "qtype"),
        (_one(rr("a.", -1, A(address="192.0.2.1"))), "TTL"),
        (_one(rr("a.", 1 << 32, A(address="192.0.2.1"))), "TTL"),
        (_one(rr("a.", 0, A(address="192.0.2.1"), rclass=70000)), "class"),
        (_one(rr("a.", 0, A(address="300.0.0.1"))), "A address"),
        (_one(rr("a.", 0, A(address="::1"))), "A address"),
        (_one(rr("a.", 0, AAAA(address="fe80::1%eth0"))), "plain address"),
        (_one(rr("a.", 0, AAAA(address="1.2.3.4"))), "AAAA address"),
        (_one(rr("a.", 0, TXT(strings=()))), "at least one"),
        (_one(rr("a.", 0, TXT(strings=(bytes(256),)))), "255"),
        (_one(rr("a.", 0, MX(preference=70000, exchange="b."))), "MX preference"),
        (_one(rr("a.", 0, SRV(priority=0, weight=0, port=-1, target="b."))), "SRV port"),
        (_one(rr("a.", 0, CNAME(target="no-dot"))), "fully qualified"),
        (
            _one(
                ResourceRecord(
                    name="a.", rtype=RRType.AAAA, rclass=1, ttl=0, data=A(address="192.0.2.1")
                )
            ),
            "holds A rdata",
        ),
        (_one(rr("a.", 0, Unknown(rtype=RRType.A, data=bytes(4)))), "typed class"),
        (_one(rr("a.", 0, Unknown(rtype=RRType.OPT, data=b""))), "OPT record outside"),
        (_one(rr("a.", 0, A(address="192.0.2.1"), rclass=RRClass.CH)), "carried as Unknown"),
        (_one(rr("a.", 0, Unknown(rtype=65280, data=bytes(0x10000)))), "over 65535"),
        (_one(opt(payload=512, ttl=0, options=b"")), "OPT record outside"),
        (
            Message(header=HEADER, additional=(opt(payload=512, ttl=0, options=b""),) * 2),
            "at most one",
        ),
        (
            Message(
                header=HEADER,
                additional=(
                    ResourceRecord(name="a.", rtype=41, rclass=512, ttl=0, data=OPT(options=b"")),
                ),
            ),
            "not the root",
        ),
        (
            Message(
                header=HEADER, additional=(opt(payload=512, ttl=0, options=b"\x00\x01\x00\x05"),)
            ),
            "EDNS0 option",
        ),
        (
            Message(
                header=HEADER, answers=(rr("a.", 0, Unknown(rtype=65280, data=bytes(40000))),) * 2
            ),
            "longer than any DNS message",
        ),
    ],
)
def test_encode_refuses_invalid_messages(message: Message, reason: str) -> None:
    with pytest.raises(DNSEncodeError, match=reason):
        encode(message)


def test_typed_rdata_outside_class_in_goes_through_unknown() -> None:
    # A CHAOS-class A record has another layout, so it is carried raw both ways.
    chaos = _one(rr("a.", 0, Unknown(rtype=RRType.A, data=b"\x00\x01"), rclass=RRClass.CH))
    assert decode(encode(chaos)) == chaos


def test_update_style_empty_rdata_is_raw() -> None:
    # RFC 2136 "delete an RRset": class ANY, empty rdata, for any type.
    delete = _one(rr("a.", 0, Unknown(rtype=RRType.MX, data=b""), rclass=RRClass.ANY))
    assert decode(encode(delete)) == delete
