"""Splitting a byte stream into messages (h11's receive buffer, for PostgreSQL).

Theory of operation: bytes accumulate in one bytearray with a read offset.
A message header (5 bytes; 4 for an untyped startup packet) is parsed once,
its length checked against the cap, and the body's end offset remembered;
later calls only compare that offset with the buffer size, so no byte is
examined twice and nothing is allocated for a body before its length passed
the check. Consumed bytes are dropped in bulk once they are most of the
buffer, which keeps compaction amortised O(1) per byte.

A body that later fails to decode is still consumed: framing depends only on
the length word, so one bad message never desynchronises the stream. A bad
length word does, as does EOF inside a message: after either, the reader
fails for good (``failed``).
"""

from __future__ import annotations

import struct
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages_startup import STARTUP_MAX_LENGTH
from ._wire import describe_type

MAX_MESSAGE_LENGTH: Final = 1 << 30  # PostgreSQL caps a message near 1 GB too

_unpack_int32 = struct.Struct("!i").unpack_from
_COMPACT_AT: Final = 1 << 16  # don't bother moving fewer consumed bytes than this
_VIEW_FROM: Final = 1 << 12  # below this, a plain slice beats setting up a memoryview


class MessageReader:
    """Turns received bytes into ``(type_byte, body)`` pairs.

    With ``startup=True`` the first packet is untyped and is returned as
    ``(0, whole_packet)`` (length word included, ready for ``decode_startup``);
    after it the reader expects typed messages. ``expect_startup()`` asks for
    one more untyped packet, as after an SSLRequest answered with 'N'.
    """

    __slots__ = (
        "_body_at",
        "_buf",
        "_eof",
        "_failed",
        "_max",
        "_need",
        "_pos",
        "_startup",
        "_type",
    )

    def __init__(
        self, *, max_message_length: int = MAX_MESSAGE_LENGTH, startup: bool = False
    ) -> None:
        if max_message_length < 4:
            raise LocalProtocolError("max_message_length must be at least 4")
        self._max = max_message_length
        self._startup = startup
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._need = -1  # body length of the parsed header, -1 when no header is parsed
        self._body_at = 0  # where that body starts in _buf
        self._type = 0
        self._eof = False
        self._failed: str | None = None  # why framing is lost for good, if it is

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned (e.g. must be 0 before a TLS handshake)."""
        return len(self._buf) - self._pos

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def failed(self) -> bool:
        """True after a bad length word or EOF mid-message: no message will follow."""
        return self._failed is not None

    @property
    def expecting_startup(self) -> bool:
        """True when the next packet returned will be an untyped startup packet."""
        return self._startup

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed the connection."""
        if self._eof:
            if data:
                raise LocalProtocolError("received data after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def expect_startup(self) -> None:
        """Treat the next packet as untyped (StartupMessage after SSLRequest + 'N')."""
        if self._need >= 0:
            raise LocalProtocolError("expect_startup() while a typed message is half received")
        self._startup = True

    def _fail(self, problem: str) -> RemoteProtocolError:
        self._failed = problem
        return RemoteProtocolError(problem)

    def _incomplete(self) -> None:
        if self._eof and len(self._buf) > self._pos:
            raise self._fail("connection closed mid-message")

    def _parse_header(self) -> bool:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if self._startup:
            if available < 4:
                return False
            length = _unpack_int32(buf, pos)[0]
            # At least the length word and a version/request code.
            if length < 8 or length > min(STARTUP_MAX_LENGTH, self._max):
                raise self._fail(f"invalid length of startup packet: {length}")
            self._type = 0
            self._body_at = pos  # a startup packet is returned whole
            self._need = length
            return True
        if available < 5:
            return False
        type_byte = buf[pos]
        length = _unpack_int32(buf, pos + 1)[0]
        if length < 4:
            raise self._fail(f"message {describe_type(type_byte)} declares invalid length {length}")
        if length > self._max:
            raise self._fail(
                f"message {describe_type(type_byte)} of {length} bytes "
                f"exceeds the limit of {self._max}"
            )
        self._type = type_byte
        self._body_at = pos + 5
        self._need = length - 4
        return True

    def next_message(self) -> tuple[int, bytes] | None:
        """The next complete message as ``(type_byte, body)``, or None if more bytes are needed.

        Raises RemoteProtocolError for a bad length word (from then on, always)
        or when EOF arrived in the middle of a message.
        """
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        if self._need < 0 and not self._parse_header():
            self._incomplete()
            return None
        start = self._body_at
        end = start + self._need
        buf = self._buf
        if len(buf) < end:
            self._incomplete()
            return None
        if self._need < _VIEW_FROM:
            body = bytes(buf[start:end])
        else:
            # One copy instead of two (bytearray slice, then bytes) for big bodies.
            with memoryview(buf) as view, view[start:end] as part:
                body = part.tobytes()
        type_byte = self._type
        self._need = -1
        self._startup = False
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end >= _COMPACT_AT and end * 2 >= len(buf):
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return type_byte, body
