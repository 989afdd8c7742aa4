"""The message model: frozen, slotted, keyword-only dataclasses (style rule 2).

Names are text, fully qualified, with the trailing dot: "example.com.", and the
root is ".".  Case is preserved exactly as on the wire (resolvers use 0x20 case
randomisation, so the echoed question must match byte for byte).  A label byte
that is not printable ASCII, or is "." or "\\", is written `\\DDD` (decimal, as
in zone files); on input `\\X` is accepted too.

The classes only hold data; `encode` validates them, so that decoding (the hot
path) does not pay for checks the decoder has already made.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._constants import RRType


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The fixed 12-byte header, minus the four counts (the sections' lengths)."""

    id: int
    qr: bool = False
    opcode: int = 0
    aa: bool = False
    tc: bool = False
    rd: bool = False
    ra: bool = False
    z: bool = False
    ad: bool = False
    cd: bool = False
    # Only the four header bits; `Message.full_rcode` adds the EDNS0 high bits.
    rcode: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True, kw_only=True)
class A:
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AAAA:
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CNAME:
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NS:
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PTR:
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MX:
    preference: int
    exchange: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TXT:
    """One or more character-strings, kept as bytes: TXT content is not text."""

    strings: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OPT:
    """EDNS0 options, raw (the decoder checks their framing; `edns_options` splits them).

    The rest of EDNS0 lives in the owning record: its class is the requestor's
    UDP payload size and its TTL packs extended rcode, version and the DO flag
    (RFC 6891 section 6.1.3); see `Message.edns`.
    """

    options: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown:
    """Any rdata without a typed decoder, byte for byte (RFC 3597)."""

    rtype: int
    data: bytes


RData = A | AAAA | CNAME | NS | PTR | MX | TXT | SRV | SOA | OPT | Unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceRecord:
    name: str
    # Must agree with `data` (e.g. 28 for AAAA); encode() checks it.
    rtype: int
    rclass: int
    ttl: int
    data: RData


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    header: Header
    questions: tuple[Question, ...] = ()
    answers: tuple[ResourceRecord, ...] = ()
    authority: tuple[ResourceRecord, ...] = ()
    additional: tuple[ResourceRecord, ...] = ()

    @property
    def edns(self) -> ResourceRecord | None:
        """The OPT pseudo-record, if the message uses EDNS0."""
        for record in self.additional:
            if record.rtype == RRType.OPT:
                return record
        return None

    @property
    def full_rcode(self) -> int:
        """The 12-bit rcode: EDNS0 keeps its upper 8 bits in the OPT TTL."""
        opt = self.edns
        if opt is None:
            return self.header.rcode
        return ((opt.ttl >> 24) << 4) | self.header.rcode
