"""The backend half of the capture rewriter: what the client gets back.

Theory of operation: the backend answers frontend messages in order, so each
frontend message that gets an answer is queued as a :class:`Request` (as in
:mod:`recorder.pgexchange`) by :class:`flux_proxy.pgrewrite.PgRewriter`, and
every backend message is attributed to the request at the head of the queue.
After an ErrorResponse the backend skips to Sync, and so does the queue. A
backend message that cannot need changing is forwarded at once, even before it
is complete; only RowDescription, DataRow, CommandComplete, PortalSuspended,
ErrorResponse and ReadyForQuery of a rewritten statement are held until whole.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, deque
from typing import Final

from protocols import pgwire
from recorder.mutation.capture import MAX_CAPTURE_BYTES, StatementCapture
from recorder.mutation.forms import IDENTITY, OID, Capture, Rewrite
from recorder.mutation.identity import SKIP_SECONDS, parse_lookup
from recorder.mutation.planner import Planner
from recorder.mutation.preload import preload_answered
from recorder.mutation.roles import SessionRole

from .pgreadback import READBACK_KIND, answer, ctes_of, rewrite_ctes
from .pgrows import cut_data_row, cut_row_description, message_size

log = logging.getLogger("flux.pg.capture")

# OURS: our Close or Parse of a statement prepared again; PRELOAD: our Query of the
# session's start (see recorder.mutation.preload). Not a byte of their answers is forwarded.
PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, FUNCTION, OURS, PRELOAD = range(10)
_ENDS_CYCLE: Final = frozenset({SYNC, QUERY, FUNCTION})
_ASYNC: Final = frozenset(b"NSA")
# A rewrite that the server rejects for these reasons is not tried again for a while: a
# privilege or policy changed behind the cache's back, or the lookup met a DO INSTEAD rule
# (a RETURNING of any kind fails on it, and only DDL we may not see would change that).
_SKIP_STATES: Final = frozenset({"42501", "0A000", "42P17", "55000", "42809"})
_SKIP_LONG: Final = 3600.0
_I = struct.Struct("!I")


class Request:
    __slots__ = ("failed", "index", "kind", "name", "previous", "rewrite", "rows", "size",
                 "statement", "truncated")  # fmt: skip

    def __init__(self, kind: int, rewrite: Rewrite | None = None, name: str = "") -> None:
        self.kind = kind
        self.rewrite = rewrite
        self.name = name
        self.previous: Rewrite | None = None  # the mapping a failed Parse/Bind must restore
        self.statement = 0  # Query: which of its statements is running
        self.rows: list[tuple[bytes | None, ...]] = []
        self.size = 0
        self.truncated = False
        self.index = 0
        self.failed = False

    def capture(self) -> Capture | None:
        if self.rewrite is None or self.statement >= len(self.rewrite.statements):
            return None
        return self.rewrite.statements[self.statement].capture


def _reading(head: Request) -> bool:
    """Whether the request is our read-back of writable CTEs' rows (see .pgreadback)."""
    return head.kind == READBACK_KIND or (
        head.kind == QUERY and bool(ctes_of(head.rewrite, head.statement))
    )


