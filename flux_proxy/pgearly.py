"""Client bytes that arrive before the session is established, sans-I/O.

A client may send its first requests without waiting for the session's first
ReadyForQuery: in the same write as its last authentication message, or (with
no authentication asked) right after its StartupMessage. Forwarded as they
came, they would reach the server before anything the sidecar sends at that
first idle point (its catalog preload, :mod:`recorder.mutation.preload`), and
the answers of the two would be told apart by nobody: the client would get the
preload's rows and the preload the client's. Nor would the request tap or the
rewriter see them. So during authentication only the client's answers to the
server's challenges go on at once (PasswordMessage, SASLInitialResponse,
SASLResponse, GSSResponse: all of type ``p``); from the first message of any
other type, everything the client sends waits for the session's first
ReadyForQuery, and is then handled as if it had arrived just after it.
"""

from __future__ import annotations

import struct
from typing import Final

_I = struct.Struct("!I")
_P: Final = 0x70  # every frontend message of the authentication exchange
_R: Final = 0x52
# AuthenticationCleartextPassword, MD5Password, GSS, SSPI, SASL, SASLContinue: the server
# waits for the client's answer.
_ASKS: Final = frozenset({3, 5, 7, 9, 10, 11})


class EarlyBytes:
    __slots__ = ("_partial", "held", "raw")

    def __init__(self) -> None:
        self._partial = bytearray()  # an authentication message not yet whole
        self.held = bytearray()  # from the first message that is not authentication on
        # The server asked for an answer the client had sent something else instead of:
        # what it sent goes on as it came, and the server says what it says to that.
        self.raw = False

    def client(self, data: bytes) -> bytes:
        """Client bytes during authentication: what goes upstream now."""
        if self.raw:
            return data
        if self.held:
            self.held += data
            return b""
        buf = bytes(self._partial) + data if self._partial else data
        self._partial.clear()
        size = len(buf)
        pos = 0
        while pos < size:
            if buf[pos] != _P:
                self.held += buf[pos:]
                return buf[:pos]
            if size - pos < 5:
                break
            end = pos + 1 + _I.unpack_from(buf, pos + 1)[0]
            if end > size:
                break
            pos = end
        self._partial += buf[pos:]
        return buf[:pos]

    def server(self, messages: bytes) -> bytes:
        """Whole backend messages of the authentication exchange, as relayed to the client;
        returns held bytes that must go upstream now (see :attr:`raw`)."""
        if not self.held or self.raw:
            return b""
        pos = 0
        while len(messages) - pos >= 9:
            if messages[pos] == _R and _I.unpack_from(messages, pos + 5)[0] in _ASKS:
                self.raw = True
                return self.take()
            pos += 1 + _I.unpack_from(messages, pos + 1)[0]
        return b""

    def take(self) -> bytes:
        """Everything held, to be handled as the session's first requests."""
        data = bytes(self.held) + bytes(self._partial)
        self.held.clear()
        self._partial.clear()
        return data
