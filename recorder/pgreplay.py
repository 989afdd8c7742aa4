"""Replay matching for PostgreSQL: recorded statements, and how a new one finds its answer.

Scope first: the trace being replayed. Within it statements are matched in
recorded order by fingerprint, then by parameters; repeats are consumed in
order. Parameters that differ only in volatile values (timestamps, UUIDs) still
match, and the difference is reported. Session-level statements (SET, SHOW,
catalog introspection, ``SELECT 1``) may be answered from any recording and are
never consumed. Statement and portal names are never compared.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols import pgwire
from protocols.sqltext import fingerprint, normalize, statement_kind

from .model import StoredEvent
from .pgexchange import Exchange, split_exchanges

# Types whose values are expected to change between runs: dates, times, UUIDs.
VOLATILE_TYPES = frozenset({1082, 1083, 1114, 1184, 1266, 2950})
_VOLATILE_TEXT = re.compile(
    rb"^(\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}(:?\d{2})?|Z)?)?"
    rb"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
SESSION_KINDS = frozenset(
    {
        "set",
        "show",
        "reset",
        "discard",
        "listen",
        "unlisten",
        "deallocate",
        "begin",
        "start",
        "commit",
        "rollback",
        "end",
        "abort",
        "savepoint",
        "release",
    }
)
_CATALOG = re.compile(
    r"\b(pg_catalog|pg_type|pg_namespace|pg_attribute|pg_class|pg_range|"
    r"information_schema|current_setting|set_config|current_schema|current_database|"
    r"version\(\)|pg_backend_pid|pg_advisory_unlock_all)\b"
)


def is_session_level(normalized_sql: str) -> bool:
    """Traffic drivers send on their own, answerable from any recording."""
    if statement_kind(normalized_sql) in SESSION_KINDS:
        return True
    if normalized_sql in ("select ?", "select ?::int", ""):
        return True
    return bool(_CATALOG.search(normalized_sql)) and "insert" not in normalized_sql


@dataclass(slots=True, kw_only=True)
class Recorded:
    """One recorded execution: an extended-protocol Execute or a whole simple Query."""

    trace_id: str | None
    conn_id: str | None
    order: int
    simple: bool
    fingerprint: str
    normalized: str
    sql: str
    params: tuple[bytes | None, ...] = ()
    param_types: tuple[int, ...] = ()
    describe_statement: tuple[bytes, ...] = ()  # ParameterDescription + RowDescription/NoData
    describe_portal: tuple[bytes, ...] = ()
    response: tuple[bytes, ...] = ()  # rows and completion (simple: everything before RFQ)
    status_after: str = "I"
    max_rows: int = 0
    consumed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    recorded: Recorded
    volatile: tuple[tuple[int, Any, Any], ...] = ()  # (index, recorded, new) values that differ


@dataclass(frozen=True, slots=True, kw_only=True)
class Miss:
    sqlstate: str
    message: str
    closest: Recorded | None


@dataclass(slots=True)
class _Statement:
    sql: str
    types: tuple[int, ...]
    describe: tuple[bytes, ...] = ()


@dataclass(slots=True)
class _Connection:
    statements: dict[str, _Statement] = field(default_factory=dict)
    portals: dict[str, tuple[str, tuple[bytes | None, ...], tuple[bytes, ...]]] = field(
        default_factory=dict
    )


def _display(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.hex()


class ReplayIndex:
    """Recorded executions of the stored ``pg.query`` events, ready for matching."""

    def __init__(self) -> None:
        self.recorded: list[Recorded] = []
        self._by_trace: dict[str | None, list[Recorded]] = {}
        self._by_fingerprint: dict[str, list[Recorded]] = {}
        self._session: dict[str, list[Recorded]] = {}
        self._connections: dict[str | None, _Connection] = {}
        self.parameter_status: dict[str, str] = {}

    def add_events(self, events: Iterable[StoredEvent]) -> None:
        for stored in events:
            event = stored.event
            if event.kind == "pg.session":
                statuses = event.payload.get("parameter_status")
                if isinstance(statuses, dict) and not self.parameter_status:
                    self.parameter_status = {str(k): str(v) for k, v in statuses.items()}
                continue
            frontend = event.payload.get("frontend")
            backend = event.payload.get("backend")
            if not isinstance(frontend, bytes) or not isinstance(backend, bytes):
                continue  # sealed without a key, or not a query event
            conn = self._connections.setdefault(event.conn_id, _Connection())
            status = str(event.attrs.get("status_after") or "I")
            for exchange in split_exchanges(frontend, backend):
                self._add_exchange(conn, exchange, event.trace_id, event.conn_id, status)

    def _add_exchange(
        self,
        conn: _Connection,
        exchange: Exchange,
        trace: str | None,
        conn_id: str | None,
        status: str,
    ) -> None:
        match exchange.request:
            case pgwire.Parse(statement=name, query=sql, param_types=types):
                conn.statements[name] = _Statement(sql, types)
            case pgwire.Describe(kind="S", name=name) if name in conn.statements:
                statement = conn.statements[name]
                statement.describe = exchange.response
                for message in exchange.response:
                    if message[0] == ord("t"):
                        parsed = pgwire.decode_backend(message[0], message[5:])
                        assert isinstance(parsed, pgwire.ParameterDescription)
                        statement.types = parsed.type_oids
            case pgwire.Bind(portal=portal, statement=name, params=params):
                conn.portals[portal] = (name, params, ())
            case pgwire.Describe(kind="P", name=portal) if portal in conn.portals:
                name, params, _ = conn.portals[portal]
                conn.portals[portal] = (name, params, exchange.response)
            case pgwire.Execute(portal=portal, max_rows=max_rows) if portal in conn.portals:
                name, params, describe_portal = conn.portals[portal]
                prepared = conn.statements.get(name)
                if prepared is not None:
                    self._add(
                        Recorded(
                            trace_id=trace,
                            conn_id=conn_id,
                            order=len(self.recorded),
                            simple=False,
                            fingerprint=fingerprint(prepared.sql),
                            normalized=normalize(prepared.sql),
                            sql=prepared.sql,
                            params=params,
                            param_types=prepared.types,
                            describe_statement=prepared.describe,
                            describe_portal=describe_portal,
                            response=exchange.response,
                            max_rows=max_rows,
                            status_after=status,
                        )
                    )
            case pgwire.Query(query=sql):
                response = tuple(m for m in exchange.response if m[0] != ord("Z"))
                self._add(
                    Recorded(
                        trace_id=trace,
                        conn_id=conn_id,
                        order=len(self.recorded),
                        simple=True,
                        fingerprint=fingerprint(sql),
                        normalized=normalize(sql),
                        sql=sql,
                        response=response,
                        status_after=status,
                    )
                )
            case pgwire.Close(kind="S", name=name):
                conn.statements.pop(name, None)

    def _add(self, recorded: Recorded) -> None:
        self.recorded.append(recorded)
        self._by_trace.setdefault(recorded.trace_id, []).append(recorded)
        self._by_fingerprint.setdefault(recorded.fingerprint, []).append(recorded)
        if is_session_level(recorded.normalized):
            self._session.setdefault(recorded.fingerprint, []).append(recorded)

    def describe_statement(self, sql: str) -> tuple[bytes, ...] | None:
        """A recorded answer to Describe of a statement with this fingerprint, if any."""
        found = self._by_fingerprint.get(fingerprint(sql), ())
        return next((r.describe_statement for r in found if r.describe_statement), None)

    def match(
        self,
        trace: str | None,
        sql: str,
        params: Sequence[bytes | None] = (),
        types: Sequence[int] = (),
        *,
        simple: bool = False,
    ) -> Hit | Miss:
        fp = fingerprint(sql)
        # The trace first; then what could not be attributed when it was recorded (a
        # prepared statement executed outside the transaction it was prepared in). A
        # statement of no known trace may take any recording, the unattributed first.
        unused = [
            r for r in self._by_fingerprint.get(fp, ()) if r.simple == simple and not r.consumed
        ]
        same = [r for r in unused if r.trace_id == trace]
        same += [r for r in unused if (r.trace_id is None) != (trace is None)]
        for recorded in same:
            if tuple(recorded.params) == tuple(params):
                recorded.consumed = True
                return Hit(recorded=recorded)
        for recorded in same:
            volatile = _volatile_differences(recorded, params, types)
            if volatile is not None:
                recorded.consumed = True
                return Hit(recorded=recorded, volatile=volatile)
        for recorded in self._session.get(fp, ()):
            if recorded.simple == simple and tuple(recorded.params) == tuple(params):
                return Hit(recorded=recorded)
        return self._miss(trace, sql, fp, params)

    def undescribed(self, trace: str | None, sql: str) -> Miss:
        """The miss for a statement no recording can describe (a Describe of it, before
        any execution), naming the closest recorded statement."""
        pool = self._by_trace.get(trace) or self.recorded
        new = normalize(sql)
        closest, what = _most_similar(pool, new)
        scope = f"trace {trace}" if trace else "unattributed recordings"
        return Miss(
            sqlstate="R9001",
            message=f"flux replay: no recorded description of {new!r} in {scope}; {what}",
            closest=closest,
        )

    def _miss(self, trace: str | None, sql: str, fp: str, params: Sequence[bytes | None]) -> Miss:
        pool = self._by_trace.get(trace) or self.recorded
        closest: Recorded | None = next((r for r in pool if r.fingerprint == fp), None)
        if closest is not None:
            diff = [
                (i, _display(a), _display(b))
                for i, (a, b) in enumerate(zip(closest.params, params, strict=False))
                if a != b
            ]
            what = (
                f"the recorded statement {closest.normalized!r} was run with other "
                f"parameters (first difference at ${diff[0][0] + 1}: recorded "
                f"{diff[0][1]!r}, now {diff[0][2]!r})"
                if diff
                else f"every recording of {closest.normalized!r} in this trace was already used"
            )
        else:
            closest, what = _most_similar(pool, normalize(sql))
        scope = f"trace {trace}" if trace else "unattributed recordings"
        return Miss(
            sqlstate="R9001",
            message=f"flux replay: no recorded answer for {normalize(sql)!r} in {scope}; {what}",
            closest=closest,
        )


def _most_similar(pool: Sequence[Recorded], normalized: str) -> tuple[Recorded | None, str]:
    """The recorded statement whose text is nearest ``normalized``, and how a miss says so."""
    closest = max(
        pool,
        key=lambda r: difflib.SequenceMatcher(None, r.normalized, normalized).quick_ratio(),
        default=None,
    )
    if closest is None:
        return None, "nothing was recorded for this trace"
    return closest, f"the closest recorded statement is {closest.normalized!r}"


def _volatile_differences(
    recorded: Recorded, params: Sequence[bytes | None], types: Sequence[int]
) -> tuple[tuple[int, Any, Any], ...] | None:
    """The differing values if every difference is in a volatile value, else None."""
    if len(recorded.params) != len(params):
        return None
    differences = []
    for i, (old, new) in enumerate(zip(recorded.params, params, strict=True)):
        if old == new:
            continue
        if old is None or new is None:
            return None
        oid = (types[i] if i < len(types) else 0) or (
            recorded.param_types[i] if i < len(recorded.param_types) else 0
        )
        if oid in VOLATILE_TYPES or (_VOLATILE_TEXT.match(old) and _VOLATILE_TEXT.match(new)):
            differences.append((i, _display(old), _display(new)))
        else:
            return None
    return tuple(differences)
