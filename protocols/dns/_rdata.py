"""Typed RDATA: one decoder and one writer per record type.

Which records get a typed decoder depends on the class as well as the type:
A, AAAA and SRV are defined for class IN only (CHAOS A, for one, has another
layout), and in dynamic updates (RFC 2136) class ANY or NONE with empty RDATA
means "the whole RRset", so such records stay raw.  `is_typed` is the single
place that rule lives; the encoder uses it to refuse `Unknown` rdata that the
decoder would have returned typed, which keeps decode(encode(m)) == m exact.
"""

from __future__ import annotations

import struct
from ipaddress import AddressValueError, IPv4Address, IPv6Address
from typing import assert_never

from ._constants import RRClass, RRType
from ._errors import DNSDecodeError, DNSEncodeError
from ._names import CompressionTable, NameCache, read_name, text_to_labels, write_name
from ._records import AAAA, CNAME, MX, NS, OPT, PTR, SOA, SRV, TXT, A, RData, Unknown

_TYPED = frozenset(
    {
        RRType.A,
        RRType.AAAA,
        RRType.CNAME,
        RRType.NS,
        RRType.PTR,
        RRType.MX,
        RRType.TXT,
        RRType.SRV,
        RRType.SOA,
    }
)
_IN_ONLY = frozenset({RRType.A, RRType.AAAA, RRType.SRV})
_UPDATE_CLASSES = frozenset({RRClass.ANY, RRClass.NONE})

_U16 = struct.Struct("!H")
_SRV_FIXED = struct.Struct("!HHH")
_SOA_TIMERS = struct.Struct("!IIIII")
_OPTION_HEADER = struct.Struct("!HH")


def is_typed(rtype: int, rclass: int, rdlength: int) -> bool:
    """Whether the decoder returns typed rdata (not `Unknown`) for such a record."""
    if rtype == RRType.OPT:
        return True
    if rtype not in _TYPED:
        return False
    if rdlength == 0 and rclass in _UPDATE_CLASSES:
        return False
    return rtype not in _IN_ONLY or rclass == RRClass.IN


def rdata_type(data: RData) -> int:
    match data:
        case A():
            return RRType.A
        case AAAA():
            return RRType.AAAA
        case CNAME():
            return RRType.CNAME
        case NS():
            return RRType.NS
        case PTR():
            return RRType.PTR
        case MX():
            return RRType.MX
        case TXT():
            return RRType.TXT
        case SRV():
            return RRType.SRV
        case SOA():
            return RRType.SOA
        case OPT():
            return RRType.OPT
        case Unknown(rtype=rtype):
            return rtype
        case _:
            assert_never(data)


def decode_rdata(
    buf: bytes, start: int, end: int, rtype: int, rclass: int, cache: NameCache
) -> RData:
    """Decode buf[start:end]; typed decoders must consume it exactly."""
    size = end - start
    if not is_typed(rtype, rclass, size):
        return Unknown(rtype=rtype, data=buf[start:end])
    match rtype:
        case RRType.OPT:
            options = buf[start:end]
            edns_options(options)  # only to reject bad framing, as RFC 6891 section 7 asks
            return OPT(options=options)
        case RRType.A:
            _expect_size(size, 4, "A")
            return A(address=str(IPv4Address(buf[start:end])))
        case RRType.AAAA:
            _expect_size(size, 16, "AAAA")
            return AAAA(address=str(IPv6Address(buf[start:end])))
        case RRType.CNAME:
            return CNAME(target=_only_name(buf, start, end, cache))
        case RRType.NS:
            return NS(target=_only_name(buf, start, end, cache))
        case RRType.PTR:
            return PTR(target=_only_name(buf, start, end, cache))
        case RRType.MX:
            _need(size, 2, "MX")
            (preference,) = _U16.unpack_from(buf, start)
            return MX(preference=preference, exchange=_only_name(buf, start + 2, end, cache))
        case RRType.TXT:
            return TXT(strings=_character_strings(buf, start, end))
        case RRType.SRV:
            _need(size, 6, "SRV")
            priority, weight, port = _SRV_FIXED.unpack_from(buf, start)
            target = _only_name(buf, start + 6, end, cache)
            return SRV(priority=priority, weight=weight, port=port, target=target)
        case RRType.SOA:
            mname, pos = read_name(buf, start, end, cache)
            rname, pos = read_name(buf, pos, end, cache)
            _expect_size(end - pos, _SOA_TIMERS.size, "SOA timers")
            serial, refresh, retry, expire, minimum = _SOA_TIMERS.unpack_from(buf, pos)
            return SOA(
                mname=mname,
                rname=rname,
                serial=serial,
                refresh=refresh,
                retry=retry,
                expire=expire,
                minimum=minimum,
            )
    raise AssertionError(f"is_typed() accepted type {rtype} without a decoder")


