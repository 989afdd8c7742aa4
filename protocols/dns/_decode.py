"""decode(): wire bytes -> Message, strictly.

Every length is checked against the bytes that remain before it is used, and
the header counts are checked against the packet size before anything is
allocated for them.  Only DNSDecodeError leaves this module.
"""

from __future__ import annotations

import struct

from ._constants import RRType
from ._errors import DNSDecodeError
from ._names import NameCache, read_name
from ._rdata import decode_rdata
from ._records import Header, Message, Question, ResourceRecord

HEADER = struct.Struct("!HHHHHH")
# No DNS transport carries more: TCP frames have a 16-bit length.
MAX_MESSAGE = 0xFFFF
# Smallest encodings: root name (1) + type/class (4), and + TTL/RDLENGTH (6) more.
MIN_QUESTION = 5
MIN_RECORD = 11

_QUESTION_FIXED = struct.Struct("!HH")
_RECORD_FIXED = struct.Struct("!HHIH")


def decode_header(ident: int, flags: int) -> Header:
    return Header(
        id=ident,
        qr=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        aa=bool(flags & 0x0400),
        tc=bool(flags & 0x0200),
        rd=bool(flags & 0x0100),
        ra=bool(flags & 0x0080),
        z=bool(flags & 0x0040),
        ad=bool(flags & 0x0020),
        cd=bool(flags & 0x0010),
        rcode=flags & 0xF,
    )


def decode(packet: bytes | bytearray | memoryview) -> Message:
    """Parse one complete DNS message; raise DNSDecodeError if it is malformed."""
    if type(packet) is not bytes:
        # Slices of a bytearray or memoryview would leak into the model as mutable labels.
        packet = bytes(packet)
    size = len(packet)
    if size < HEADER.size:
        raise DNSDecodeError(f"packet is {size} bytes, shorter than the 12-byte header")
    if size > MAX_MESSAGE:
        raise DNSDecodeError(f"packet is {size} bytes, longer than any DNS message")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
    records = ancount + nscount + arcount
    if qdcount * MIN_QUESTION + records * MIN_RECORD > size - HEADER.size:
        raise DNSDecodeError(
            f"header counts ({qdcount} questions, {records} records) "
            f"cannot fit in the {size - HEADER.size} bytes after the header"
        )
    pos = HEADER.size
    cache: NameCache = {}
    questions: list[Question] = []
    for index in range(qdcount):
        try:
            question, pos = _read_question(packet, pos, size, cache)
        except DNSDecodeError as exc:
            raise DNSDecodeError(f"question {index}: {exc}") from None
        questions.append(question)
    answers, pos = _read_section(packet, pos, size, ancount, "answer", cache)
    authority, pos = _read_section(packet, pos, size, nscount, "authority", cache)
    additional, pos = _read_section(packet, pos, size, arcount, "additional", cache)
    if pos != size:
        raise DNSDecodeError(f"{size - pos} bytes of trailing data after the last record")
    _check_opt(answers, authority, additional)
    return Message(
        header=decode_header(ident, flags),
        questions=tuple(questions),
        answers=answers,
        authority=authority,
        additional=additional,
    )


def _read_question(buf: bytes, pos: int, size: int, cache: NameCache) -> tuple[Question, int]:
    name, pos = read_name(buf, pos, size, cache)
    if pos + _QUESTION_FIXED.size > size:
        raise DNSDecodeError("type and class are cut short")
    qtype, qclass = _QUESTION_FIXED.unpack_from(buf, pos)
    return Question(name=name, qtype=qtype, qclass=qclass), pos + _QUESTION_FIXED.size


def _read_section(
    buf: bytes, pos: int, size: int, count: int, section: str, cache: NameCache
) -> tuple[tuple[ResourceRecord, ...], int]:
    records: list[ResourceRecord] = []
    for index in range(count):
        try:
            name, pos = read_name(buf, pos, size, cache)
            if pos + _RECORD_FIXED.size > size:
                raise DNSDecodeError("fixed fields are cut short")
            rtype, rclass, ttl, rdlength = _RECORD_FIXED.unpack_from(buf, pos)
            pos += _RECORD_FIXED.size
            end = pos + rdlength
            if end > size:
                raise DNSDecodeError(f"rdata of {rdlength} bytes runs past the end of the packet")
            data = decode_rdata(buf, pos, end, rtype, rclass, cache)
        except DNSDecodeError as exc:
            raise DNSDecodeError(f"{section} record {index}: {exc}") from None
        records.append(ResourceRecord(name=name, rtype=rtype, rclass=rclass, ttl=ttl, data=data))
        pos = end
    return tuple(records), pos


def _check_opt(
    answers: tuple[ResourceRecord, ...],
    authority: tuple[ResourceRecord, ...],
    additional: tuple[ResourceRecord, ...],
) -> None:
    # RFC 6891 section 6.1.1: at most one OPT, in the additional section, owned by the root.
    for record in answers + authority:
        if record.rtype == RRType.OPT:
            raise DNSDecodeError("OPT record outside the additional section")
    opts = [record for record in additional if record.rtype == RRType.OPT]
    if len(opts) > 1:
        raise DNSDecodeError(f"{len(opts)} OPT records; at most one is allowed")
    if opts and opts[0].name != ".":
        raise DNSDecodeError(f"OPT record owned by {opts[0].name!r}, not the root")
