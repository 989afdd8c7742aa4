"""``flux why``: the root cause of a failed execution.

The cause is the first span that failed on its own: among the failing spans, those
whose failure is not explained by a failing descendant (an inbound 500 is explained
by the query that failed under it), the one that ended first. Flagged errors (an
SQLSTATE, a 5xx, no answer) come before HTTP 4xx answers, which apps often handle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from recorder.model import HTTP_INBOUND, MUTATION, PG_QUERY, StoredEvent

from .spans import (
    HTTP_KINDS,
    Failure,
    SpanIndex,
    SpanRef,
    as_str,
    call_target,
    clip,
    end_ns,
    failure_of,
    sql_texts,
    statements,
    values_of,
)
from .suggest import (
    Advice,
    for_call_status,
    for_connection,
    for_inbound_status,
    for_sqlstate,
)

PRECEDING_LIMIT: Final = 8
BODY_WIDTH: Final = 300
# ErrorResponse fields worth showing (PostgreSQL protocol, "Error and Notice Message Fields").
_PG_FIELDS: Final = {"M": "message", "D": "detail", "H": "hint", "n": "constraint",
                     "t": "table", "c": "column", "W": "where"}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Cause:
    span: SpanRef
    advice: Advice
    sqlstate: str | None = None
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None  # plaintext reason (HTTP, UDP); the SQL message is a value
    fields: dict[str, str] = field(default_factory=dict)  # message, detail, hint... (values)
    statement: str | None = None  # normalized, or with literals when the values are open
    call: str | None = None  # the call target, for HTTP
    values: dict[str, Any] | None = None  # parameters, query string, bodies; None if sealed
    sealed: bool = False  # the values exist but we hold no key for them
    transaction: SpanRef | None = None  # the statement that began the transaction it ran in

    def to_json(self) -> dict[str, Any]:
        return {
            "span": self.span.to_json(),
            "error_class": self.advice.error_class,
            "title": self.advice.title,
            "suggestion": self.advice.suggestion,
            "sqlstate": self.sqlstate,
            "status": self.status,
            "error_kind": self.error_kind,
            "error": self.error,
            **self.fields,
            "statement": self.statement,
            "call": self.call,
            "values": self.values,
            "sealed": self.sealed,
            "transaction": self.transaction.to_json() if self.transaction else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MutationRef:
    seq: int
    table: str
    op: str
    status: str  # committed, rolled_back, prepared, or open (not ended in the recording)
    key: dict[str, Any] | None  # None when sealed
    span_id: str
    query_span_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "table": self.table, "op": self.op, "status": self.status,
            "key": self.key, "span_id": self.span_id, "query_span_id": self.query_span_id,
        }  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Why:
    trace_id: str
    failed: bool
    outcome: str  # one line: "GET /users → 500", or what failed for a trace without a request
    root: SpanRef | None
    cause: Cause | None
    ancestors: list[SpanRef]  # root first, down to the cause's parent
    preceding: list[SpanRef]  # the last spans that started before the cause (not ancestors)
    preceding_omitted: int
    mutations: list[MutationRef]  # the row changes the trace made before the cause
    consequences: list[SpanRef]  # other failing spans: what the cause led to
    handled: list[SpanRef]  # failing spans of an execution that did not fail

    def mutation_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.mutations:
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "failed": self.failed,
            "outcome": self.outcome,
            "root": self.root.to_json() if self.root else None,
            "cause": self.cause.to_json() if self.cause else None,
            "ancestors": [s.to_json() for s in self.ancestors],
            "preceding": [s.to_json() for s in self.preceding],
            "preceding_omitted": self.preceding_omitted,
            "mutations": [m.to_json() for m in self.mutations],
            "mutation_counts": self.mutation_counts(),
            "consequences": [s.to_json() for s in self.consequences],
            "handled": [s.to_json() for s in self.handled],
        }


def explain(trace_id: str, events: Sequence[StoredEvent]) -> Why:
    index = SpanIndex(events)
    failing = [(s, f) for s in index.events if (f := failure_of(s.event)) is not None]
    root = index.root
    root_failure = failure_of(root.event) if root is not None else None
    failed = root_failure is not None if root is not None else bool(failing)
    outcome = _outcome(index, root, failing)
    if not failed:
        return Why(
            trace_id=trace_id, failed=False, outcome=outcome,
            root=index.ref(root) if root else None, cause=None, ancestors=[], preceding=[],
            preceding_omitted=0, mutations=[], consequences=[],
            handled=[index.ref(s) for s, _ in failing],
        )  # fmt: skip
    cause_event, failure = _first_cause(index, failing)
    ancestors = index.ancestors(cause_event)
    above = {s.id for s in ancestors}
    # Before it failed: started before it ended. For a request that failed on its own,
    # that is everything it did; for a query, what ran before it and alongside it.
    failed_at = end_ns(cause_event.event)
    before = [
        s
        for s in index.events
        if s.event.start_ns < failed_at
        and s is not cause_event
        and s.id not in above
        and s.event.kind != MUTATION
    ]
    shown = before[-PRECEDING_LIMIT:]
    return Why(
        trace_id=trace_id,
        failed=True,
        outcome=outcome,
        root=index.ref(root) if root else None,
        cause=_cause(index, cause_event, failure),
        ancestors=[index.ref(s) for s in ancestors],
        preceding=[index.ref(s) for s in shown],
        preceding_omitted=len(before) - len(shown),
        mutations=_mutations(index, cause_event),
        consequences=[index.ref(s) for s, _ in failing if s.id != cause_event.id],
        handled=[],
    )


def _outcome(
    index: SpanIndex, root: StoredEvent | None, failing: list[tuple[StoredEvent, Failure]]
) -> str:
    if root is not None:
        attrs = root.event.attrs
        status = attrs.get("status")
        return f"{attrs.get('method', '?')} {attrs.get('path', '')} → {status or 'no response'}"
    if failing:
        return f"{len(failing)} failing span(s), no inbound request"
    return f"{len(index.events)} span(s), no inbound request, none failed"


def _first_cause(
    index: SpanIndex, failing: list[tuple[StoredEvent, Failure]]
) -> tuple[StoredEvent, Failure]:
    explained: set[int] = set()
    for s, _ in failing:
        explained.update(a.id for a in index.ancestors(s))
    own = [(s, f) for s, f in failing if s.id not in explained] or failing
    return min(own, key=lambda item: (item[1].tier, end_ns(item[0].event), item[0].seq))


def _cause(index: SpanIndex, s: StoredEvent, failure: Failure) -> Cause:
    e = s.event
    values = values_of(e.payload)
    sealed = values is None and bool(e.payload)
    if e.kind == PG_QUERY:
        error = values.get("error") if values else None
        fields = {
            name: str(error[code])
            for code, name in _PG_FIELDS.items()
            if isinstance(error, Mapping) and error.get(code)
        }
        sql = sql_texts(values) if values else []
        statement = "; ".join(sql or statements(e)) or None
        shown = {"parameters": values.get("params")} if values and values.get("params") else None
        if failure.sqlstate is not None:
            advice = for_sqlstate(failure.sqlstate, fields.get("message"))
        else:
            advice = for_connection(failure.error_kind or "connection_lost", "the database")
        return Cause(
            span=index.ref(s), advice=advice, sqlstate=failure.sqlstate,
            error_kind=failure.error_kind, error=failure.error, fields=fields,
            statement=statement, values=shown, sealed=sealed,
            transaction=_transaction_start(index, s),
        )  # fmt: skip
    target = call_target(e) if e.kind in HTTP_KINDS else e.kind
    host = f"{e.attrs.get('host', '?')}:{e.attrs.get('port', '')}"
    if failure.error_kind is not None:
        advice = for_connection(failure.error_kind, "the app" if e.kind == HTTP_INBOUND else host)
    elif e.kind == HTTP_INBOUND:
        advice = for_inbound_status(failure.status, target)
    elif failure.status is not None:
        retry_after, reason = _header(e.attrs, "retry-after"), as_str(e.attrs.get("reason"))
        advice = for_call_status(failure.status, host, retry_after, reason)
    else:
        advice = Advice("error", "error", "read the span's details with `flux trace`")
    return Cause(
        span=index.ref(s), advice=advice, status=failure.status, error_kind=failure.error_kind,
        error=failure.error, call=target if e.kind in HTTP_KINDS else None,
        values=_http_values(values) if values else None, sealed=sealed,
    )  # fmt: skip


def _header(attrs: Mapping[str, Any], name: str) -> str | None:
    for pair in attrs.get("response_headers") or ():
        if isinstance(pair, list) and len(pair) == 2 and str(pair[0]).lower() == name:
            return as_str(pair[1])
    return None


def _http_values(values: Mapping[str, Any]) -> dict[str, Any] | None:
    shown: dict[str, Any] = {}
    if values.get("query"):
        shown["query"] = values["query"]
    for key in ("request_body", "response_body"):
        body = values.get(key)
        if isinstance(body, bytes) and body:
            shown[key] = body_text(body)
    return shown or None


def body_text(body: bytes, width: int = BODY_WIDTH) -> str:
    """A body for display: its text when it is UTF-8, else its size."""
    try:
        return clip(body.decode().strip(), width)
    except UnicodeDecodeError:
        return f"<{len(body)} bytes>"


def _transaction_start(index: SpanIndex, s: StoredEvent) -> SpanRef | None:
    """The statement of this trace that opened the transaction ``s`` ran in, on its
    connection; None in autocommit."""
    if s.event.attrs.get("status_before") not in ("T", "E"):
        return None
    start = None
    for other in index.events:
        if other is s:
            break
        if other.event.kind != PG_QUERY or other.event.conn_id != s.event.conn_id:
            continue
        if other.event.attrs.get("status_before") == "I":
            start = other
    return index.ref(start) if start is not None else None


def _mutations(index: SpanIndex, cause: StoredEvent) -> list[MutationRef]:
    out = []
    for s in index.events:
        e = s.event
        if e.kind != MUTATION or e.start_ns > end_ns(cause.event) or e.attrs.get("key_changed"):
            continue
        values = values_of(e.payload)
        key = values.get("key") if values else None
        out.append(
            MutationRef(
                seq=s.seq,
                table=str(e.attrs.get("table", "?")),
                op=str(e.attrs.get("op", "?")),
                status=str(e.attrs.get("status") or "open"),
                key=dict(key) if isinstance(key, Mapping) else None,
                span_id=e.span_id,
                query_span_id=e.parent_span_id,
            )
        )
    return out
