"""Field-level reading and writing of message bodies.

``BodyReader`` walks one complete body and turns every shortfall into a
RemoteProtocolError naming the message, so callers never see struct.error or
IndexError. ``BodyWriter`` reserves the length word, appends the body, then
fills the length in place (asyncpg's WriteBuffer trick: one buffer, no
second pass to measure).
"""

from __future__ import annotations

import struct
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages_startup import MAX_SECRET_KEY_LENGTH, MIN_SECRET_KEY_LENGTH

_UINT8 = struct.Struct("!B")
_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")

ENCODING: Final = "utf-8"
# surrogateescape makes bytes -> str -> bytes lossless for any byte string,
# so a non-UTF-8 client_encoding never turns into a decode error.
ERRORS: Final = "surrogateescape"

MAX_UINT16: Final = 0xFFFF


def describe_type(type_byte: int) -> str:
    """A type byte for error messages: 'Q' when printable, else 0x00."""
    if 0x21 <= type_byte <= 0x7E:
        return repr(chr(type_byte))
    return f"0x{type_byte:02x}"


class BodyReader:
    """A cursor over one message body; ``what`` names the message in error texts."""

    __slots__ = ("_body", "_pos", "what")

    def __init__(self, body: bytes, what: str, pos: int = 0) -> None:
        self._body = body
        self._pos = pos
        self.what = what

    def error(self, problem: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed {self.what}: {problem}")

    @property
    def remaining(self) -> int:
        return len(self._body) - self._pos

    def _unpack(self, fmt: struct.Struct, name: str) -> int:
        try:
            value: int = fmt.unpack_from(self._body, self._pos)[0]
        except struct.error:
            raise self.error(f"body ends inside {name}") from None
        self._pos += fmt.size
        return value

    def int16(self, name: str) -> int:
        return self._unpack(_INT16, name)

    def uint16(self, name: str) -> int:
        # Counts are read unsigned, as the server and libpq do (up to 65535).
        return self._unpack(_UINT16, name)

    def int32(self, name: str) -> int:
        return self._unpack(_INT32, name)

    def uint32(self, name: str) -> int:
        # OIDs are unsigned 32-bit; reading them signed would break on OIDs >= 2**31.
        return self._unpack(_UINT32, name)

    def unpack(self, fmt: struct.Struct, name: str) -> tuple[int, ...]:
        """Several fixed-width fields at once (one struct call instead of one per field)."""
        try:
            values: tuple[int, ...] = fmt.unpack_from(self._body, self._pos)
        except struct.error:
            raise self.error(f"body ends inside {name}") from None
        self._pos += fmt.size
        return values

    def byte(self, name: str) -> int:
        if self._pos >= len(self._body):
            raise self.error(f"body ends before {name}")
        value = self._body[self._pos]
        self._pos += 1
        return value

    def take(self, size: int, name: str) -> bytes:
        # Checked before slicing: a short slice would silently hide truncation.
        if size < 0 or size > len(self._body) - self._pos:
            raise self.error(f"{name} of {size} bytes but {self.remaining} left")
        start = self._pos
        self._pos = start + size
        return self._body[start : self._pos]

    def rest(self) -> bytes:
        start = self._pos
        self._pos = len(self._body)
        return self._body[start:] if start else self._body

    def cbytes(self, name: str) -> bytes:
        """A NUL-terminated string as raw bytes (terminator consumed, not returned)."""
        end = self._body.find(b"\x00", self._pos)
        if end < 0:
            raise self.error(f"{name} is missing its NUL terminator")
        start = self._pos
        self._pos = end + 1
        return self._body[start:end]

    def cstring(self, name: str) -> str:
        return self.cbytes(name).decode(ENCODING, ERRORS)

    def nullable(self, name: str) -> bytes | None:
        """Int32 length then that many bytes; length -1 means NULL."""
        size = self._unpack(_INT32, name)
        if size == -1:
            return None
        return self.take(size, name)

    def int16_array(self, count: int, name: str) -> tuple[int, ...]:
        if count * 2 > self.remaining:
            raise self.error(f"{count} {name} need {count * 2} bytes but {self.remaining} left")
        values = struct.unpack_from(f"!{count}h", self._body, self._pos)
        self._pos += count * 2
        return values

    def uint32_array(self, count: int, name: str) -> tuple[int, ...]:
        if count * 4 > self.remaining:
            raise self.error(f"{count} {name} need {count * 4} bytes but {self.remaining} left")
        values = struct.unpack_from(f"!{count}I", self._body, self._pos)
        self._pos += count * 4
        return values

    def end(self) -> None:
        # The server and libpq both reject trailing bytes; so do we.
        if self._pos != len(self._body):
            raise self.error(f"{self.remaining} unexpected trailing bytes")


class BodyWriter:
    """Builds one message: type byte (None for startup packets), length, body."""

    __slots__ = ("_buf", "_length_at", "what")

    def __init__(self, type_byte: int | None, what: str) -> None:
        if type_byte is None:
            self._buf = bytearray(4)
            self._length_at = 0
        else:
            self._buf = bytearray((type_byte, 0, 0, 0, 0))
            self._length_at = 1
        self.what = what

    def error(self, problem: str) -> LocalProtocolError:
        return LocalProtocolError(f"cannot encode {self.what}: {problem}")

    def _pack(self, fmt: struct.Struct, value: int, name: str) -> None:
        try:
            self._buf += fmt.pack(value)
        except struct.error:
            raise self.error(f"{name} {value!r} does not fit the wire format") from None

    def uint8(self, value: int, name: str) -> None:
        self._pack(_UINT8, value, name)

    def int16(self, value: int, name: str) -> None:
        self._pack(_INT16, value, name)

    def int32(self, value: int, name: str) -> None:
        self._pack(_INT32, value, name)

    def uint32(self, value: int, name: str) -> None:
        self._pack(_UINT32, value, name)

    def count(self, items: tuple[object, ...], name: str) -> None:
        if len(items) > MAX_UINT16:
            raise self.error(f"{len(items)} {name}, at most {MAX_UINT16} fit")
        self._buf += _UINT16.pack(len(items))

    def byte(self, value: str, name: str) -> None:
        try:
            raw = value.encode(ENCODING, ERRORS)
        except (UnicodeEncodeError, AttributeError):
            raw = b""
        if len(raw) != 1 or raw == b"\x00":
            raise self.error(f"{name} must be one non-NUL byte, got {value!r}")
        self._buf += raw

    def _check_bytes(self, data: object, name: str) -> None:
        if not isinstance(data, bytes | bytearray):
            raise self.error(f"{name} must be bytes, got {type(data).__name__}")

    def raw(self, data: bytes, name: str) -> None:
        self._check_bytes(data, name)
        self._buf += data

    def cbytes(self, data: bytes, name: str) -> None:
        self._check_bytes(data, name)
        if b"\x00" in data:
            raise self.error(f"{name} contains a NUL byte")
        self._buf += data
        self._buf.append(0)

    def cstring(self, value: str, name: str) -> None:
        try:
            data = value.encode(ENCODING, ERRORS)
        except (UnicodeEncodeError, AttributeError):
            raise self.error(f"{name} {value!r} is not an encodable str") from None
        self.cbytes(data, name)

    def nullable(self, value: bytes | None, name: str) -> None:
        if value is None:
            self._buf += _INT32.pack(-1)
        else:
            self._check_bytes(value, name)
            self.int32(len(value), name)
            self._buf += value

    def int16_array(self, values: tuple[int, ...], name: str) -> None:
        """Int16 count, then each value as Int16 (format code lists)."""
        self.count(values, name)
        for value in values:
            self.int16(value, name)

    def nullables(self, values: tuple[bytes | None, ...], name: str) -> None:
        """Int16 count, then each value as Int32 length (-1 = NULL) and bytes."""
        self.count(values, name)
        for value in values:
            self.nullable(value, name)

    def secret_key(self, key: bytes) -> None:
        if not isinstance(key, bytes) or not (
            MIN_SECRET_KEY_LENGTH <= len(key) <= MAX_SECRET_KEY_LENGTH
        ):
            raise self.error(
                f"secret key must be {MIN_SECRET_KEY_LENGTH} to {MAX_SECRET_KEY_LENGTH} bytes"
            )
        self._buf += key

    def terminator(self) -> None:
        self._buf.append(0)

    def finish(self) -> bytes:
        length = len(self._buf) - self._length_at
        try:
            _INT32.pack_into(self._buf, self._length_at, length)
        except struct.error:
            raise self.error(f"{length} bytes exceed the 2 GB the length word can say") from None
        return bytes(self._buf)
