"""Header-only framing for the proxy's hot path.

The proxy forwards bytes exactly as they arrive; it only needs to know where
each message ends and what its type byte is (to find ReadyForQuery, Sync,
CopyInResponse...). ``MessageScanner`` walks the five-byte headers across
chunk boundaries and skips bodies without copying or buffering them, so a
16 MB DataRow costs the same as a tiny one. Full decoding happens later, off
the forwarding path, with :class:`MessageReader`.
"""

from __future__ import annotations

from struct import Struct

from ._errors import RemoteProtocolError

_LENGTH = Struct("!I")
_unpack_length = _LENGTH.unpack_from

DEFAULT_MAX_MESSAGE_LENGTH = 1 << 30  # PostgreSQL's own limit for a field is 1 GB


class MessageScanner:
    """Finds message boundaries in a stream of typed messages.

    ``feed(chunk)`` returns ``(type_byte, end)`` for every message that
    completes inside ``chunk``, where ``end`` is the offset just past the
    message within that chunk. A message may have started in an earlier
    chunk. The caller slices the chunk itself if it needs the bytes.
    """

    __slots__ = ("_header", "_max", "_remaining", "_type")

    def __init__(self, *, max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        self._max = max_message_length
        self._remaining = 0  # body bytes still to skip of the message in progress
        self._type = 0
        self._header = b""  # a header split across chunks (fewer than 5 bytes)

    @property
    def at_boundary(self) -> bool:
        """True when no message is partially received."""
        return not self._remaining and not self._header

    def _check(self, type_byte: int, length: int) -> None:
        if length < 4:
            raise RemoteProtocolError(
                f"message {chr(type_byte)!r} declares invalid length {length}"
            )
        if length > self._max:
            raise RemoteProtocolError(
                f"message {chr(type_byte)!r} of {length} bytes exceeds the limit of {self._max}"
            )

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        ends: list[tuple[int, int]] = []
        size = len(data)
        pos = 0
        if self._remaining:
            if self._remaining > size:
                self._remaining -= size
                return ends
            pos = self._remaining
            self._remaining = 0
            ends.append((self._type, pos))
        if self._header:
            take = 5 - len(self._header)
            header = self._header + data[pos : pos + take]
            if len(header) < 5:
                self._header = header
                return ends
            pos += take
            self._header = b""
            type_byte = header[0]
            length = _unpack_length(header, 1)[0]
            self._check(type_byte, length)
            end = pos + length - 4
            if end > size:
                self._remaining = end - size
                self._type = type_byte
                return ends
            ends.append((type_byte, end))
            pos = end
        check = self._check
        max_length = self._max
        while pos + 5 <= size:
            type_byte = data[pos]
            length = _unpack_length(data, pos + 1)[0]
            if length < 4 or length > max_length:
                check(type_byte, length)
            end = pos + 1 + length
            if end > size:
                self._remaining = end - size
                self._type = type_byte
                return ends
            ends.append((type_byte, end))
            pos = end
        if pos < size:
            self._header = bytes(data[pos:])
        return ends
