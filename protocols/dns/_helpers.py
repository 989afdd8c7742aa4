"""Small operations the sidecar needs around replay.

The raw-packet helpers work on the header bytes alone: replay forwards the
recorded answer as it came, so rewriting its id must not re-encode it.
"""

from __future__ import annotations

from ._constants import Rcode, RRType
from ._decode import HEADER, decode
from ._encode import encode
from ._errors import DNSDecodeError, DNSEncodeError
from ._records import OPT, Header, Message, ResourceRecord

# Flag bits within the third and fourth header bytes.
_OPCODE = 0x78
_TC = 0x02
_RD = 0x01
_QR = 0x80
_RA = 0x80
_CD = 0x10
# What we advertise when echoing EDNS0: the DNS Flag Day 2020 default.
_EDNS_PAYLOAD = 1232
_DO = 0x8000  # DNSSEC OK, in the OPT TTL


def question_key(msg: Message) -> tuple[str, int, int] | None:
    """(name lowercased, qtype, qclass) of the first question, for replay matching.

    Names from `decode` are in canonical text form, so lowercasing the text
    is the same as lowercasing the labels (escapes are digits only).
    """
    if not msg.questions:
        return None
    question = msg.questions[0]
    return question.name.lower(), question.qtype, question.qclass


def peek_id(packet: bytes) -> int | None:
    """The message id, or None if the packet is shorter than a DNS header."""
    if len(packet) < HEADER.size:
        return None
    return int.from_bytes(packet[:2], "big")


def is_truncated(packet: bytes) -> bool:
    """Whether the TC flag is set; False for anything shorter than a header."""
    return len(packet) >= HEADER.size and bool(packet[2] & _TC)


def with_id(packet: bytes, new_id: int) -> bytes:
    """`packet` with its id replaced and every other byte untouched."""
    if len(packet) < HEADER.size:
        raise DNSDecodeError(f"packet is {len(packet)} bytes, shorter than the 12-byte header")
    if not 0 <= new_id <= 0xFFFF:
        raise DNSEncodeError(f"id {new_id!r} is outside 0..65535")
    return new_id.to_bytes(2, "big") + packet[2:]


def servfail(query: Message | bytes) -> bytes:
    """A SERVFAIL answer to `query`: same id, opcode and questions, RD and CD copied, RA set.

    CD is copied too (RFC 4035 section 3.1.6).  If the query used EDNS0 the
    answer carries an OPT as well (RFC 6891 section 6.1.1), with DO copied (RFC
    3225 section 3).  Raw bytes that do not decode still get a header-only
    SERVFAIL with their id, so the client stops waiting; fewer than 12 bytes
    raise DNSDecodeError.
    """
    if isinstance(query, Message):
        parsed = query
    else:
        try:
            parsed = decode(query)
        except DNSDecodeError:
            if len(query) < HEADER.size:
                raise
            return _raw_servfail(query)
    header = parsed.header
    additional: tuple[ResourceRecord, ...] = ()
    edns = parsed.edns
    if edns is not None:
        opt = ResourceRecord(
            name=".",
            rtype=RRType.OPT,
            rclass=_EDNS_PAYLOAD,
            ttl=edns.ttl & _DO,
            data=OPT(options=b""),
        )
        additional = (opt,)
    reply = Header(
        id=header.id,
        qr=True,
        opcode=header.opcode,
        rd=header.rd,
        ra=True,
        cd=header.cd,
        rcode=Rcode.SERVFAIL,
    )
    return encode(Message(header=reply, questions=parsed.questions, additional=additional))


def _raw_servfail(query: bytes) -> bytes:
    flags = bytes([_QR | (query[2] & (_OPCODE | _RD)), _RA | (query[3] & _CD) | Rcode.SERVFAIL])
    return query[:2] + flags + bytes(8)  # all four counts zero
