"""The PostgreSQL replay server: the sidecar answers from recordings, never an upstream.

It accepts any password (AuthenticationOk at once), sends the recorded
ParameterStatus values and a BackendKeyData of its own, then answers each
frontend message: Parse, Bind, Close and Sync from the protocol rules,
Describe and Execute (and simple Queries) from the matched recording. A miss
is an ErrorResponse naming the closest recording; after an error the
extended protocol skips to Sync, as PostgreSQL does.

A statement replays the trace named by its sqlcommenter comment, else the
trace of the transaction it runs in (from an earlier comment), else the one
inbound request in flight, else the run's scope. When the sidecar leaves
replay mode, each session is closed at its next idle point with FATAL 57P01,
as a server shutting down would, so that pools reconnect through the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from protocols import pgwire
from protocols.sqlcommenter import extract_traceparent
from recorder.pgreplay import Hit, Miss, Recorded

from . import inflight
from .upstream import set_nodelay

if TYPE_CHECKING:
    from .pgserver import PgProxy

log = logging.getLogger("flux.pg.replay")

_TRANSACTION_TAGS = {
    "BEGIN": "T",
    "START TRANSACTION": "T",
    "COMMIT": "I",
    "ROLLBACK": "I",
    "END": "I",
    "ABORT": "I",
    "PREPARE TRANSACTION": "I",
}
_DEFAULT_STATUS = {
    "server_version": "15.0",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "TimeZone": "UTC",
    "standard_conforming_strings": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "off",
}
MISS_SQLSTATE = "R9001"  # implementation-defined class: flux replay found no recording
_LEFT_REPLAY = "terminating connection: flux-proxy left replay mode"
_OUTSIDE_BATCHES = (pgwire.Sync, pgwire.Query, pgwire.Terminate)
END_DELAY_SECONDS = 0.05


@dataclass(slots=True)
class _Portal:
    sql: str
    params: tuple[bytes | None, ...]
    types: tuple[int, ...]
    hit: Hit | None = None
    rows: list[bytes] = field(default_factory=list)  # rows not yet sent (row limits)
    completion: bytes | None = None


def _transaction_tag(sql: str) -> str | None:
    words = sql.strip().rstrip(";").split()
    if not words:
        return None
    first = words[0].upper()
    if first in ("BEGIN", "START"):
        return "BEGIN"
    if first in ("COMMIT", "END"):
        return "COMMIT"
    if first in ("ROLLBACK", "ABORT") and "TO" not in (w.upper() for w in words):
        return "ROLLBACK"
    return None


class PgReplayProtocol(asyncio.Protocol):
    def __init__(self, proxy: PgProxy) -> None:
        self.proxy = proxy
        self.conn_id = proxy.next_conn_id()
        self.transport: asyncio.Transport | None = None
        self.reader = pgwire.MessageReader(startup=True)
        self.started = False
        self.status = "I"
        self.skipping = False
        self.pending = False  # extended-protocol messages received since the last Sync
        self._ending = False  # an end at the last idle point is scheduled
        self.trace: str | None = None  # the current transaction's trace, from a comment
        self._generation = proxy.state.replay_generation
        self._mode_epoch = proxy.state.mode_epoch
        self.statements: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.portals: dict[str, _Portal] = {}
        self.out: list[bytes] = []

    @classmethod
    def adopt(
        cls,
        proxy: PgProxy,
        transport: asyncio.Transport,
        conn_id: str,
        statements: dict[str, tuple[str, tuple[int, ...]]],
        *,
        startup: bool = False,
    ) -> PgReplayProtocol:
        """Takes over a client connection from the forwarding proxy (record → replay): at an
        idle point of its session, with the statements the client prepared there, so its
        pool keeps the connection and Binds to them as before; or, with ``startup``, before
        its StartupMessage was answered. Registering it is the caller's business."""
        proxy.replay_run()
        session = cls(proxy)
        session.conn_id = conn_id
        session.started = not startup
        session.reader = pgwire.MessageReader(startup=startup)
        session.statements = dict(statements)
        session.transport = transport
        transport.set_protocol(session)
        return session

    @property
    def idle(self) -> bool:
        """Between requests, outside a transaction: where a session may be ended cleanly."""
        return self.status == "I" and not self.pending and not self.reader.buffered

    def mode_changed(self) -> None:
        """The sidecar left replay mode: a session that is idle now ends now. Never in the
        same read as a ReadyForQuery: libpq takes an error that comes with it, while idle,
        for a notice, and the client would see a connection closed for no reason."""
        self._ending = False
        if self.proxy.state.mode != "replay" and self.started and self.idle:
            self._terminate()

    def _terminate(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.proxy.count("replay_sessions_ended")
            log.info("connection %s: closed with 57P01, the sidecar left replay mode", self.conn_id)
            transport.write(_error("FATAL", "57P01", _LEFT_REPLAY))
            transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self.proxy.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._mode_epoch != self.proxy.state.mode_epoch:
            self._mode_epoch = self.proxy.state.mode_epoch
            if self.proxy.state.mode != "replay" and self.started and self.idle:
                self._terminate()  # the switch came while the session was idle
                return
        try:
            self.reader.receive_data(data)
            while (frame := self.reader.next_message()) is not None:
                if not self.started:
                    self._startup(frame[1])
                else:
                    self._message(pgwire.decode_frontend(frame[0], frame[1]))
        except pgwire.RemoteProtocolError as exc:
            self.out.append(_error("FATAL", "08P01", f"protocol violation: {exc}"))
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._flush()
        if self.proxy.state.mode != "replay" and self.idle and not self._ending:
            # The first idle point since the switch: end the session, but not in the same
            # breath as this ReadyForQuery (see mode_changed).
            self._ending = True
            asyncio.get_running_loop().call_later(END_DELAY_SECONDS, self.mode_changed)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # -- startup -----------------------------------------------------------------

    def _startup(self, packet: bytes) -> None:
        message = pgwire.decode_startup(packet)
        match message:
            case pgwire.SSLRequest() | pgwire.GSSENCRequest():
                self.out.append(b"N")
                self.reader.expect_startup()
            case pgwire.CancelRequest():
                if self.transport is not None:
                    self.transport.close()  # nothing runs long enough to cancel
            case pgwire.StartupMessage(parameters=parameters):
                self.started = True
                statuses = {**_DEFAULT_STATUS, **self.proxy.replay.parameter_status()}
                params = dict(parameters)
                if "application_name" in params:
                    statuses["application_name"] = params["application_name"]
                self.out.append(pgwire.encode(pgwire.AuthenticationOk()))
                for name, value in statuses.items():
                    self.out.append(pgwire.encode(pgwire.ParameterStatus(name=name, value=value)))
                key = pgwire.BackendKeyData(process_id=os.getpid(), secret_key=os.urandom(4))
                self.out.append(pgwire.encode(key))
                self._ready()

    def _ready(self) -> None:
        if self.status == "I":
            self.trace = None  # a comment's trace lasts as long as its transaction
        self.out.append(pgwire.encode(pgwire.ReadyForQuery(status=self.status)))  # type: ignore[arg-type]

    # -- messages ----------------------------------------------------------------

    def _message(self, message: Any) -> None:
        if not isinstance(message, _OUTSIDE_BATCHES):
            self.pending = True
        match message:
            case pgwire.Sync():
                self.skipping = False
                self.pending = False
                self._ready()
            case pgwire.Query(query=sql):
                self._query(sql)
                self._ready()
            case pgwire.Terminate():
                if self.transport is not None:
                    self.transport.close()
            case pgwire.Flush():
                pass
            case _ if self.skipping:
                pass
            case pgwire.Parse(statement=name, query=sql, param_types=types):
                self.statements[name] = (sql, types)
                self.out.append(pgwire.PARSE_COMPLETE)
            case pgwire.Bind(portal=portal, statement=name, params=params):
                if name not in self.statements:
                    self._fail("26000", f"prepared statement {name!r} does not exist")
                    return
                sql, types = self.statements[name]
                self.portals[portal] = _Portal(sql=sql, params=params, types=types)
                self.out.append(pgwire.BIND_COMPLETE)
            case pgwire.Describe(kind="S", name=name):
                self._describe_statement(name)
            case pgwire.Describe(kind="P", name=portal):
                self._describe_portal(portal)
            case pgwire.Execute(portal=portal, max_rows=max_rows):
                self._execute(portal, max_rows)
            case pgwire.Close(kind=kind, name=name):
                (self.statements if kind == "S" else self.portals).pop(name, None)
                self.out.append(pgwire.CLOSE_COMPLETE)
            case _:
                self._fail("0A000", f"flux replay does not answer {type(message).__name__}")

    def _fail(self, code: str, text: str) -> None:
        self.out.append(_error("ERROR", code, text))
        self.skipping = True
        if self.status == "T":
            self.status = "E"

    def _trace_for(self, sql: str) -> str | None:
        comment = extract_traceparent(sql)
        if comment is not None:
            self.trace = comment.trace_id
            return comment.trace_id
        if self.trace is not None:
            return self.trace
        request = inflight.single_trace()
        return request.trace_id if request is not None else self.proxy.state.replay_scope

    def _match(
        self, sql: str, params: tuple[bytes | None, ...], types: tuple[int, ...], *, simple: bool
    ) -> Hit | Miss:
        self.proxy.replay_run()
        if self._generation != self.proxy.state.replay_generation:
            # A new run (`flux replay` of another trace): what this pooled connection
            # replayed before says nothing about the trace now being replayed.
            self._generation = self.proxy.state.replay_generation
            self.trace = None
        trace = self._trace_for(sql)
        result = self.proxy.replay.match(trace, sql, params, types, simple=simple)
        if isinstance(result, Miss):
            self.proxy.count("replay_misses")
            log.warning("connection %s: %s", self.conn_id, result.message)
        else:
            self.proxy.count("replay_hits")
        return result

    def _query(self, sql: str) -> None:
        tag = _transaction_tag(sql)
        result = self._match(sql, (), (), simple=True) if sql.strip() else None
        if isinstance(result, Hit):
            self.out.extend(result.recorded.response)
            self.status = result.recorded.status_after
        elif tag is not None:  # transaction control needs no recording
            self.out.append(pgwire.encode(pgwire.CommandComplete(tag=tag)))
            self._apply_tag(tag)
        elif result is None:
            self.out.append(pgwire.EMPTY_QUERY_RESPONSE)
        else:
            self.out.append(_error("ERROR", MISS_SQLSTATE, result.message))
            if self.status == "T":
                self.status = "E"

    def _describe_statement(self, name: str) -> None:
        if name not in self.statements:
            self._fail("26000", f"prepared statement {name!r} does not exist")
            return
        sql, _types = self.statements[name]
        self.proxy.replay_run()
        found = self.proxy.replay.describe_statement(self._trace_for(sql), sql)
        if isinstance(found, Miss):
            log.warning("connection %s: %s", self.conn_id, found.message)
            self._fail(MISS_SQLSTATE, found.message)
        else:
            self.out.extend(found)

    def _resolved_portal(self, portal: str) -> _Portal | None:
        """The portal with its execution matched, or None after answering with the error."""
        state = self.portals.get(portal)
        if state is None:
            self._fail("34000", f"portal {portal!r} does not exist")
            return None
        return state if self._resolve(state) else None

    def _describe_portal(self, portal: str) -> None:
        state = self._resolved_portal(portal)
        if state is None:
            return
        assert state.hit is not None
        recorded = state.hit.recorded
        description = recorded.describe_portal or recorded.describe_statement[1:]
        self.out.extend(description or (pgwire.NO_DATA,))

    def _resolve(self, state: _Portal) -> bool:
        """Matches the portal's execution once; later Describes and Executes reuse it."""
        if state.hit is not None:
            return True
        tag = _transaction_tag(state.sql)
        if tag is not None:
            done = (pgwire.encode(pgwire.CommandComplete(tag=tag)),)
            state.hit = Hit(recorded=_synthetic(state.sql, done))
        else:
            result = self._match(state.sql, state.params, state.types, simple=False)
            if isinstance(result, Miss):
                self._fail(MISS_SQLSTATE, result.message)
                return False
            state.hit = result
        response = state.hit.recorded.response
        state.rows = [m for m in response if m[0] == ord("D")]
        state.completion = next((m for m in reversed(response) if m[0] != ord("D")), None)
        return True

    def _execute(self, portal: str, max_rows: int) -> None:
        state = self._resolved_portal(portal)
        if state is None:
            return
        if max_rows and len(state.rows) > max_rows:
            self.out.extend(state.rows[:max_rows])
            del state.rows[:max_rows]
            self.out.append(pgwire.PORTAL_SUSPENDED)
            return
        self.out.extend(state.rows)
        state.rows = []
        completion = state.completion
        if completion is not None:
            self.out.append(completion)
            if completion[0] == ord("C"):
                self._apply_tag(pgwire.decode_backend(completion[0], completion[5:]).tag)  # type: ignore[union-attr]
            elif completion[0] == ord("E"):
                self.skipping = True
                if self.status == "T":
                    self.status = "E"

    def _apply_tag(self, tag: str) -> None:
        status = _TRANSACTION_TAGS.get(tag)
        if status is not None:
            self.status = status
            if status == "I":
                self.trace = None


def _synthetic(sql: str, response: tuple[bytes, ...]) -> Recorded:
    return Recorded(
        trace_id=None,
        conn_id=None,
        order=-1,
        simple=False,
        fingerprint="",
        normalized=sql,
        sql=sql,
        response=response,
    )


def _error(severity: str, code: str, message: str) -> bytes:
    return pgwire.encode(pgwire.error_response(severity, code, message))