def _expect_size(size: int, expected: int, what: str) -> None:
    if size != expected:
        raise DNSDecodeError(f"{what} rdata is {size} bytes, expected {expected}")


def _need(size: int, minimum: int, what: str) -> None:
    if size < minimum:
        raise DNSDecodeError(f"{what} rdata is {size} bytes, needs at least {minimum}")


def _only_name(buf: bytes, start: int, end: int, cache: NameCache) -> str:
    name, pos = read_name(buf, start, end, cache)
    if pos != end:
        raise DNSDecodeError(f"{end - pos} bytes left over after the name in rdata")
    return name


def _character_strings(buf: bytes, start: int, end: int) -> tuple[bytes, ...]:
    if start == end:
        raise DNSDecodeError("TXT rdata holds no character-string")
    strings: list[bytes] = []
    pos = start
    while pos < end:
        length = buf[pos]
        if pos + 1 + length > end:
            raise DNSDecodeError(f"TXT character-string at offset {pos} runs past its rdata")
        strings.append(buf[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return tuple(strings)


def write_rdata(out: bytearray, data: RData, table: CompressionTable | None) -> None:
    """Append the RDATA of `data` (without RDLENGTH); raises DNSEncodeError.

    Only the RFC 1035 types may have their names compressed (RFC 3597 section
    4); SRV targets must not be (RFC 2782), so they are written in full.
    """
    match data:
        case A(address=address):
            out += _packed(IPv4Address, address, "A")
        case AAAA(address=address):
            out += _packed(IPv6Address, address, "AAAA")
        case CNAME(target=target) | NS(target=target) | PTR(target=target):
            write_name(out, text_to_labels(target), table)
        case MX(preference=preference, exchange=exchange):
            out += _U16.pack(check_range(preference, 0xFFFF, "MX preference"))
            write_name(out, text_to_labels(exchange), table)
        case TXT(strings=strings):
            if not strings:
                raise DNSEncodeError("TXT rdata needs at least one character-string")
            for string in strings:
                if len(string) > 255:
                    raise DNSEncodeError("TXT character-string longer than 255 bytes")
                out.append(len(string))
                out += string
        case SRV(priority=priority, weight=weight, port=port, target=target):
            out += _SRV_FIXED.pack(
                check_range(priority, 0xFFFF, "SRV priority"),
                check_range(weight, 0xFFFF, "SRV weight"),
                check_range(port, 0xFFFF, "SRV port"),
            )
            write_name(out, text_to_labels(target), None)
        case SOA():
            write_name(out, text_to_labels(data.mname), table)
            write_name(out, text_to_labels(data.rname), table)
            out += _SOA_TIMERS.pack(
                check_range(data.serial, 0xFFFFFFFF, "SOA serial"),
                check_range(data.refresh, 0xFFFFFFFF, "SOA refresh"),
                check_range(data.retry, 0xFFFFFFFF, "SOA retry"),
                check_range(data.expire, 0xFFFFFFFF, "SOA expire"),
                check_range(data.minimum, 0xFFFFFFFF, "SOA minimum"),
            )
        case OPT(options=raw):
            try:
                edns_options(raw)
            except DNSDecodeError as exc:
                raise DNSEncodeError(str(exc)) from None
            out += raw
        case Unknown(data=raw):
            out += raw
        case _:
            assert_never(data)


def edns_options(options: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split OPT rdata into (option code, value) pairs; DNSDecodeError if misframed."""
    parsed: list[tuple[int, bytes]] = []
    pos = 0
    end = len(options)
    while pos < end:
        if pos + 4 > end:
            raise DNSDecodeError(f"EDNS0 option header at offset {pos} is cut short")
        code, length = _OPTION_HEADER.unpack_from(options, pos)
        if pos + 4 + length > end:
            raise DNSDecodeError(f"EDNS0 option {code} runs past the OPT rdata")
        parsed.append((code, options[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return tuple(parsed)


def check_range(value: int, maximum: int, what: str) -> int:
    if not 0 <= value <= maximum:
        raise DNSEncodeError(f"{what} {value!r} is outside 0..{maximum}")
    return value


def _packed(kind: type[IPv4Address] | type[IPv6Address], address: str, what: str) -> bytes:
    # A scope ("fe80::1%eth0") would be silently dropped from the packed form.
    if not isinstance(address, str) or "%" in address:
        raise DNSEncodeError(f"{what} address {address!r} is not a plain address string")
    try:
        return kind(address).packed
    except (AddressValueError, ValueError) as exc:
        raise DNSEncodeError(f"{what} address {address!r} is invalid: {exc}") from None
