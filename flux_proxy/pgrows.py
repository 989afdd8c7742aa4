"""Wire-level helpers of the capture rewriter (:mod:`.pgrewrite`), reading messages
without decoding them.

Captured columns are always the last ``count`` of a row, so a DataRow is cut
by walking the lengths of the columns the client keeps; their bytes are copied
once and never decoded.
"""

from __future__ import annotations

import struct

_H = struct.Struct("!h")
_I = struct.Struct("!i")
_UH = struct.Struct("!H")
_UI = struct.Struct("!I")


def cut_data_row(message: bytes | memoryview, count: int) -> tuple[bytes, list[bytes | None]]:
    """(the DataRow with its last ``count`` values removed, those values)."""
    columns = _H.unpack_from(message, 5)[0]
    keep = columns - count
    if keep < 0:
        raise ValueError(f"DataRow has {columns} columns, fewer than the {count} appended")
    pos = 7
    for _ in range(keep):
        size = _I.unpack_from(message, pos)[0]
        pos += 4 + max(size, 0)
    kept_end = pos
    values: list[bytes | None] = []
    for _ in range(count):
        size = _I.unpack_from(message, pos)[0]
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(bytes(message[pos : pos + size]))
            pos += size
    body = message[7:kept_end]
    head = b"D" + _I.pack(4 + 2 + len(body)) + _H.pack(keep)
    return head + bytes(body), values


def cut_row_description(message: bytes | memoryview, count: int) -> bytes:
    """The RowDescription without its last ``count`` fields."""
    fields = _H.unpack_from(message, 5)[0]
    keep = fields - count
    if keep < 0:
        raise ValueError(f"RowDescription has {fields} fields, fewer than the {count} appended")
    pos = 7
    for _ in range(keep):
        pos = message.index(0, pos) if isinstance(message, bytes) else bytes(message).index(0, pos)
        pos += 1 + 18  # the name's NUL, then table OID, column, type, size, modifier, format
    body = message[7:pos]
    return b"T" + _I.pack(4 + 2 + len(body)) + _H.pack(keep) + bytes(body)


def result_formats(body: bytes) -> int:
    """How many result format codes a Bind body carries, read without decoding it."""
    pos = body.index(0, body.index(0) + 1) + 1  # past the portal and statement names
    pos += 2 + 2 * _UH.unpack_from(body, pos)[0]  # the parameter format codes
    params = _UH.unpack_from(body, pos)[0]
    pos += 2
    for _ in range(params):
        size = _UI.unpack_from(body, pos)[0]
        pos += 4 + (size if size < 0x80000000 else 0)  # -1 (NULL) reads as 2**32 - 1 here
    return int(_UH.unpack_from(body, pos)[0])


def message_size(view: bytes, pos: int) -> int:
    """The size of the message starting at ``pos`` (5 while its header is incomplete)."""
    if len(view) - pos < 5:
        return 5
    return 1 + int(_UI.unpack_from(view, pos + 1)[0])


def server_major(session_backend: bytes) -> int:
    """The major version from the ``server_version`` ParameterStatus seen at startup (0 if none)."""
    pos = 0
    while pos + 5 <= len(session_backend):
        end = pos + 1 + _UI.unpack_from(session_backend, pos + 1)[0]
        if session_backend[pos] == 0x53:  # ParameterStatus
            name, _, value = session_backend[pos + 5 : end].partition(b"\0")
            if name == b"server_version":  # "15.4 (Debian ...)", "18beta1", "18.0"
                digits = len(value) - len(value.lstrip(b"0123456789"))
                return int(value[:digits]) if digits else 0
        pos = end
    return 0
