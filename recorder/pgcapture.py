"""What the PostgreSQL proxy hands to the recorder, and how it becomes events.

The proxy's event loop only splits traffic into raw cycles (cheap header
scanning); everything here runs in the recorder's writer thread: decoding the
messages, fingerprinting statements, and attributing each cycle to a trace.

Attribution, strongest first: the statement's sqlcommenter comment; the
comment of the Parse that prepared it, inside that same transaction; the trace
of the transaction it runs in (a transaction is attributed once, by the first
of its statements that carries a trace, and holds its earlier statements until
then); and last, the one inbound request that was in flight when the cycle
ended, if only one was (``PgCycleCaptured.inflight``). A transaction that no
comment attributes goes to the request in flight at its first such cycle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from protocols.pgwire import RawCycle
from protocols.traceparent import TraceParent

from .model import PG_QUERY, PG_SESSION, Event, new_span_id
from .mutation.capture import StatementCapture
from .mutation.events import finalize
from .mutation.log import MutationLog
from .pgdecode import DecodedCycle, decode_cycle, decode_session_start

log = logging.getLogger(__name__)

# Held events of an open, not yet attributed transaction; past this they go out unattributed.
MAX_HELD_EVENTS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class PgSessionStarted:
    """Authentication succeeded; ``backend`` holds the messages after AuthenticationOk."""

    conn_id: str
    parameters: tuple[tuple[str, str], ...]  # the StartupMessage's parameters
    backend: bytes  # ParameterStatus..., BackendKeyData, ReadyForQuery
    client: str
    upstream: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PgCycleCaptured:
    conn_id: str
    cycle: RawCycle
    # Rows the cycle's data-changing statements captured (record mode's rewrite), in order.
    captures: tuple[StatementCapture, ...] = ()
    # The trace of the only inbound request in flight when the cycle ended, if only one was.
    inflight: TraceParent | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PgSessionEnded:
    conn_id: str
    end_ns: int
    reason: str


PgCaptureItem = PgSessionStarted | PgCycleCaptured | PgSessionEnded


@dataclass(slots=True)
class _Prepared:
    trace: TraceParent | None
    txn_serial: int  # the transaction the Parse ran in (0 = none)


@dataclass(slots=True)
class _Session:
    database: str = ""
    user: str = ""
    status: str = "I"
    txn_serial: int = 0
    txn_trace: TraceParent | None = None
    txn_inflight: TraceParent | None = None  # the weakest claim on the open transaction
    held: list[Event] = field(default_factory=list)
    prepared: dict[str, _Prepared] = field(default_factory=dict)
    # name -> (SQL, parameter types), for Binds in later cycles
    statements: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)


class PgEventBuilder:
    """Stateful per connection; fed items in the order the proxy produced them."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self.mutations = MutationLog()

    def process(self, item: PgCaptureItem) -> list[Event]:
        match item:
            case PgCycleCaptured():
                return self._cycle(item)
            case PgSessionStarted():
                return [self._session_started(item)]
            case PgSessionEnded():
                session = self._sessions.pop(item.conn_id, None)
                trace = (session.txn_trace or session.txn_inflight) if session else None
                ended = [
                    finalize(e, status, trace.trace_id if trace else None)
                    for e, status in self.mutations.close(item.conn_id)
                ]
                if session is None or not session.held:
                    return ended
                return _release(session) + ended

    def _session_started(self, item: PgSessionStarted) -> Event:
        params = dict(item.parameters)
        session = _Session(database=params.get("database", ""), user=params.get("user", ""))
        self._sessions[item.conn_id] = session
        statuses, backend_key = decode_session_start(item.backend)
        attrs: dict[str, Any] = {
            "database": session.database,
            "user": session.user,
            "application_name": params.get("application_name", ""),
            "server_version": statuses.get("server_version", ""),
            "client": item.client,
            "upstream": item.upstream,
            "backend_pid": backend_key,
        }
        payload: dict[str, Any] = {
            "startup": [list(p) for p in item.parameters],
            "parameter_status": statuses,
            "backend": item.backend,
        }
        return Event(
            kind=PG_SESSION,
            trace_id=None,
            span_id=new_span_id(),
            parent_span_id=None,
            conn_id=item.conn_id,
            start_ns=item.start_ns,
            duration_ns=item.end_ns - item.start_ns,
            attrs=attrs,
            payload=payload,
        )

    def _cycle(self, item: PgCycleCaptured) -> list[Event]:
        session = self._sessions.get(item.conn_id)
        if session is None:  # the session start was dropped under load; keep going
            session = self._sessions[item.conn_id] = _Session()
        cycle = item.cycle
        decoded = decode_cycle(cycle, session.statements)
        status_before = session.status
        in_txn_before = status_before in ("T", "E")
        status_after = cycle.status or status_before
        began = not in_txn_before and status_after in ("T", "E")
        if began:
            session.txn_serial += 1
        trace, source = self._trace_for(session, decoded, in_txn_before)
        in_txn = in_txn_before or began
        if trace is None and item.inflight is not None:
            if not in_txn:
                trace, source = item.inflight, "inflight"
            elif session.txn_inflight is None:
                session.txn_inflight = item.inflight
        session.statements.update(decoded.parsed)
        for name in decoded.parsed:
            session.prepared[name] = _Prepared(
                trace=decoded.comment_trace,
                txn_serial=(session.txn_serial if status_after in ("T", "E") else 0),
            )
        for name in decoded.closed:
            session.prepared.pop(name, None)
            session.statements.pop(name, None)
        event = _event(item.conn_id, session, decoded, cycle, trace, source, status_before)
        if item.captures:  # what the cycle's data changes left in the mutation log, and why not
            event.attrs["mutations"] = sum(len(c.rows) for c in item.captures if c.tag is not None)
            reasons = [c.uncaptured for c in item.captures if c.uncaptured and c.tag is not None]
            if reasons:
                event.attrs["uncaptured"] = reasons
        final = self.mutations.cycle(
            item.conn_id, item.captures, decoded, event, status_before=status_before,
            status_after=cycle.status, txn_serial=session.txn_serial,
        )  # fmt: skip
        # A transaction's trace, before it is reset.
        txn_trace = session.txn_trace or trace or (session.txn_inflight if in_txn else None)
        session.status = status_after
        in_txn_after = status_after in ("T", "E")
        out: list[Event] = []
        if in_txn:
            if session.txn_trace is None and trace is not None:
                session.txn_trace = trace
                out.extend(_attribute(session.held, trace))
                session.held.clear()
            if event.trace_id is None and session.txn_trace is None:
                session.held.append(event)
                if len(session.held) > MAX_HELD_EVENTS:
                    out.extend(_release(session))
            else:
                out.append(event)
            if not in_txn_after:
                out.extend(_release(session))
                session.txn_trace = None
                session.txn_inflight = None
        else:
            out.append(event)
        if final:
            trace_id = txn_trace.trace_id if txn_trace else None
            out.extend(finalize(e, status, trace_id) for e, status in final)
        return out

    def _trace_for(
        self, session: _Session, decoded: DecodedCycle, in_txn: bool
    ) -> tuple[TraceParent | None, str]:
        if decoded.comment_trace is not None:
            return decoded.comment_trace, "comment"
        # A named statement keeps its Parse's trace only inside that same transaction.
        for name in decoded.bound:
            prepared = session.prepared.get(name)
            if (
                prepared is not None
                and prepared.trace is not None
                and in_txn
                and prepared.txn_serial == session.txn_serial
            ):
                return prepared.trace, "prepared"
        if in_txn and session.txn_trace is not None:
            return session.txn_trace, "transaction"
        return None, ""


