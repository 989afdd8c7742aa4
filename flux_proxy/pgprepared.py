"""The prepared statements a client made in a live session, for handing it over to replay.

Drivers keep their prepared statements for the life of a connection (asyncpg's
statement cache, psycopg's automatic preparation) and Bind to them long after
the Parse. When a recording session is taken over by the replay server, those
names must still resolve, so the proxy follows Parse and Close on the
client-to-server path. It sits on the data path of every client read, so it
copies only Parse and Close messages, and a read that contains neither type
byte and ends on a message boundary is dismissed without walking its headers.
"""

from __future__ import annotations

from struct import Struct

from protocols import pgwire

_unpack_length = Struct("!I").unpack_from
_PARSE = 0x50  # "P"
_CLOSE = 0x43  # "C"

Statements = dict[str, tuple[str, tuple[int, ...]]]  # name -> (SQL, parameter type OIDs)


class PreparedStatements:
    """Fed the client's bytes as they arrive; ``statements`` is what the client prepared."""

    __slots__ = ("_held", "_need", "_parsed", "_skip")

    def __init__(self) -> None:
        self._parsed: dict[bytes, bytes] = {}  # name -> the Parse message's body
        self._skip = 0  # bytes left of a message that is neither Parse nor Close
        self._held = bytearray()  # a Parse or Close (or a header) split across reads
        self._need = 0  # total size of the held message once its header is known

    def frontend(self, data: bytes, splitter: pgwire.CycleSplitter) -> None:
        """Called after ``splitter`` (the proxy's header scan) was fed ``data``: when it ends
        on a message boundary and holds no Parse or Close type byte, nothing in it matters."""
        if (
            not self._skip
            and not self._held
            and _PARSE not in data
            and _CLOSE not in data
            and splitter.at_frontend_boundary
        ):
            return
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        if self._skip:
            if self._skip >= size:
                self._skip -= size
                return
            pos, self._skip = self._skip, 0
        if self._held:
            pos = self._fill(data, pos)
            if self._held:
                return
        while pos < size:
            if size - pos < 5:
                self._held += data[pos:]
                return
            type_byte = data[pos]
            end = pos + 1 + _unpack_length(data, pos + 1)[0]
            if type_byte != _PARSE and type_byte != _CLOSE:
                if end > size:
                    self._skip = end - size
                    return
            elif end > size:
                self._held += data[pos:]
                self._need = end - pos
                return
            else:
                self._message(type_byte, data[pos + 5 : end])
            pos = end

    def _fill(self, data: bytes, pos: int) -> int:
        """Completes the held header or message from ``data``; returns where it stopped."""
        held = self._held
        if len(held) < 5:
            take = 5 - len(held)
            held += data[pos : pos + take]
            pos += take
            if len(held) < 5:
                return pos
            type_byte = held[0]
            total = 1 + _unpack_length(held, 1)[0]
            if type_byte != _PARSE and type_byte != _CLOSE:
                held.clear()
                self._skip = total - 5
                if self._skip > len(data) - pos:
                    self._skip -= len(data) - pos
                    return len(data)
                pos, self._skip = pos + self._skip, 0
                return pos
            self._need = total
        take = self._need - len(held)
        held += data[pos : pos + take]
        pos = min(pos + take, len(data))
        if len(held) == self._need:
            self._message(held[0], bytes(held[5:]))
            held.clear()
        return pos

    def _message(self, type_byte: int, body: bytes) -> None:
        # Only the name is read here; the rest of a Parse is decoded if the session is ever
        # handed over (extended-protocol clients send a Parse with nearly every query).
        if type_byte == _PARSE:
            end = body.find(0)
            if end >= 0:
                self._parsed[body[:end]] = body
        elif body[:1] == b"S":
            self._parsed.pop(body[1:-1], None)

    @property
    def statements(self) -> Statements:
        """name -> (SQL, parameter type OIDs) of every statement prepared and not closed."""
        out: Statements = {}
        for name, body in self._parsed.items():
            try:
                message = pgwire.decode_frontend(_PARSE, body)
            except pgwire.RemoteProtocolError:
                continue  # the server rejected it too: nothing was prepared
            assert isinstance(message, pgwire.Parse)
            out[name.decode("utf-8", "surrogateescape")] = (
                message.query,
                tuple(message.param_types),
            )
        return out
