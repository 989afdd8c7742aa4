"""Malformed and hostile packets: only DNSDecodeError may escape, and quickly."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.dns import DNSDecodeError, Message, RRClass, RRType, Unknown, decode, encode
from protocols.dns._names import NameCache, read_name
from tests.protocols.test_dns_cases import CASES


def _header(qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0, ident: int = 0xABCD) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, qd, an, ns, ar)


def _record(owner: bytes, rtype: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, 60, len(rdata)) + rdata


QA = b"\x00\x01\x00\x01"  # qtype A, qclass IN
EXAMPLE = b"\x07example\x00"  # at offset 12 when it is the first question name


# --- compression pointers -----------------------------------------------------------

POINTER_CASES = {
    # A name at 12 that is a pointer to itself.
    "self": _header(qd=1) + b"\xc0\x0c" + QA,
    # Pointer to data after itself.
    "forward": _header(qd=1) + b"\xc0\x12" + QA + EXAMPLE,
    # Question name at 12 = pointer to 14, which is a pointer back to 12.
    "mutual": _header(qd=1) + b"\xc0\x0e\xc0\x0c" + QA,
    # The answer's owner points back into the question's label (13), whose bytes are
    # a pointer to the answer's owner: the first hop is backwards, the second is not.
    "mutual-via-label": _header(qd=1, an=1)
    + b"\x02\xc0\x14\x00"
    + QA
    + _record(b"\xc0\x0d", RRType.A, bytes(4)),
    # Pointer into its own name: "a" then back to the start, i.e. a.a.a.a...
    "own-name": _header(qd=1) + b"\x01a\xc0\x0c" + QA,
    # Pointer past the end of the packet.
    "past-end": _header(qd=1) + b"\xff\xff" + QA,
    # Pointer whose second byte is missing.
    "cut": _header(qd=1) + b"\x01a\x01b\xc0",
    # The labels reached through a pointer must end before the name that points there:
    # the answer's owner (19) points at 18, the last byte of the question, which reads
    # as a one-byte label whose data is the pointer itself.
    "overlapping": _header(qd=1, an=1)
    + b"\x01a\x00"
    + QA
    + _record(b"\xc0\x12", RRType.A, bytes(4)),
}


@pytest.mark.parametrize("packet", POINTER_CASES.values(), ids=POINTER_CASES.keys())
def test_bad_pointers_are_rejected(packet: bytes) -> None:
    with pytest.raises(DNSDecodeError, match=r"pointer|runs past"):
        decode(packet)


def _pointer_chain(questions: int) -> bytes:
    """Question k's name is a pointer to question k-1's, so it takes k hops."""
    body = bytearray(b"\x00" + QA)
    previous = 12
    for _ in range(questions - 1):
        here = 12 + len(body)
        body += struct.pack("!H", 0xC000 | previous) + QA
        previous = here
    return _header(qd=questions) + bytes(body)


def test_pointer_chains_are_followed_up_to_the_hop_limit() -> None:
    assert len(decode(_pointer_chain(128)).questions) == 128  # the last takes 127 hops
    with pytest.raises(DNSDecodeError, match="too many pointers"):
        decode(_pointer_chain(129))


def test_worst_case_pointer_chains_decode_in_linear_time() -> None:
    # A 64 KB message of ~10,900 names, chained 127 deep wherever pointers reach
    # (the first 16 KB) and all later ones pointing at the deepest: walking every
    # chain afresh would take ~1.4M hops; the per-message cache makes it ~11K.
    body = bytearray()
    count = 0
    previous = 12
    while 12 + len(body) + 6 < 0x3FFF:
        here = 12 + len(body)
        body += (b"\x00" if count % 127 == 0 else struct.pack("!H", 0xC000 | previous)) + QA
        previous = here
        count += 1
    while 12 + len(body) + 6 <= 0xFFFF:
        body += struct.pack("!H", 0xC000 | previous) + QA
        count += 1
    start = time.perf_counter()
    assert len(decode(_header(qd=count) + bytes(body)).questions) == count
    assert time.perf_counter() - start < 1.0  # ~0.06 s on a laptop; generous for CI


# --- labels and names ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [0x40, 0x80])
def test_reserved_label_types_are_rejected(kind: int) -> None:
    with pytest.raises(DNSDecodeError, match="label type"):
        decode(_header(qd=1) + bytes([kind | 1]) + b"a\x00" + QA)


def test_name_over_255_octets_is_rejected() -> None:
    long_name = (b"\x3f" + b"x" * 63) * 4 + b"\x00"  # 257 octets
    with pytest.raises(DNSDecodeError, match="255"):
        decode(_header(qd=1) + long_name + QA)


def test_name_over_255_octets_through_a_pointer_is_rejected() -> None:
    first = (b"\x3f" + b"x" * 63) * 3 + b"\x00"  # 193 octets at 12
    second = b"\x3f" + b"y" * 63 + b"\xc0\x0c"  # 64 + 193 = 257 octets
    with pytest.raises(DNSDecodeError, match="255"):
        decode(_header(qd=2) + first + QA + second + QA)


def test_label_running_past_the_packet_is_rejected() -> None:
    with pytest.raises(DNSDecodeError, match="past the end"):
        decode(_header(qd=1) + b"\x3fabc" + QA)


# --- counts, sizes and rdata lengths ------------------------------------------------


@pytest.mark.parametrize("field", range(4), ids=["qd", "an", "ns", "ar"])
def test_huge_counts_in_a_tiny_packet_are_rejected_at_once(field: int) -> None:
    counts = [0, 0, 0, 0]
    counts[field] = 0xFFFF
    packet = _header(*counts) + bytes(30)
    start = time.perf_counter()
    with pytest.raises(DNSDecodeError, match="header counts"):
        decode(packet)
    assert time.perf_counter() - start < 0.05  # generous: a loaded CI box


def test_oversized_packet_is_rejected() -> None:
    with pytest.raises(DNSDecodeError, match="longer than any DNS message"):
        decode(_header() + bytes(0x10000))


RDATA_CASES = {
    "A-short": _record(EXAMPLE, RRType.A, bytes(3)),
    "A-long": _record(EXAMPLE, RRType.A, bytes(5)),
    "A-empty": _record(EXAMPLE, RRType.A, b""),
    "AAAA-short": _record(EXAMPLE, RRType.AAAA, bytes(15)),
    "CNAME-leftover": _record(EXAMPLE, RRType.CNAME, b"\x01a\x00\x00"),
    # RDLENGTH 2, but the name in it goes on for 5 bytes.
    "CNAME-name-past-rdata": EXAMPLE
    + struct.pack("!HHIH", RRType.CNAME, 1, 60, 2)
    + b"\x03abc\x00",
    "CNAME-empty": _record(EXAMPLE, RRType.CNAME, b""),
    "MX-short": _record(EXAMPLE, RRType.MX, b"\x00"),
    "SRV-short": _record(EXAMPLE, RRType.SRV, bytes(5)),
    "SOA-short": _record(EXAMPLE, RRType.SOA, b"\x00\x00" + bytes(19)),
    "SOA-long": _record(EXAMPLE, RRType.SOA, b"\x00\x00" + bytes(21)),
    "TXT-empty": _record(EXAMPLE, RRType.TXT, b""),
    "TXT-overrun": _record(EXAMPLE, RRType.TXT, b"\x05abc"),
    "rdlength-past-end": _record(EXAMPLE, 65280, b"abc")[:-1],
    "fixed-fields-cut": EXAMPLE + b"\x00\x01\x00",
    "OPT-misframed": _record(b"\x00", RRType.OPT, b"\x00\x0a\x00\x08\x01"),
}


@pytest.mark.parametrize("record", RDATA_CASES.values(), ids=RDATA_CASES.keys())
def test_bad_rdata_is_rejected(record: bytes) -> None:
    with pytest.raises(DNSDecodeError, match="additional record 0"):
        decode(_header(ar=1) + record)


def test_opt_placement_is_checked() -> None:
    opt = _record(b"\x00", RRType.OPT, b"")
    with pytest.raises(DNSDecodeError, match="outside the additional"):
        decode(_header(an=1) + opt)
    with pytest.raises(DNSDecodeError, match="at most one"):
        decode(_header(ar=2) + opt + opt)
    with pytest.raises(DNSDecodeError, match="not the root"):
        decode(_header(ar=1) + _record(EXAMPLE, RRType.OPT, b""))


def test_empty_update_rdata_and_other_classes_stay_raw() -> None:
    packet = (
        _header(an=3)
        + _record(EXAMPLE, RRType.A, b"", rclass=RRClass.ANY)
        + _record(EXAMPLE, RRType.CNAME, b"", rclass=RRClass.NONE)
        + _record(EXAMPLE, RRType.A, b"\x01\x02", rclass=RRClass.CH)
    )
    answers = decode(packet).answers
    assert [a.data for a in answers] == [
        Unknown(rtype=RRType.A, data=b""),
        Unknown(rtype=RRType.CNAME, data=b""),
        Unknown(rtype=RRType.A, data=b"\x01\x02"),
    ]


# --- fuzzing ------------------------------------------------------------------------

_fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_REAL = [c.wire for c in CASES]


def _decode_or_reject(packet: bytes) -> Message | None:
    try:
        message = decode(packet)
    except DNSDecodeError:
        return None
    # Whatever decode() accepts, encode() must take back, unchanged.
    assert decode(encode(message)) == message
    assert decode(encode(message, compress=False)) == message
    return message


@_fuzz
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(packet: bytes) -> None:
    _decode_or_reject(packet)


@_fuzz
@given(st.binary(min_size=12, max_size=300))
def test_fuzz_random_bytes_with_plausible_counts(tail: bytes) -> None:
    # Random bytes rarely get past the count check; small counts make the sections parse.
    _decode_or_reject(_header(qd=1, an=tail[0] % 4, ns=tail[1] % 2, ar=tail[2] % 3) + tail[3:])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(st.sampled_from(_REAL)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(packet)))
        match draw(st.sampled_from(["set", "xor-bit", "insert", "delete", "pointer"])):
            case "set" if where < len(packet):
                packet[where] = draw(st.integers(0, 255))
            case "xor-bit" if where < len(packet):
                packet[where] ^= 1 << draw(st.integers(0, 7))
            case "insert":
                packet[where:where] = draw(st.binary(min_size=1, max_size=4))
            case "delete":
                del packet[where : where + draw(st.integers(1, 4))]
            case "pointer":
                packet[where : where + 2] = struct.pack(
                    "!H", 0xC000 | draw(st.integers(0, len(packet)))
                )
    return bytes(packet)


@_fuzz
@given(_mutated())
def test_fuzz_mutated_real_packets(packet: bytes) -> None:
    _decode_or_reject(packet)


def _read(buf: bytes, offset: int, cache: NameCache | None) -> tuple[str, int] | str:
    try:
        return read_name(buf, offset, len(buf), cache)
    except DNSDecodeError:
        return "rejected"


@st.composite
def _pointer_soup(draw: st.DrawFn) -> bytes:
    """Labels, root bytes and pointers, with most pointers aimed at the start of an
    earlier token (a label, a pointer, a root byte) so chains and shared suffixes
    are common, and the rest anywhere, including forwards and into label data."""
    soup = bytearray()
    starts: list[int] = []
    for _ in range(draw(st.integers(1, 40))):
        starts.append(len(soup))
        kind = draw(st.sampled_from(["label", "label", "root", "pointer", "pointer", "wild"]))
        if kind == "label":
            label = draw(st.binary(min_size=1, max_size=3))
            soup += bytes([len(label)]) + label
        elif kind == "root":
            soup.append(0)
        elif kind == "pointer":
            soup += struct.pack("!H", 0xC000 | draw(st.sampled_from(starts)))
        else:
            soup += struct.pack("!H", 0xC000 | draw(st.integers(0, 100)))
    return bytes(soup)


@settings(_fuzz, max_examples=150)  # each example reads every offset twice
@given(_mutated() | _pointer_soup())
def test_name_cache_never_changes_a_result(packet: bytes) -> None:
    # The cache is an optimisation only: reading every offset in order with a shared
    # cache must give exactly what independent reads give.
    cache: NameCache = {}
    for offset in range(len(packet)):
        assert _read(packet, offset, cache) == _read(packet, offset, None)
