"""Mutation capture on the PostgreSQL data path, sans-I/O: bytes in, bytes out.

In record mode the proxy passes every byte through one :class:`PgRewriter`.
``frontend(data)`` returns what to send upstream: Query and Parse messages of
data-changing statements carry the rewritten text (see
:mod:`recorder.mutation.forms`), a Bind with one result format per column gets
formats for the appended ones, and an Execute with a row limit of a statement
whose client expects no rows loses its limit; everything else is forwarded as
it came. ``backend(data)`` returns what the client gets, which is what the
original statement would have produced: appended columns are cut from
RowDescription and DataRow, a statement without RETURNING yields no rows and
Describe answers NoData, and an error position is mapped back to the client's
text. It also returns, per ReadyForQuery, the rows captured in that cycle.

This module is the frontend half: every message that gets an answer is queued
as a request; :mod:`.pganswers` attributes the answers to them.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, deque
from typing import Final

from protocols import pgwire
from recorder.mutation.capture import StatementCapture
from recorder.mutation.forms import IDENTITY, Rewrite
from recorder.mutation.identity import PRELOAD_BACKING_OFF, PRELOAD_DUE
from recorder.mutation.planner import Planner
from recorder.mutation.preload import preload_sql, session_start
from recorder.mutation.roles import SessionRole

from .pganswers import (
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    FUNCTION,
    OURS,
    PARSE,
    PRELOAD,
    QUERY,
    SYNC,
    AnswerSide,
    Request,
)
from .pgreadback import READBACK_KIND, executes_ctes
from .pgreadback import messages as readback_messages
from .pgrows import message_size, result_formats

_I = struct.Struct("!I")
# Frontend messages read whole before forwarding: the rest pass as they arrive.
_FRONTEND_HELD: Final = frozenset(b"QPBDECF")

log = logging.getLogger("flux.pg.capture")


class PgRewriter(AnswerSide):
    def __init__(
        self,
        planner: Planner,
        *,
        database: str,
        server_major: int,
        user: str | None = "",
        counters: Counter[str] | None = None,
    ) -> None:
        self.planner = planner
        self.database = database
        self.server_major = server_major
        self.role = SessionRole(user)  # whose privileges apply: identities are per role
        # Statements that ran uncaptured, by reason (the sidecar's metrics).
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.enabled = True  # rewrite new statements; False still strips those rewritten before
        self._statements: dict[str, Rewrite] = {}
        # Named statements prepared while learning a table's identity: (SQL, parameter types)
        self._sources: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._status = b"I"  # the last ReadyForQuery's transaction status
        self._portals: dict[str, Rewrite] = {}
        self._queue: deque[Request] = deque()
        self._front = bytearray()
        self._back = bytearray()
        self._front_skip = 0
        self._back_skip = 0
        # Bytes a held, incomplete message needs before it is worth looking at again: a big
        # message arriving in many reads is joined once, not once per read.
        self._front_need = 0
        self._back_need = 0
        self._executions = 0  # executions finished in the current cycle
        self._cycle: list[StatementCapture] = []
        self._holding = False
        self._held_front = bytearray()
        # Portals of statements with writable CTEs, bound and not executed yet: their first
        # Execute is followed by our read-back (see .pgreadback).
        self._unread: set[str] = set()

    # -- frontend ------------------------------------------------------------------

    def preload(self) -> bytes:
        """Our catalog query of the session's first idle point (see
        :mod:`recorder.mutation.preload`), to send upstream; b"" when the session's
        (database, role) is loaded already, or its last preload failed a moment ago. Until
        its answer is in, :meth:`frontend` holds the client's bytes; :meth:`release` hands
        them on once it is."""
        scope = (self.database, self.role.current)
        state = session_start(self.planner.identities, scope, self.role)
        if not self.enabled or self._queue or state != PRELOAD_DUE:
            if state == PRELOAD_BACKING_OFF:
                self.counters["pg.mutations.preload-skipped"] += 1
            return b""
        # Sessions that start while another's preload is in flight send their own: had they
        # waited for none, their first write would find no identity and go uncaptured.
        self._queue.append(Request(PRELOAD, None, scope[1]))
        self._holding = True
        return pgwire.encode(pgwire.Query(query=preload_sql(self.server_major)))

    @property
    def releasing(self) -> bool:
        """Client bytes were held for our preload, and its answer is in."""
        return not self._holding and bool(self._held_front)

    @property
    def holding(self) -> bool:
        """Our preload is under way: client bytes wait for its answer."""
        return self._holding

    def release(self) -> bytes:
        """The client bytes held while our preload was answered, as they go upstream."""
        held = bytes(self._held_front)
        self._held_front.clear()
        return self.frontend(held) if held else b""

    def frontend(self, data: bytes) -> bytes:
        if self._holding:
            self._held_front += data
            return b""
        view = data
        if self._front:
            self._front += data
            if len(self._front) < self._front_need:
                return b""  # still inside the message being held
            view = bytes(self._front)
            self._front.clear()
        out: list[bytes] = []
        size = len(view)
        pos = min(self._front_skip, size)  # the rest of a message already forwarded in part
        self._front_skip -= pos
        start = 0
        while size - pos >= 5:
            type_byte = view[pos]
            end = pos + 1 + _I.unpack_from(view, pos + 1)[0]
            if type_byte not in _FRONTEND_HELD:
                if type_byte == 0x53:  # Sync
                    self._queue.append(Request(SYNC))
                if end > size:
                    self._front_skip = end - size
                    pos = size
                    break
                pos = end
                continue
            if end > size:
                break
            try:
                replacement = self._frontend_message(type_byte, view[pos + 5 : end])
            except ValueError as exc:  # a name without its NUL: the client's fault
                raise pgwire.RemoteProtocolError(f"malformed frontend message: {exc}") from exc
            if replacement is not None:
                out.append(view[start:pos])
                out.append(replacement)
                start = end
            pos = end
        out.append(view[start:pos])
        if pos < size:
            self._front += view[pos:]
            self._front_need = message_size(view, pos)
        return b"".join(out) if len(out) > 1 else out[0]

    def _frontend_message(self, type_byte: int, body: bytes) -> bytes | None:
        # Bind, Describe, Execute and Close of statements we did not rewrite are the bulk of
        # an extended-protocol session: their names are read here without decoding the rest.
        if type_byte in b"BDEC":
            end = body.index(0, 1 if type_byte in b"DC" else 0)
            name = body[1 if type_byte in b"DC" else 0 : end].decode("utf-8", "surrogateescape")
            if type_byte == 0x42:  # Bind: portal, then statement
                statement = body[end + 1 : body.index(0, end + 1)].decode(
                    "utf-8", "surrogateescape"
                )
                if statement not in self._statements:
                    request = Request(BIND, None, name)
                    request.previous = self._portals.pop(name, None)
                    self._queue.append(request)
                    return None
                if statement not in self._sources and result_formats(body) <= 1:
                    # Rewritten, and its result formats need nothing appended.
                    bound = self._statements[statement]
                    request = Request(BIND, bound, name)
                    request.previous = self._portals.get(name)
                    self._portals[name] = bound
                    self._queue.append(request)
                    if executes_ctes(bound):
                        self._unread.add(name)
                    return None
            elif type_byte == 0x44:  # Describe
                table = self._statements if body[0] == 0x53 else self._portals
                self._queue.append(Request(DESCRIBE, table.get(name)))
                return None
            elif type_byte == 0x45:  # Execute
                running = self._portals.get(name)
                self._queue.append(Request(EXECUTE, running))
                capture = running.statements[0].capture if running else None
                sent = None
                if (
                    capture is not None
                    and not capture.client_returning
                    and _I.unpack_from(body, end + 1)[0]
                ):
                    # No rows for the client, so no row limit: the rows are all ours.
                    sent = pgwire.encode(pgwire.Execute(portal=name, max_rows=0))
                if name in self._unread and executes_ctes(running):
                    # The portal's first Execute: our read-back of its writable CTEs' rows
                    # (see .pgreadback).
                    self._unread.discard(name)
                    self._queue.extend([Request(OURS), Request(OURS),
                                        Request(READBACK_KIND, running), Request(OURS),
                                        Request(OURS)])  # fmt: skip
                    sent = sent or b"E" + _I.pack(len(body) + 4) + body
                    return sent + readback_messages(running, self.server_major)
                return sent
            elif type_byte == 0x43:  # Close
                (self._statements if body[0] == 0x53 else self._portals).pop(name, None)
                if body[0] == 0x53:
                    self._sources.pop(name, None)
                else:
                    self._unread.discard(name)
                self._queue.append(Request(CLOSE))
                return None
        message = pgwire.decode_frontend(type_byte, body)
        match message:
            case pgwire.Query(query=sql):
                rewrite = self._plan(sql, query=True)
                self._queue.append(Request(QUERY, rewrite))
                if rewrite is not None and rewrite.changed:
                    return pgwire.encode(pgwire.Query(query=rewrite.sql))
            case pgwire.Parse(statement=name, query=sql, param_types=types):
                rewrite = self._plan(sql)
                if rewrite is not None and len(rewrite.statements) != 1:
                    rewrite = None  # the server refuses several commands in one Parse
                request = Request(PARSE, rewrite, name)
                request.previous = self._statements.get(name)
                self._remember(self._statements, name, rewrite)
                self._queue.append(request)
                if name and rewrite is not None and _learning(rewrite):
                    self._sources[name] = (sql, types)
                if rewrite is not None and rewrite.changed:
                    return pgwire.encode(pgwire.Parse(statement=name, query=rewrite.sql,
                                                      param_types=types))  # fmt: skip
            case pgwire.Bind(portal=portal, statement=name, result_formats=formats):
                prefix = self._refresh(name)
                rewrite = self._statements.get(name)
                request = Request(BIND, rewrite, portal)
                request.previous = self._portals.get(portal)
                self._remember(self._portals, portal, rewrite)
                self._queue.append(request)
                if executes_ctes(rewrite):
                    self._unread.add(portal)
                capture = rewrite.statements[0].capture if rewrite else None
                if capture is not None and len(formats) > 1:
                    extra = (pgwire.TEXT_FORMAT,) * len(capture.roles)
                    fixed = pgwire.Bind(
                        portal=portal, statement=name, param_formats=message.param_formats,
                        params=message.params, result_formats=formats + extra,
                    )  # fmt: skip
                    return prefix + pgwire.encode(fixed)
                if prefix:
                    return prefix + pgwire.encode(message)
            case pgwire.FunctionCall():
                self._queue.append(Request(FUNCTION))
            case _:
                pass
        return None

    def _refresh(self, name: str) -> bytes:
        """Re-prepares a named statement first prepared while its table's identity was being
        learnt, once it is known: otherwise every execution would run the catalog lookup,
        uncaptured, for the session's lifetime. The Close and Parse are ours; their answers
        never reach the client."""
        source = self._sources.get(name)
        if source is None or self._status not in (b"I", b"T"):
            return b""
        current = self._plan(source[0])
        if current is None or _learning(current):
            return b""
        # Prepared again even when it is now the client's own text: a table that is not
        # to be captured gets exactly the statement the client prepared.
        del self._sources[name]
        self._remember(self._statements, name, current)
        self._queue.append(Request(OURS))
        self._queue.append(Request(OURS))
        return pgwire.encode(pgwire.Close(kind="S", name=name)) + pgwire.encode(
            pgwire.Parse(statement=name, query=current.sql, param_types=source[1])
        )

    def _plan(self, sql: str, *, query: bool = False) -> Rewrite | None:
        try:
            role = self.role.seen(sql, in_transaction=self._status != b"I")
            if not self.enabled:
                return None
            return self.planner.plan(sql, self.database, self.server_major, role, query=query)
        except Exception:  # a planner bug must not cost the client its statement
            log.exception("statement analysis failed; the statement runs unchanged")
            return None


def _learning(rewrite: Rewrite) -> bool:
    """Whether a rewrite carries the catalog lookup (its table's identity was unknown), for
    the statement's own table or a writable CTE's."""
    return any(
        (p.capture is not None and IDENTITY in p.capture.roles)
        or any(IDENTITY in c.roles for c in p.ctes)
        for p in rewrite.statements
    )


_PLANNER: Planner | None = None
_CAPTURE = [True]


def set_capture(enabled: bool) -> None:
    """The process's setting (--capture-mutations / FLUX_CAPTURE_MUTATIONS): off, record
    mode records protocol cycles only and forwards every statement as sent."""
    _CAPTURE[0] = enabled


def capture_enabled() -> bool:
    return _CAPTURE[0]


def shared_planner() -> Planner:
    """One planner per sidecar process: its caches (analyses, identities) serve every session."""
    global _PLANNER
    if _PLANNER is None:
        _PLANNER = Planner()
    return _PLANNER