def _attribute(
    events: list[Event], trace: TraceParent | None, source: str = "transaction"
) -> list[Event]:
    if trace is None:
        return list(events)
    return [
        replace(
            e,
            trace_id=trace.trace_id,
            parent_span_id=trace.parent_id,
            attrs={**e.attrs, "trace_source": source},
        )
        for e in events
    ]


def _release(session: _Session) -> list[Event]:
    """The held events of the open transaction, attributed as well as is known now."""
    if session.txn_trace is not None:
        out = _attribute(session.held, session.txn_trace)
    else:
        out = _attribute(session.held, session.txn_inflight, "inflight")
    session.held.clear()
    return out


def _event(
    conn_id: str,
    session: _Session,
    decoded: DecodedCycle,
    cycle: RawCycle,
    trace: TraceParent | None,
    source: str,
    status_before: str,
) -> Event:
    attrs = dict(decoded.attrs)
    attrs.update(
        database=session.database,
        user=session.user,
        status_before=status_before,
        status_after=cycle.status,
        trace_source=source,
        complete=cycle.complete,
        truncated=cycle.truncated,
    )
    payload = dict(decoded.payload)
    payload["frontend"] = cycle.frontend
    payload["backend"] = cycle.backend
    return Event(
        kind=PG_QUERY,
        trace_id=trace.trace_id if trace else None,
        span_id=new_span_id(),
        parent_span_id=trace.parent_id if trace else None,
        conn_id=conn_id,
        start_ns=cycle.start_ns,
        duration_ns=max(cycle.end_ns - cycle.start_ns, 0),
        error=decoded.error or not cycle.complete,
        fingerprint=decoded.fingerprint,
        attrs=attrs,
        payload=payload,
    )
