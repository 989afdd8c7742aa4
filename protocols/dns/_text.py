"""Display forms: rdata as zone-file text, and a plaintext summary of a message."""

from __future__ import annotations

from typing import TypedDict, assert_never

from ._constants import class_name, opcode_name, rcode_name, type_name
from ._errors import DNSDecodeError
from ._rdata import edns_options
from ._records import (
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
    Message,
    RData,
    ResourceRecord,
    Unknown,
)

_TXT_ESCAPE = tuple(
    chr(b)
    if 0x20 <= b < 0x7F and b not in b'"\\'
    else ("\\" + chr(b) if b in b'"\\' else f"\\{b:03d}")
    for b in range(256)
)


class EDNSSummary(TypedDict):
    udp_payload: int
    version: int
    dnssec_ok: bool
    options: list[int]


class Summary(TypedDict):
    id: int
    opcode: str
    rcode: str
    flags: list[str]
    qname: str | None
    qtype: str | None
    qclass: str | None
    answers: list[str]
    authority: list[str]
    additional: list[str]
    edns: EDNSSummary | None


def rdata_text(data: RData) -> str:
    """Presentation form, as in zone files; raw rdata in RFC 3597 `\\# len hex` form."""
    match data:
        case A(address=address) | AAAA(address=address):
            return address
        case CNAME(target=target) | NS(target=target) | PTR(target=target):
            return target
        case MX(preference=preference, exchange=exchange):
            return f"{preference} {exchange}"
        case TXT(strings=strings):
            return " ".join(['"' + "".join([_TXT_ESCAPE[b] for b in s]) + '"' for s in strings])
        case SRV(priority=priority, weight=weight, port=port, target=target):
            return f"{priority} {weight} {port} {target}"
        case SOA():
            return (
                f"{data.mname} {data.rname} {data.serial} {data.refresh} "
                f"{data.retry} {data.expire} {data.minimum}"
            )
        case OPT(options=raw) | Unknown(data=raw):
            return f"\\# {len(raw)} {raw.hex()}" if raw else "\\# 0"
        case _:
            assert_never(data)


_FLAG_NAMES = ("qr", "aa", "tc", "rd", "ra", "z", "ad", "cd")


def summary(msg: Message) -> Summary:
    """Plaintext display fields; answers read like "A 93.184.216.34"."""
    header = msg.header
    flags = [name for name in _FLAG_NAMES if getattr(header, name)]
    question = msg.questions[0] if msg.questions else None
    opt = msg.edns
    return Summary(
        id=header.id,
        opcode=opcode_name(header.opcode),
        rcode=rcode_name(msg.full_rcode),
        flags=flags,
        qname=question.name if question else None,
        qtype=type_name(question.qtype) if question else None,
        qclass=class_name(question.qclass) if question else None,
        answers=[_record_text(r) for r in msg.answers],
        authority=[_record_text(r) for r in msg.authority],
        additional=[_record_text(r) for r in msg.additional if r is not opt],
        edns=None if opt is None else _edns_summary(opt),
    )


def _record_text(record: ResourceRecord) -> str:
    return f"{type_name(record.rtype)} {rdata_text(record.data)}"


def _edns_summary(opt: ResourceRecord) -> EDNSSummary:
    try:
        codes = (
            [code for code, _ in edns_options(opt.data.options)]
            if isinstance(opt.data, OPT)
            else []
        )
    except DNSDecodeError:
        codes = []  # only a hand-built OPT can be misframed; decode() rejects those
    return EDNSSummary(
        udp_payload=opt.rclass,
        version=(opt.ttl >> 16) & 0xFF,
        dnssec_ok=bool(opt.ttl & 0x8000),
        options=codes,
    )
