"""Display values of binary-format bind parameters, for the common built-in types.

Drivers such as psycopg and asyncpg send many parameters in binary. For
display and diffs we turn the ones whose type is known into plain values;
anything else stays bytes (shown as hex), never guessed at.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any, Final

_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    16: lambda b: b == b"\x01",  # bool
    20: lambda b: struct.unpack("!q", b)[0],  # int8
    21: lambda b: struct.unpack("!h", b)[0],  # int2
    23: lambda b: struct.unpack("!i", b)[0],  # int4
    26: lambda b: struct.unpack("!I", b)[0],  # oid
    700: lambda b: struct.unpack("!f", b)[0],  # float4
    701: lambda b: struct.unpack("!d", b)[0],  # float8
    25: bytes.decode,  # text
    1043: bytes.decode,  # varchar
    1042: bytes.decode,  # bpchar
    19: bytes.decode,  # name
    114: bytes.decode,  # json
    3802: lambda b: b[1:].decode() if b[:1] == b"\x01" else b,  # jsonb, version 1
    2950: lambda b: str(uuid.UUID(bytes=b)),  # uuid
}


def display_binary(value: bytes, type_oid: int) -> Any:
    decoder = _DECODERS.get(type_oid)
    if decoder is None:
        return value
    try:
        return decoder(value)
    except (struct.error, ValueError, UnicodeDecodeError):
        return value