class AnswerSide:
    """State and backend handling; :class:`~flux_proxy.pgrewrite.PgRewriter` adds the
    frontend and creates the state."""

    planner: Planner
    database: str
    role: SessionRole
    counters: Counter[str]
    _statements: dict[str, Rewrite]
    _portals: dict[str, Rewrite]
    _queue: deque[Request]
    _back: bytearray
    _back_skip: int
    _back_need: int
    _status: bytes
    _executions: int
    _cycle: list[StatementCapture]
    # Client bytes held while our PRELOAD is answered, so what it learns plans them.
    _holding: bool
    _held_front: bytearray

    def _scope(self, rewrite: Rewrite | None) -> tuple[str, str]:
        return self.database, "" if rewrite is None else rewrite.role

    @staticmethod
    def _remember(table: dict[str, Rewrite], name: str, rewrite: Rewrite | None) -> None:
        if rewrite is not None and (
            rewrite.changed or any(p.uncaptured for p in rewrite.statements)
        ):
            table[name] = rewrite
        else:
            table.pop(name, None)

    # -- backend -------------------------------------------------------------------

    def backend(self, data: bytes) -> tuple[bytes, list[list[StatementCapture]]]:
        """What the client gets, and the captures of each cycle that ended in ``data``."""
        view = data
        if self._back:
            self._back += data
            if len(self._back) < self._back_need:
                return b"", []
            view = bytes(self._back)
            self._back.clear()
        out: list[bytes] = []
        done: list[list[StatementCapture]] = []
        size = len(view)
        pos = min(self._back_skip, size)
        self._back_skip -= pos
        start = 0
        while size - pos >= 5:
            type_byte = view[pos]
            end = pos + 1 + _I.unpack_from(view, pos + 1)[0]
            if not self._held(type_byte):
                self._transition(type_byte, done)
                if end > size:
                    self._back_skip = end - size
                    pos = size
                    break
                pos = end
                continue
            if end > size:
                break
            replacement = self._backend_message(type_byte, view[pos:end], done)
            if replacement is not None:
                out.append(view[start:pos])
                out.append(replacement)
                start = end
            pos = end
        out.append(view[start:pos])
        if pos < size:
            self._back += view[pos:]
            self._back_need = message_size(view, pos)
        return (b"".join(out) if len(out) > 1 else out[0]), done

    def _held(self, type_byte: int) -> bool:
        """Whether this backend message may need changing (so must be read whole)."""
        if type_byte == 0x5A:  # ReadyForQuery: its status ends SET LOCAL ROLE, allows re-prepare
            return True
        if type_byte in _ASYNC or not self._queue:
            return False
        head = self._queue[0]
        if head.kind == PRELOAD:
            return True
        if head.kind == OURS:
            return type_byte in b"123"  # the answers to our own Close, Parse and Bind: dropped
        if head.rewrite is None:  # the bulk of the traffic: nothing of ours in it
            return False
        if _reading(head):
            return type_byte in b"TDC"  # the answers to our read-back (see .pgreadback)
        if type_byte == 0x45:  # ErrorResponse: its position may need mapping
            return True
        if type_byte == 0x54 and head.kind == DESCRIBE:  # RowDescription
            return head.rewrite.statements[0].capture is not None
        if type_byte in b"TDCs" and head.kind in (EXECUTE, QUERY):
            return head.capture() is not None or self._uncaptured(head) is not None
        return False

    @staticmethod
    def _uncaptured(request: Request) -> str | None:
        rewrite = request.rewrite
        if rewrite is None or request.statement >= len(rewrite.statements):
            return None
        return rewrite.statements[request.statement].uncaptured

    def _backend_message(
        self, type_byte: int, message: bytes, done: list[list[StatementCapture]]
    ) -> bytes | None:
        if self._queue and self._queue[0].kind == PRELOAD:
            self._preloaded(type_byte, message)
            return b""
        if type_byte == 0x5A:  # ReadyForQuery
            self._status = message[5:6]
            if self._status == b"I":
                self.role.idle()
            self._transition(type_byte, done)
            return None
        head = self._queue[0]
        if head.kind == OURS:
            self._queue.popleft()
            return b""
        if _reading(head):
            return answer(self, head, type_byte, message)
        if type_byte == 0x44:  # DataRow
            capture = head.capture()
            if capture is None:
                return None
            kept, values = cut_data_row(message, len(capture.roles))
            if head.size < MAX_CAPTURE_BYTES:
                head.rows.append(tuple(values))
                head.size += sum(len(v) for v in values if v is not None)
            else:
                head.truncated = True
            return kept if capture.client_returning else b""
        if type_byte == 0x54:  # RowDescription
            rewrite = head.rewrite
            if head.kind == DESCRIBE and rewrite is not None:
                capture = rewrite.statements[0].capture
            else:
                capture = head.capture()
            self._transition(type_byte, done)
            if capture is None:
                return None
            if not capture.client_returning:
                return pgwire.NO_DATA if head.kind == DESCRIBE else b""
            return cut_row_description(message, len(capture.roles))
        if type_byte in b"Cs":  # CommandComplete, or PortalSuspended (more rows to come)
            tag = message[5:-1].decode("utf-8", "replace") if type_byte == 0x43 else ""
            self._finish(head, tag)
            self._transition(type_byte, done)
            return None
        if type_byte == 0x45:  # ErrorResponse
            replacement = self._error(head, message)
            self._transition(type_byte, done)
            return replacement
        self._transition(type_byte, done)
        return None

    def _preloaded(self, type_byte: int, message: bytes) -> None:
        """An answer to our PRELOAD: rows are kept, an error means nothing is learnt (the
        statements run as before: each table is looked up on its first write)."""
        head = self._queue[0]
        if type_byte == 0x44:  # DataRow
            head.rows.append(tuple(cut_data_row(message, 2)[1]))
        elif type_byte == 0x45:  # ErrorResponse
            head.failed = True
        elif type_byte == 0x5A:  # ReadyForQuery: the client's own bytes may now go on
            self._queue.popleft()
            self._status = message[5:6]
            scope = (self.database, head.name)
            if head.failed:  # 57014 too: a statement_timeout, a cancel not the client's
                self.counters["pg.mutations.preload-failed"] += 1
                self.planner.identities.preload_failed(scope)
            else:
                preload_answered(self.planner.identities, scope, head.rows, self.role)
                self.counters["pg.mutations.preloaded"] += 1
            self._holding = False

    def _error(self, head: Request, message: bytes) -> bytes | None:
        rewrite = head.rewrite
        assert rewrite is not None
        if not rewrite.changed or head.kind not in (QUERY, PARSE, EXECUTE, DESCRIBE, BIND):
            return None
        error = pgwire.decode_backend(0x45, message[5:])
        assert isinstance(error, pgwire.ErrorResponse)
        fields = dict(error.fields)
        capture = head.capture() if head.kind == QUERY else rewrite.statements[0].capture
        position = fields.get("P")
        added = False
        if position and position.isdigit():
            mapped = rewrite.original_position(int(position))
            added = rewrite.added(int(position))
            fields["P"] = str(mapped)
        ctes = rewrite_ctes(rewrite, head.statement if head.kind == QUERY else 0)
        for failed in (capture, *ctes):  # the statement's own capture, its writable CTEs'
            if failed is None or not (added or fields.get("C") in _SKIP_STATES):
                continue
            # Our addition is what failed (a privilege revoked or a policy added since the
            # lookup, a DO INSTEAD rule): run this table's statements unchanged for a while.
            log.warning("capture on %s failed (%s %s); its statements run uncaptured for now",
                        failed.relation, fields.get("C"), fields.get("M"))  # fmt: skip
            state = fields.get("C")
            rule = IDENTITY in failed.roles and state == "0A000"
            self.planner.identities.skip(
                self._scope(rewrite), failed.relation, f"rewrite-failed-{state}",
                _SKIP_LONG if rule else SKIP_SECONDS,
            )  # fmt: skip
        if head.kind in (QUERY, EXECUTE):
            self._finish(head, None)
        if position is None:
            return None
        return pgwire.encode(pgwire.ErrorResponse(fields=tuple(fields.items())))

    def _transition(self, type_byte: int, done: list[list[StatementCapture]]) -> None:
        """What a backend message means for the request queue."""
        queue = self._queue
        if type_byte == 0x5A:  # ReadyForQuery: one entry per cycle, even one we did not see
            while queue and queue.popleft().kind not in _ENDS_CYCLE:
                pass
            done.append(self._cycle)
            self._cycle = []
            self._executions = 0
            return
        if type_byte in _ASYNC or not queue:
            return
        kind = queue[0].kind
        if type_byte in b"123n":
            queue.popleft()
        elif type_byte == 0x54:  # RowDescription: the answer to a Describe, or a query's
            if kind == DESCRIBE:
                queue.popleft()
        elif type_byte in b"CIs":  # an execution ended
            self._executions += 1
            if kind == QUERY:
                queue[0].statement += 1
            elif kind == EXECUTE:
                queue.popleft()
        elif type_byte == 0x45:  # ErrorResponse: the backend skips to Sync
            if kind in (QUERY, FUNCTION):
                return
            if kind == EXECUTE:
                self._executions += 1
            while queue and queue[0].kind != SYNC:
                failed = queue.popleft()
                if failed.kind == PARSE:
                    self._remember(self._statements, failed.name, failed.previous)
                elif failed.kind == BIND:
                    self._remember(self._portals, failed.name, failed.previous)

    def _finish(self, request: Request, tag: str | None) -> None:
        """A statement of ``request`` ended (``tag`` None: it failed): note what it captured."""
        capture = request.capture()
        uncaptured = self._uncaptured(request)
        if capture is None and uncaptured is None:
            return
        reason = uncaptured or (capture.uncaptured if capture is not None else None)
        if reason is not None and tag is not None:
            self.counters["pg.mutations.uncaptured"] += 1
            self.counters[f"pg.mutations.uncaptured.{reason}"] += 1
        if capture is None:
            self._cycle.append(
                StatementCapture(index=self._executions, op="", relation="", roles=(),
                                 uncaptured=uncaptured, tag=tag)
            )  # fmt: skip
            return
        identity = capture.identity
        if IDENTITY in capture.roles and request.rows:
            learnt = parse_lookup(request.rows[0][capture.roles.index(IDENTITY)])
            if learnt is not None:
                self.planner.identities.put(self._scope(request.rewrite), capture.relation, learnt)
                identity = learnt
        elif identity is not None and OID in capture.roles and request.rows:
            seen = request.rows[0][capture.roles.index(OID)]
            if seen is not None and seen != str(identity.oid).encode():
                # Same text, another table (search_path, or dropped and created elsewhere).
                self.planner.identities.forget(self._scope(request.rewrite), capture.relation)
                identity = None
        self._cycle.append(
            StatementCapture(
                index=self._executions, op=capture.op, relation=capture.relation,
                roles=capture.roles, rows=tuple(request.rows),
                identity=None if identity is None else tuple(identity.to_wire()),
                form=capture.form, uncaptured=capture.uncaptured, tag=tag,
                truncated=request.truncated,
            )
        )  # fmt: skip
        request.rows = []
        request.size = 0
        request.truncated = False
