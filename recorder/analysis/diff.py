"""``flux trace diff``: two executions compared span by span.

Spans are aligned by a key (kind plus statement fingerprint, call target or table)
with a sequence alignment over each execution's spans in start order, so repeats pair
up in order. Within a stretch that differs, spans of the same kind pair up by a second
alignment on kinds alone: a query whose text changed is one changed span, not one
removed and one added.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from protocols import pgwire
from recorder.model import MUTATION, PG_QUERY, PG_SESSION, UDP, Event, StoredEvent
from recorder.pgdecode import iter_messages

from .spans import (
    HTTP_KINDS,
    SpanIndex,
    SpanRef,
    as_str,
    call_target,
    sql_texts,
    statements,
    values_of,
)
from .why import body_text

DEFAULT_THRESHOLD_MS: Final = 10.0
DEFAULT_RATIO: Final = 1.5
_DATA_ROW: Final = frozenset(b"D")

Op = Literal["same", "changed", "only_a", "only_b"]


@dataclass(frozen=True, slots=True)
class Change:
    field: str  # statement, parameters, tags, rows, row_values, status, sqlstate, ...
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "a": self.a, "b": self.b}


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanDiff:
    op: Op
    a: SpanRef | None
    b: SpanRef | None
    changes: list[Change] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "a": self.a.to_json() if self.a else None,
            "b": self.b.to_json() if self.b else None,
            "changes": [c.to_json() for c in self.changes],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceDiff:
    a: str
    b: str
    duration_a_ms: float
    duration_b_ms: float
    spans: list[SpanDiff]
    threshold_ms: float
    ratio: float

    def count(self, op: Op) -> int:
        return sum(1 for s in self.spans if s.op == op)

    @property
    def differs(self) -> bool:
        return any(s.op != "same" for s in self.spans)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "duration_a_ms": round(self.duration_a_ms, 3),
            "duration_b_ms": round(self.duration_b_ms, 3),
            "threshold_ms": self.threshold_ms,
            "ratio": self.ratio,
            "differs": self.differs,
            "summary": {op: self.count(op) for op in ("same", "changed", "only_a", "only_b")},
            "spans": [s.to_json() for s in self.spans],
        }


def span_key(e: Event) -> str:
    """What makes two spans of two executions "the same span"."""
    if e.kind == PG_QUERY:
        return f"{e.kind} {e.fingerprint or '; '.join(statements(e))}"
    if e.kind in HTTP_KINDS:
        return f"{e.kind} {call_target(e)}"
    if e.kind == MUTATION:
        return f"{e.kind} {e.attrs.get('op')} {e.attrs.get('table')}"
    if e.kind == UDP:
        return f"{e.kind} {e.fingerprint or e.attrs.get('qname', '')}"
    return e.kind


def diff(
    a_id: str,
    a_events: Sequence[StoredEvent],
    b_id: str,
    b_events: Sequence[StoredEvent],
    *,
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
    ratio: float = DEFAULT_RATIO,
) -> TraceDiff:
    """A latency change is reported when it is at least ``threshold_ms`` and at least
    ``ratio`` times the faster one: both bounds, so noise on fast spans stays quiet."""
    a_index = SpanIndex([s for s in a_events if s.event.kind != PG_SESSION])
    b_index = SpanIndex([s for s in b_events if s.event.kind != PG_SESSION])
    a_spans, b_spans = a_index.events, b_index.events
    out: list[SpanDiff] = []

    def pair(x: StoredEvent, y: StoredEvent) -> None:
        changes = compare(x.event, y.event) + _latency(x.event, y.event, threshold_ms, ratio)
        out.append(
            SpanDiff(
                op="changed" if changes else "same",
                a=a_index.ref(x),
                b=b_index.ref(y),
                changes=changes,
            )
        )

    def only(spans: Sequence[StoredEvent], side: Literal["a", "b"]) -> None:
        for s in spans:
            if side == "a":
                out.append(SpanDiff(op="only_a", a=a_index.ref(s), b=None))
            else:
                out.append(SpanDiff(op="only_b", a=None, b=b_index.ref(s)))

    keys = difflib.SequenceMatcher(
        None, [span_key(s.event) for s in a_spans], [span_key(s.event) for s in b_spans],
        autojunk=False,
    )  # fmt: skip
    for tag, i1, i2, j1, j2 in keys.get_opcodes():
        if tag == "equal":
            for x, y in zip(a_spans[i1:i2], b_spans[j1:j2], strict=True):
                pair(x, y)
            continue
        a_part, b_part = a_spans[i1:i2], b_spans[j1:j2]
        kinds = difflib.SequenceMatcher(
            None, [s.event.kind for s in a_part], [s.event.kind for s in b_part], autojunk=False
        )
        for ktag, k1, k2, l1, l2 in kinds.get_opcodes():
            if ktag == "equal":
                for x, y in zip(a_part[k1:k2], b_part[l1:l2], strict=True):
                    pair(x, y)
            else:
                only(a_part[k1:k2], "a")
                only(b_part[l1:l2], "b")
    return TraceDiff(
        a=a_id,
        b=b_id,
        duration_a_ms=(a_index.end_ns - a_index.start_ns) / 1e6,
        duration_b_ms=(b_index.end_ns - b_index.start_ns) / 1e6,
        spans=out,
        threshold_ms=threshold_ms,
        ratio=ratio,
    )


def _latency(a: Event, b: Event, threshold_ms: float, ratio: float) -> list[Change]:
    da, db = a.duration_ns / 1e6, b.duration_ns / 1e6
    slow, fast = max(da, db), min(da, db)
    if slow - fast >= threshold_ms and slow >= fast * ratio:
        return [Change("duration_ms", round(da, 3), round(db, 3))]
    return []


def compare(a: Event, b: Event) -> list[Change]:
    """What differs between two spans of the same kind, beyond their timing."""
    changes: list[Change] = []

    def check(name: str, x: Any, y: Any) -> None:
        if x != y:
            changes.append(Change(name, x, y))

    va, vb = values_of(a.payload), values_of(b.payload)
    if a.kind == PG_QUERY:
        check("statement", "; ".join(statements(a)), "; ".join(statements(b)))
        if va is not None and vb is not None:
            if not changes:  # same statement: a literal that changed is a parameter change
                check("sql", sql_texts(va), sql_texts(vb))
            check("parameters", va.get("params"), vb.get("params"))
        check("tags", a.attrs.get("tags"), b.attrs.get("tags"))
        check("rows", a.attrs.get("rows"), b.attrs.get("rows"))
        check("sqlstate", a.attrs.get("sqlstate"), b.attrs.get("sqlstate"))
        if va is not None and vb is not None:
            check("error", _message(va), _message(vb))
            if a.attrs.get("rows") == b.attrs.get("rows"):
                changes.extend(_row_values(va, vb))
    elif a.kind in HTTP_KINDS:
        check("target", call_target(a), call_target(b))
        check("status", a.attrs.get("status"), b.attrs.get("status"))
        check("error", a.attrs.get("error_kind"), b.attrs.get("error_kind"))
        if va is not None and vb is not None:
            check("query", va.get("query"), vb.get("query"))
            for key in ("request_body", "response_body"):
                if va.get(key) != vb.get(key):
                    changes.append(Change(key, _body(va.get(key)), _body(vb.get(key))))
        elif a.attrs.get("response_body_size") != b.attrs.get("response_body_size"):
            check("response_body_size", a.attrs.get("response_body_size"),
                  b.attrs.get("response_body_size"))  # fmt: skip
    elif a.kind == MUTATION:
        check("status", a.attrs.get("status"), b.attrs.get("status"))
        check("changed", a.attrs.get("changed"), b.attrs.get("changed"))
        if va is not None and vb is not None:
            check("key", va.get("key"), vb.get("key"))
            check("after", va.get("after"), vb.get("after"))
    elif a.kind == UDP:
        for name in ("rcode", "answers", "error"):
            check(name, a.attrs.get(name), b.attrs.get(name))
    return changes


def _message(values: Mapping[str, Any]) -> str | None:
    error = values.get("error")
    return as_str(error.get("M")) if isinstance(error, Mapping) else None


def _body(value: Any) -> str | None:
    return body_text(value) if isinstance(value, bytes) else None


def _rows(values: Mapping[str, Any]) -> list[tuple[bytes | None, ...]] | None:
    backend = values.get("backend")
    if not isinstance(backend, bytes):
        return None
    messages = iter_messages(backend, backend=True, only=_DATA_ROW)
    return [m.values for m in messages if isinstance(m, pgwire.DataRow)]


def _row_values(va: Mapping[str, Any], vb: Mapping[str, Any]) -> list[Change]:
    """The first result row that differs, as text, when the counts agree."""
    rows_a, rows_b = _rows(va), _rows(vb)
    if rows_a is None or rows_b is None:
        return []
    for n, (x, y) in enumerate(zip(rows_a, rows_b, strict=False)):
        if x != y:
            return [Change(f"row {n + 1}", _row_text(x), _row_text(y))]
    return []


def _row_text(row: tuple[bytes | None, ...]) -> list[str | None]:
    return [None if v is None else body_text(v, 60) for v in row]
