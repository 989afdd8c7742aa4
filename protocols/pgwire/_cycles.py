"""Splitting a proxied session into protocol cycles.

A cycle is what the backend answers with one ReadyForQuery: the frontend
messages from the first one after the previous ReadyForQuery up to and
including the Sync (or the one simple Query, or FunctionCall), and the backend
messages up to and including that ReadyForQuery.

Theory of operation: frontend messages are queued as they arrive; each
ReadyForQuery from the backend closes one cycle and takes from the queue the
messages the backend consumed to produce it. Counting sync points is exact
except around COPY FROM STDIN, where the backend ignores Sync and Flush while
in copy-in mode and the copy ends with CopyDone or CopyFail. So for a cycle
in which the backend sent k CopyInResponse messages, everything up to the
k-th CopyDone/CopyFail belongs to the cycle, and then, for the extended
protocol, up to the next Sync. If the backend aborts a simple-protocol copy
with an error, the client's CopyData that arrives afterwards is discarded by
the backend, and by us.

The splitter only copies bytes when ``keep_bytes`` is set (record mode); in
passthrough it still tracks boundaries so the proxy knows its idle points.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._scanner import DEFAULT_MAX_MESSAGE_LENGTH, MessageScanner

_QUERY = ord("Q")
_SYNC = ord("S")
_FUNCTION_CALL = ord("F")
_COPY_DATA = ord("d")
_COPY_DONE = ord("c")
_COPY_FAIL = ord("f")
_COPY_IN_RESPONSE = ord("G")
_READY_FOR_QUERY = ord("Z")
_TERMINATE = ord("X")

SYNC_POINTS = frozenset({_QUERY, _SYNC, _FUNCTION_CALL})
DEFAULT_MAX_CYCLE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RawCycle:
    """One protocol cycle as it crossed the proxy."""

    frontend: bytes
    backend: bytes
    start_ns: int  # arrival of the cycle's first frontend message
    end_ns: int  # arrival of its ReadyForQuery (or of the end of the connection)
    status: str  # ReadyForQuery transaction status: "I", "T", "E"; "" when incomplete
    truncated: bool  # bytes beyond the per-cycle cap were not kept
    complete: bool  # False when the connection ended before ReadyForQuery


class CycleSplitter:
    """Fed both directions of a session (after authentication), yields RawCycles."""

    __slots__ = (
        "_backend",
        "_backend_scanner",
        "_backend_start_ns",
        "_backend_truncated",
        "_copy_ins",
        "_discard_copy",
        "_frontend_partial",
        "_frontend_partial_truncated",
        "_frontend_scanner",
        "_max_bytes",
        "_pending",
        "_pending_bytes",
        "keep_bytes",
        "status",
    )

    def __init__(
        self,
        *,
        keep_bytes: bool = True,
        max_cycle_bytes: int = DEFAULT_MAX_CYCLE_BYTES,
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
    ) -> None:
        self.keep_bytes = keep_bytes
        self.status = "I"
        self._max_bytes = max_cycle_bytes
        self._frontend_scanner = MessageScanner(max_message_length=max_message_length)
        self._backend_scanner = MessageScanner(max_message_length=max_message_length)
        # (type byte, message bytes or b"" when not kept, arrival time, truncated)
        self._pending: deque[tuple[int, bytes, int, bool]] = deque()
        self._frontend_partial = bytearray()
        self._frontend_partial_truncated = False
        self._pending_bytes = 0  # message bytes kept in _pending, bounded by the cycle cap
        self._backend = bytearray()
        self._backend_start_ns = 0
        self._backend_truncated = False
        self._copy_ins = 0
        self._discard_copy = False

    @property
    def idle(self) -> bool:
        """No request outstanding, nothing half-received, and no open transaction."""
        return (
            self.status == "I"
            and not self._pending
            and self._frontend_scanner.at_boundary
            and self._backend_scanner.at_boundary
        )

    @property
    def at_frontend_boundary(self) -> bool:
        """No frontend message is half-received (a message of our own may be sent now)."""
        return self._frontend_scanner.at_boundary

    @property
    def awaiting_backend(self) -> bool:
        """Some frontend message has not been answered by a ReadyForQuery yet."""
        return bool(self._pending) or not self._frontend_scanner.at_boundary

    def frontend(self, data: bytes, now_ns: int) -> None:
        ends = self._frontend_scanner.feed(data)
        keep = self.keep_bytes
        pos = 0
        for type_byte, end in ends:
            if type_byte == _TERMINATE:
                # Never answered by a ReadyForQuery: queued, it would look like a request
                # still in progress when the session ends.
                self._frontend_partial.clear()
                pos = end
                continue
            if self._discard_copy and not self._pending:
                if type_byte in (_COPY_DATA, _COPY_DONE, _COPY_FAIL):
                    if type_byte != _COPY_DATA:
                        self._discard_copy = False
                    self._frontend_partial.clear()
                    pos = end
                    continue
                self._discard_copy = False
            truncated = False
            if not keep:
                message = b""
            elif self._frontend_partial:
                self._append_partial(data, pos, end)
                message = bytes(self._frontend_partial)
                truncated = self._frontend_partial_truncated
                self._frontend_partial.clear()
                self._frontend_partial_truncated = False
            else:
                message = data[pos:end]
                if len(message) > self._max_bytes:
                    message, truncated = message[: self._max_bytes], True
            if message and self._pending_bytes + len(message) > self._max_bytes:
                # A COPY FROM STDIN can send gigabytes in one cycle: keep its boundaries, not
                # its bytes, beyond the cap.
                message, truncated = b"", True
            self._pending_bytes += len(message)
            self._pending.append((type_byte, message, now_ns, truncated))
            pos = end
        if keep and pos < len(data):
            self._append_partial(data, pos, len(data))

    def _append_partial(self, data: bytes, start: int, end: int) -> None:
        room = self._max_bytes - len(self._frontend_partial)
        if end - start > room:
            end = start + max(room, 0)
            self._frontend_partial_truncated = True
        self._frontend_partial += data[start:end]

    def backend(self, data: bytes, now_ns: int) -> list[RawCycle]:
        ends = self._backend_scanner.feed(data)
        cycles: list[RawCycle] = []
        keep = self.keep_bytes
        if keep and not self._backend:
            self._backend_start_ns = now_ns
        start = 0
        for type_byte, end in ends:
            if type_byte == _COPY_IN_RESPONSE:
                self._copy_ins += 1
            elif type_byte == _READY_FOR_QUERY:
                self.status = chr(data[end - 1])
                if keep:
                    self._append_backend(data, start, end)
                    cycles.append(self._close_cycle(now_ns, complete=True))
                else:  # passthrough: only the idle tracking matters
                    self._take_frontend()
                start = end
        if keep and start < len(data):
            if not self._backend:
                self._backend_start_ns = now_ns
            self._append_backend(data, start, len(data))
        return cycles

    def _append_backend(self, data: bytes, start: int, end: int) -> None:
        room = self._max_bytes - len(self._backend)
        if end - start > room:
            end = start + max(room, 0)
            self._backend_truncated = True
        self._backend += data[start:end]

    def _take_frontend(self) -> tuple[list[bytes], int | None, bool]:
        """Pops the frontend messages the backend consumed for one ReadyForQuery."""
        messages: list[bytes] = []
        first_ns: int | None = None
        truncated = False
        copy_left = self._copy_ins
        simple = False
        pending = self._pending
        while pending:
            type_byte, message, arrived_ns, cut = pending.popleft()
            self._pending_bytes -= len(message)
            if first_ns is None:
                first_ns = arrived_ns
                simple = type_byte == _QUERY
            messages.append(message)
            truncated = truncated or cut
            if copy_left:
                if type_byte in (_COPY_DONE, _COPY_FAIL):
                    copy_left -= 1
                    if not copy_left and simple:
                        break
                continue
            if type_byte in SYNC_POINTS:
                break
        # A simple-protocol copy the backend aborted: what the client still sends is dropped.
        self._discard_copy = bool(copy_left) and simple
        self._copy_ins = 0
        return messages, first_ns, truncated

    def _close_cycle(self, now_ns: int, *, complete: bool) -> RawCycle:
        messages, first_ns, frontend_truncated = self._take_frontend()
        backend = bytes(self._backend)
        self._backend.clear()
        truncated = frontend_truncated or self._backend_truncated
        self._backend_truncated = False
        if first_ns is None:
            first_ns = self._backend_start_ns or now_ns
        frontend = b"".join(messages)
        if sum(len(m) for m in messages) > self._max_bytes:
            frontend, truncated = frontend[: self._max_bytes], True
        return RawCycle(
            frontend=frontend,
            backend=backend,
            start_ns=first_ns,
            end_ns=now_ns,
            status=self.status if complete else "",
            truncated=truncated,
            complete=complete,
        )

    def close(self, now_ns: int) -> RawCycle | None:
        """The connection ended: the cycle in progress, if any, as an incomplete one."""
        if not self.keep_bytes:
            return None
        if not self._pending and not self._backend and not self._frontend_partial:
            return None
        if self._frontend_partial:
            self._pending.append((0, bytes(self._frontend_partial), now_ns, True))
            self._frontend_partial.clear()
        return self._close_cycle(now_ns, complete=False)
