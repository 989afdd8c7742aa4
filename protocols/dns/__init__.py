"""A sans-I/O DNS message codec (RFC 1035, with RFC 3597 unknown types and EDNS0).

Bytes in, `Message` out (`decode`); `Message` in, bytes out (`encode`).  No
sockets, no asyncio, stdlib only.  Module map, one concern each:

- `_records`: the frozen dataclasses (and the text convention for names)
- `_errors`: DNSDecodeError (the peer's garbage) and DNSEncodeError (our misuse)
- `_constants`: type/class/opcode/rcode numbers and display names
- `_names`: name text form, wire form and compression pointers
- `_rdata`: per-type RDATA decoders and writers
- `_decode` / `_encode`: whole messages
- `_helpers`: raw-packet helpers for replay (ids, TC flag, SERVFAIL)
- `_text`: display forms (`rdata_text`, `summary`)

Names are text, fully qualified with a trailing dot ("example.com.", root is
"."), case preserved, with `\\DDD` escapes for bytes that are not printable
ASCII and for "." or "\\" inside a label.
"""

from ._constants import (
    Opcode,
    Rcode,
    RRClass,
    RRType,
    class_name,
    opcode_name,
    rcode_name,
    type_name,
)
from ._decode import decode
from ._encode import encode
from ._errors import DNSDecodeError, DNSEncodeError
from ._helpers import is_truncated, peek_id, question_key, servfail, with_id
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
    Header,
    Message,
    Question,
    RData,
    ResourceRecord,
    Unknown,
)
from ._text import EDNSSummary, Summary, rdata_text, summary

__all__ = [
    "AAAA",
    "CNAME",
    "MX",
    "NS",
    "OPT",
    "PTR",
    "SOA",
    "SRV",
    "TXT",
    "A",
    "DNSDecodeError",
    "DNSEncodeError",
    "EDNSSummary",
    "Header",
    "Message",
    "Opcode",
    "Question",
    "RData",
    "RRClass",
    "RRType",
    "Rcode",
    "ResourceRecord",
    "Summary",
    "Unknown",
    "class_name",
    "decode",
    "edns_options",
    "encode",
    "is_truncated",
    "opcode_name",
    "peek_id",
    "question_key",
    "rcode_name",
    "rdata_text",
    "servfail",
    "summary",
    "type_name",
    "with_id",
]
