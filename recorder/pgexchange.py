"""A recorded cycle as exchanges: each frontend message with the backend messages it caused.

Replay answers message by message, so it needs to know which backend
messages belong to which frontend message. PostgreSQL answers in order:
Parse → ParseComplete, Bind → BindComplete, Describe statement →
ParameterDescription then RowDescription or NoData, Describe portal →
RowDescription or NoData, Execute → rows, then CommandComplete,
PortalSuspended, EmptyQueryResponse or ErrorResponse, Close → CloseComplete,
Sync and Query → everything up to ReadyForQuery. After an ErrorResponse in
the extended protocol the backend skips messages until Sync. NoticeResponse,
ParameterStatus and NotificationResponse may come at any point and belong to
the message being answered.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from protocols import pgwire

_ASYNC = frozenset(b"NSA")
_ERROR = ord("E")
# What ends the answer to an Execute (copy-out traffic and rows come before it).
_EXECUTE_END = frozenset(b"CsIE")
_EXPECT: dict[type[Any], bytes] = {
    pgwire.Parse: b"1",
    pgwire.Bind: b"2",
    pgwire.Close: b"3",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    request: Any  # a decoded frontend message
    response: tuple[bytes, ...]  # whole backend messages, as recorded

    @property
    def failed(self) -> bool:
        return any(m[0] == _ERROR for m in self.response)


def split_messages(data: bytes) -> list[bytes]:
    """Whole messages; a truncated tail (a recording cut at its cap) is left out."""
    out: list[bytes] = []
    pos, size = 0, len(data)
    while pos + 5 <= size:
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if end > size or end < pos + 5:
            break
        out.append(data[pos:end])
        pos = end
    return out


class _Backend:
    def __init__(self, data: bytes) -> None:
        self.pending = deque(split_messages(data))

    def take_async(self, into: list[bytes]) -> None:
        while self.pending and self.pending[0][0] in _ASYNC:
            into.append(self.pending.popleft())

    def take_one(self, into: list[bytes], allowed: bytes) -> bool:
        """Takes the next message if its type is allowed (or it is an error)."""
        self.take_async(into)
        if self.pending and (self.pending[0][0] in allowed or self.pending[0][0] == _ERROR):
            into.append(self.pending.popleft())
            return True
        return False

    def take_until(self, into: list[bytes], ends: frozenset[int]) -> None:
        while self.pending:
            message = self.pending.popleft()
            into.append(message)
            if message[0] in ends:
                return


def split_exchanges(frontend: bytes, backend: bytes) -> list[Exchange]:
    """Pairs a cycle's frontend messages with their answers, in order.

    A message the backend skipped (after an error, before Sync) gets an
    empty response; messages that cannot be paired (a recording cut short)
    end the list.
    """
    answers = _Backend(backend)
    exchanges: list[Exchange] = []
    skipping = False
    for raw in split_messages(frontend):
        try:
            request = pgwire.decode_frontend(raw[0], raw[5:])
        except pgwire.RemoteProtocolError:
            break
        taken: list[bytes] = []
        match request:
            case pgwire.Sync() | pgwire.Query() | pgwire.FunctionCall():
                answers.take_until(taken, frozenset(b"Z"))
                skipping = False
            case pgwire.Flush() | pgwire.Terminate() | pgwire.CopyData() | pgwire.CopyDone():
                pass
            case _ if skipping:
                pass
            case pgwire.Parse() | pgwire.Bind() | pgwire.Close():
                answers.take_one(taken, _EXPECT[type(request)])
            case pgwire.Describe(kind="S"):
                if answers.take_one(taken, b"t") and taken[-1][0] != _ERROR:
                    answers.take_one(taken, b"Tn")
            case pgwire.Describe():
                answers.take_one(taken, b"Tn")
            case pgwire.Execute():
                answers.take_async(taken)
                answers.take_until(taken, _EXECUTE_END)
            case _:
                pass
        exchanges.append(Exchange(request=request, response=tuple(taken)))
        if taken and taken[-1][0] == _ERROR and not isinstance(request, pgwire.Query):
            skipping = True
    return exchanges
