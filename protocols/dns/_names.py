"""Domain names: text form <-> labels <-> wire form, with compression.

Theory of operation for compression pointers (RFC 1035 section 4.1.4).  A name
is read as a series of segments: inline labels, then possibly a pointer to the
next segment.  An honest encoder only points at a name it wrote *earlier and
completely*, so we require every pointer to land strictly before the start of
the segment it was found in, and the labels read there to end before that start
too.  Segment starts therefore strictly decrease, which rules out loops by
construction.  The hop limit caps the walk for one name, and a per-message cache
of what was read from each earlier label (see `read_name`) keeps a message of
many names chaining through the same pointers linear, not quadratic, in size.
"""

from __future__ import annotations

from ._errors import DNSDecodeError, DNSEncodeError

MAX_LABEL = 63
MAX_NAME_WIRE = 255
# A 255-octet name has at most 127 labels, so an honest name never needs more hops.
MAX_POINTER_HOPS = 127
# Pointers carry 14 bits of offset.
MAX_POINTER_OFFSET = 0x3FFF

Labels = tuple[bytes, ...]
CompressionTable = dict[Labels, int]
# Label offset -> (labels from there on, their wire length, end of the inline
# part, pointer hops taken): what an earlier read found; see read_name.
NameCache = dict[int, tuple[Labels, int, int, int]]

_SAFE = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_ESCAPE = tuple(chr(b) if b in _SAFE else f"\\{b:03d}" for b in range(256))


def label_text(label: bytes) -> str:
    # Most labels need no escaping; translate() finds that without a Python loop.
    if not label.translate(None, _SAFE):
        return label.decode("ascii")
    return "".join([_ESCAPE[b] for b in label])


def labels_to_text(labels: Labels) -> str:
    if not labels:
        return "."
    return ".".join([label_text(label) for label in labels]) + "."


def text_to_labels(name: str) -> Labels:
    """Parse the text form (see `_records`); raises DNSEncodeError."""
    if name == ".":
        return ()
    if not name.isascii():
        raise DNSEncodeError(f"name {name!r} has non-ASCII characters; use IDNA or \\DDD escapes")
    if "\\" in name:
        labels = _split_escaped(name)
    else:
        if not name.endswith("."):
            raise DNSEncodeError(f"name {name!r} is not fully qualified (no trailing dot)")
        labels = [part.encode("ascii") for part in name[:-1].split(".")]
    wire_length = 1
    for label in labels:
        if not label:
            raise DNSEncodeError(f"name {name!r} has an empty label")
        if len(label) > MAX_LABEL:
            raise DNSEncodeError(f"name {name!r} has a label longer than {MAX_LABEL} octets")
        wire_length += 1 + len(label)
    if wire_length > MAX_NAME_WIRE:
        raise DNSEncodeError(f"name {name!r} is longer than {MAX_NAME_WIRE} octets")
    return tuple(labels)


def _split_escaped(name: str) -> list[bytes]:
    labels: list[bytes] = []
    current = bytearray()
    i = 0
    end = len(name)
    while i < end:
        char = name[i]
        if char == ".":
            labels.append(bytes(current))
            current.clear()
            i += 1
        elif char != "\\":
            current.append(ord(char))
            i += 1
        elif i + 1 >= end:
            raise DNSEncodeError(f"name {name!r} ends inside an escape")
        elif name[i + 1].isdigit():
            digits = name[i + 1 : i + 4]
            if len(digits) != 3 or not digits.isdigit() or int(digits) > 255:
                raise DNSEncodeError(f"name {name!r} has a bad \\DDD escape")
            current.append(int(digits))
            i += 4
        else:
            current.append(ord(name[i + 1]))
            i += 2
    if current:
        raise DNSEncodeError(f"name {name!r} is not fully qualified (no trailing dot)")
    return labels


def read_name(
    buf: bytes, offset: int, limit: int, cache: NameCache | None = None
) -> tuple[str, int]:
    """Decode the name at `offset`; return it and the offset just past it.

    `limit` bounds the inline part (end of packet, or end of the RDATA that holds
    the name); data reached through pointers is bounded as described above.

    `cache`, shared across one message, remembers what reading from each label
    of an earlier name gave.  A pointer to such a label takes the remembered
    suffix instead of walking the chain again, but only where a fresh walk is
    certain to give the same result: the remembered inline part must end before
    the pointing segment, and the hop and length limits are applied to the
    totals.  (The remembered walk started at or before that label, so its own
    pointer checks were at least as strict as a fresh walk's.)  This makes the
    cost of a message linear in its size instead of names x hop limit.
    """
    labels: list[bytes] = []
    starts: list[int] = []  # offsets of the labels (and pointer) read inline, to cache
    wire_length = 1
    pos = offset
    segment_start = offset
    after = -1  # where the caller resumes: set at the first pointer or the root label
    hops = 0
    while True:
        if pos >= limit:
            raise DNSDecodeError(f"name at offset {offset} runs past the end of its data")
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0:
            if length == 0:
                if after < 0:
                    after = pos + 1
                break
            if pos + 1 + length > limit:
                raise DNSDecodeError(f"label at offset {pos} runs past the end of its data")
            wire_length += 1 + length
            if wire_length > MAX_NAME_WIRE:
                raise DNSDecodeError(f"name at offset {offset} is longer than 255 octets")
            if after < 0:
                starts.append(pos)
            labels.append(buf[pos + 1 : pos + 1 + length])
            pos += 1 + length
        elif kind == 0xC0:
            if pos + 2 > limit:
                raise DNSDecodeError(f"compression pointer at offset {pos} is cut short")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if target >= segment_start:
                raise DNSDecodeError(
                    f"compression pointer at offset {pos} points to {target}, "
                    f"not strictly before {segment_start}"
                )
            hops += 1
            if after < 0:
                starts.append(pos)  # a name that is (or ends in) this pointer reads the same
                after = pos + 2
            limit = segment_start
            known = cache.get(target) if cache is not None else None
            if known is not None and known[2] > limit:
                known = None  # its inline part reaches into the pointing segment: walk afresh
            if known is not None:
                hops += known[3]
                wire_length += known[1] - 1
                labels.extend(known[0])
            if hops > MAX_POINTER_HOPS:
                raise DNSDecodeError(f"name at offset {offset} follows too many pointers")
            if known is not None:
                if wire_length > MAX_NAME_WIRE:
                    raise DNSDecodeError(f"name at offset {offset} is longer than 255 octets")
                break
            segment_start = pos = target
        else:
            # 0x40 (extended, RFC 6891 deprecated it) and 0x80 are not in use.
            raise DNSDecodeError(f"unsupported label type 0x{kind:02x} at offset {pos}")
    result = tuple(labels)
    if cache is not None:
        suffix_length = wire_length
        for index, start in enumerate(starts):
            cache[start] = (result[index:], suffix_length, after, hops)
            if index < len(result):
                suffix_length -= 1 + len(result[index])
    return labels_to_text(result), after


def write_name(out: bytearray, labels: Labels, table: CompressionTable | None) -> None:
    """Append `labels`, reusing earlier suffixes through `table` when given.

    The table is keyed on exact label bytes, not case-folded ones: pointing
    "WWW.Example.com" at an earlier "www.example.com" would lose the case.
    """
    for i in range(len(labels)):
        if table is not None:
            suffix = labels[i:]
            target = table.get(suffix)
            if target is not None:
                out += (0xC000 | target).to_bytes(2, "big")
                return
            if len(out) <= MAX_POINTER_OFFSET:
                table[suffix] = len(out)
        label = labels[i]
        out.append(len(label))
        out += label
    out.append(0)
