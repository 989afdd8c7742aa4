"""encode(): Message -> wire bytes, validating everything we were handed."""

from __future__ import annotations

import struct

from ._constants import RRType, type_name
from ._decode import HEADER, MAX_MESSAGE
from ._errors import DNSEncodeError
from ._names import CompressionTable, text_to_labels, write_name
from ._rdata import check_range, is_typed, rdata_type, write_rdata
from ._records import OPT, Header, Message, ResourceRecord, Unknown

_QUESTION_FIXED = struct.Struct("!HH")
_RECORD_FIXED = struct.Struct("!HHIH")


def encode_flags(header: Header) -> int:
    return (
        int(header.qr) << 15
        | check_range(header.opcode, 0xF, "opcode") << 11
        | int(header.aa) << 10
        | int(header.tc) << 9
        | int(header.rd) << 8
        | int(header.ra) << 7
        | int(header.z) << 6
        | int(header.ad) << 5
        | int(header.cd) << 4
        | check_range(header.rcode, 0xF, "header rcode")
    )


def encode(message: Message, *, compress: bool = True) -> bytes:
    """Serialise `message`; raise DNSEncodeError if it is not a valid DNS message.

    With `compress`, names (and the names inside RFC 1035 rdata) reuse earlier
    suffixes through pointers; the output case always matches the input.
    """
    header = message.header
    counts = [
        len(message.questions),
        len(message.answers),
        len(message.authority),
        len(message.additional),
    ]
    if max(counts) > 0xFFFF:
        raise DNSEncodeError(f"section sizes {counts} exceed the 16-bit header counts")
    _check_opt(message)
    out = bytearray(
        HEADER.pack(check_range(header.id, 0xFFFF, "id"), encode_flags(header), *counts)
    )
    table: CompressionTable | None = {} if compress else None
    for question in message.questions:
        write_name(out, text_to_labels(question.name), table)
        out += _QUESTION_FIXED.pack(
            check_range(question.qtype, 0xFFFF, "qtype"),
            check_range(question.qclass, 0xFFFF, "qclass"),
        )
    for record in (*message.answers, *message.authority, *message.additional):
        _write_record(out, record, table)
    if len(out) > MAX_MESSAGE:
        raise DNSEncodeError(f"message is {len(out)} bytes, longer than any DNS message")
    return bytes(out)


def _write_record(out: bytearray, record: ResourceRecord, table: CompressionTable | None) -> None:
    data = record.data
    if rdata_type(data) != record.rtype:
        raise DNSEncodeError(
            f"record {record.name} of type {type_name(record.rtype)} "
            f"holds {type(data).__name__} rdata"
        )
    write_name(out, text_to_labels(record.name), table)
    fixed_at = len(out)
    out += _RECORD_FIXED.pack(
        check_range(record.rtype, 0xFFFF, "type"),
        check_range(record.rclass, 0xFFFF, "class"),
        check_range(record.ttl, 0xFFFFFFFF, "TTL"),
        0,  # RDLENGTH, patched below once the (possibly compressed) rdata is written
    )
    start = len(out)
    write_rdata(out, data, table)
    rdlength = len(out) - start
    if rdlength > 0xFFFF:
        raise DNSEncodeError(f"rdata of {record.name} is {rdlength} bytes, over 65535")
    # Only accept what the decoder would hand back in the same form, so that
    # decode(encode(m)) == m holds for every message encode() accepts.
    typed = is_typed(record.rtype, record.rclass, rdlength)
    if typed and isinstance(data, Unknown):
        raise DNSEncodeError(
            f"{type_name(record.rtype)} rdata in class {record.rclass} must use its typed class"
        )
    if not typed and not isinstance(data, Unknown):
        raise DNSEncodeError(
            f"{type(data).__name__} rdata in class {record.rclass} is carried as Unknown"
        )
    struct.pack_into("!H", out, fixed_at + 8, rdlength)


def _check_opt(message: Message) -> None:
    for record in (*message.answers, *message.authority):
        if record.rtype == RRType.OPT or isinstance(record.data, OPT):
            raise DNSEncodeError("OPT record outside the additional section")
    opts = [r for r in message.additional if r.rtype == RRType.OPT or isinstance(r.data, OPT)]
    if len(opts) > 1:
        raise DNSEncodeError(f"{len(opts)} OPT records; at most one is allowed")
    if opts and opts[0].name != ".":
        raise DNSEncodeError(f"OPT record owned by {opts[0].name!r}, not the root")
