"""What ``flux trace debug`` shows of one span, as plain data: no terminal, no Textual.

A span's details are titled sections of text lines (the request, the response),
the result sets it returned (decoded from the recorded backend messages) and the
mutations made under it. Values sealed to a key we were not given read as
``[encrypted]``; the plaintext half of the event (normalized SQL, command tags,
SQLSTATE, method, path, status, header names) is shown either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from protocols import pgwire
from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, MUTATION, PG_QUERY, StoredEvent
from recorder.pgdecode import iter_messages
from recorder.pgtypes import display_binary
from recorder.store import SEALED_MARKER, UNREADABLE_MARKER

from .render_tree import span_tree

ENCRYPTED: Final = "[encrypted]"
UNREADABLE: Final = "[unreadable]"
MAX_ROWS: Final = 500  # per result set: a debugger shows a sample, the record keeps all
MAX_BODY: Final = 4000  # characters of a body
_RESULT_MESSAGES: Final = frozenset(b"TDC")
# ErrorResponse fields worth a line, in the order psql prints them.
_ERROR_FIELDS: Final = (("M", "message"), ("D", "detail"), ("H", "hint"), ("W", "where"),
                        ("s", "schema"), ("t", "table"), ("c", "column"), ("n", "constraint"),
                        ("P", "position"))  # fmt: skip


@dataclass(slots=True)
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ResultSet:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    tag: str | None = None
    hidden: int = 0  # rows beyond MAX_ROWS


@dataclass(slots=True)
class SpanDetails:
    title: str
    sections: list[Section]
    results: list[ResultSet] = field(default_factory=list)
    mutations: list[list[str]] = field(default_factory=list)  # table, op, key, status, change


MUTATION_COLUMNS: Final = ("table", "op", "key", "status", "before → after")


def sealed(payload: dict[str, Any]) -> str | None:
    """``[encrypted]`` or ``[unreadable] why`` for a payload that did not open, else None."""
    if len(payload) == 1 and SEALED_MARKER in payload:
        return ENCRYPTED
    if len(payload) == 1 and UNREADABLE_MARKER in payload:
        return f"{UNREADABLE} {payload[UNREADABLE_MARKER]}"
    return None


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}ms"


def _value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_nested)


def _nested(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)


def _body(data: Any, size: Any, truncated: Any) -> str:
    if not isinstance(data, bytes):
        return "(none)" if not size else f"({size} bytes, not kept)"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = f"<{len(data)} bytes> {data[:64].hex()}{'…' if len(data) > 64 else ''}"
    if len(text) > MAX_BODY:
        text = text[:MAX_BODY] + f"… ({len(text) - MAX_BODY} more characters)"
    if truncated:
        text += f"\n(recording kept the first {len(data)} of {size} bytes)"
    return text


class SpanIndex:
    """The events of one execution in tree order, with what each span's view needs."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self.tree = span_tree(events)
        self.start_ns = min((s.event.start_ns for s in events), default=0)
        self._descendants: dict[int, list[StoredEvent]] = {}
        stack: list[tuple[int, StoredEvent]] = []
        for depth, s in self.tree:
            while stack and stack[-1][0] >= depth:
                stack.pop()
            for _, ancestor in stack:
                self._descendants.setdefault(ancestor.id, []).append(s)
            self._descendants.setdefault(s.id, [])
            stack.append((depth, s))

    def mutations_of(self, span: StoredEvent) -> list[StoredEvent]:
        """The span itself if it is a mutation, else the mutations made under it."""
        if span.event.kind == MUTATION:
            return [span]
        return [s for s in self._descendants.get(span.id, []) if s.event.kind == MUTATION]

    def details(self, span: StoredEvent) -> SpanDetails:
        e = span.event
        header = Section("span", [
            f"{e.kind} #{span.seq}   +{_ms(e.start_ns - self.start_ns)}   "
            f"duration {_ms(e.duration_ns)}" + ("   ✗ error" if e.error else ""),
            f"span {e.span_id}   parent {e.parent_span_id or '-'}",
        ])  # fmt: skip
        if e.conn_id:
            header.lines.append(f"connection {e.conn_id}")
        if e.kind == PG_QUERY:
            out = _pg_details(span)
        elif e.kind in (HTTP_INBOUND, HTTP_OUTBOUND):
            out = _http_details(span)
        elif e.kind == MUTATION:
            out = SpanDetails(f"{e.attrs.get('op')} {e.attrs.get('table')}", [])
        else:
            out = _generic_details(span)
        out.sections.insert(0, header)
        out.mutations = [mutation_row(m) for m in self.mutations_of(span)]
        return out


def _pg_details(span: StoredEvent) -> SpanDetails:
    attrs, payload = span.event.attrs, span.event.payload
    closed = sealed(payload)
    statements = [s.get("normalized", "") for s in attrs.get("statements") or []]
    request = Section("request")
    if closed:
        request.lines += [f"SQL (literals stripped): {sql}" for sql in statements]
        request.lines.append(f"SQL text and parameters: {closed}")
    else:
        request.lines += [f"SQL: {sql}" for sql in payload.get("sql") or statements]
        for n, params in enumerate(payload.get("params") or [], 1):
            shown = ", ".join(f"${i}={_value(v)}" for i, v in enumerate(params, 1))
            request.lines.append(f"parameters (execution {n}): {shown or 'none'}")
    if attrs.get("protocol"):
        request.lines.append(f"protocol: {attrs['protocol']}")
    response = Section("response")
    tags = [t for t in attrs.get("tags") or [] if t]
    response.lines.append(f"command tag: {', '.join(tags) if tags else '(none)'}")
    response.lines.append(f"rows: {attrs.get('rows', 0)}")
    if attrs.get("sqlstate"):
        response.lines.append(f"ERROR SQLSTATE {attrs['sqlstate']} ({attrs.get('severity')})")
        error = payload.get("error") if not closed else None
        if isinstance(error, dict):
            response.lines += [f"  {name}: {error[code]}" for code, name in _ERROR_FIELDS
                               if error.get(code)]  # fmt: skip
        elif closed:
            response.lines.append(f"  message: {closed}")
    if not attrs.get("complete", True):
        response.lines.append("the connection ended mid-cycle")
    for notice in payload.get("notices") or [] if not closed else []:
        response.lines.append(f"{notice.get('S', 'NOTICE')}: {notice.get('M', '')}")
    results: list[ResultSet] = []
    if closed:
        response.lines.append(f"result rows: {closed}")
    elif isinstance(payload.get("backend"), bytes):
        results = result_sets(payload["backend"])
    title = statements[0] if len(statements) == 1 else f"{len(statements)} statements"
    return SpanDetails(title, [request, response], results)


def result_sets(backend: bytes) -> list[ResultSet]:
    """The rows of a cycle's backend messages, one set per RowDescription."""
    sets: list[ResultSet] = []
    fields: tuple[pgwire.FieldDescription, ...] = ()
    current: ResultSet | None = None
    for message in iter_messages(backend, backend=True, only=_RESULT_MESSAGES):
        if isinstance(message, pgwire.RowDescription):
            fields = message.fields
            current = ResultSet([f.name for f in fields])
            sets.append(current)
        elif isinstance(message, pgwire.DataRow):
            if current is None:  # described in an earlier cycle
                current = ResultSet([f"column {i}" for i in range(1, len(message.values) + 1)])
                sets.append(current)
            if len(current.rows) >= MAX_ROWS:
                current.hidden += 1
                continue
            current.rows.append([_cell(v, fields[i] if i < len(fields) else None)
                                 for i, v in enumerate(message.values)])  # fmt: skip
        elif isinstance(message, pgwire.CommandComplete):
            if current is not None and current.tag is None:
                current.tag = message.tag
            current = None
    return sets


def _cell(value: bytes | None, described: pgwire.FieldDescription | None) -> str:
    if value is None:
        return "NULL"
    if described is not None and described.format == 1:
        return _value(display_binary(value, described.type_oid))
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "\\x" + value.hex()


def _headers(attrs: dict[str, Any], payload: dict[str, Any], side: str) -> list[str]:
    """Header fields in order; credential values come from the payload, or read as sealed."""
    closed = sealed(payload)
    secrets = iter([] if closed else payload.get(f"{side}_secrets") or [])
    lines = []
    for name, value in attrs.get(f"{side}_headers") or []:
        shown = value if value is not None else closed or next(secrets, "(not kept)")
        lines.append(f"  {_value(name)}: {_value(shown)}")
    return lines or ["  (none)"]


def _http_details(span: StoredEvent) -> SpanDetails:
    e = span.event
    attrs, payload = e.attrs, e.payload
    closed = sealed(payload)
    method = attrs.get("method", "?")
    if e.kind == HTTP_INBOUND:
        url = str(attrs.get("path", ""))
    else:
        url = f"{attrs.get('scheme', '')}://{attrs.get('host', '?')}:{attrs.get('port', '')}"
        url += str(attrs.get("path", ""))
    query = closed if closed else payload.get("query")
    if query:
        url += f"?{query}"
    request = Section("request", [f"{method} {url} {attrs.get('http_version', '')}".rstrip()])
    request.lines.append("headers:")
    request.lines += _headers(attrs, payload, "request")
    request.lines.append("body:")
    request.lines.append(closed or _body(payload.get("request_body"), attrs.get(
        "request_body_size"), attrs.get("request_body_truncated")))  # fmt: skip
    response = Section("response")
    status = attrs.get("status")
    if status is None:
        response.lines.append("status: no response")
    else:
        response.lines.append(f"status: {status} {attrs.get('reason', '')}".rstrip())
    if attrs.get("error"):
        response.lines.append(f"error ({attrs.get('error_kind', 'other')}): {attrs['error']}")
    timings = [f"{label} {_ms(attrs[key])}" for key, label in
               (("connect_ns", "connect"), ("tls_ns", "tls"), ("first_byte_ns", "first byte"))
               if isinstance(attrs.get(key), int)]  # fmt: skip
    if timings:
        response.lines.append("timings: " + ", ".join(timings))
    if status is not None:
        response.lines.append("headers:")
        response.lines += _headers(attrs, payload, "response")
        response.lines.append("body:")
        response.lines.append(closed or _body(payload.get("response_body"), attrs.get(
            "response_body_size"), attrs.get("response_body_truncated")))  # fmt: skip
    return SpanDetails(f"{method} {url} → {status}", [request, response])


def _generic_details(span: StoredEvent) -> SpanDetails:
    attrs, payload = span.event.attrs, span.event.payload
    lines = [f"{k}: {_value(v)}" for k, v in attrs.items()]
    values = Section("values")
    closed = sealed(payload)
    if closed:
        values.lines.append(closed)
    else:
        values.lines += [f"{k}: {_nested(v) if isinstance(v, bytes) else _value(v)}"
                         for k, v in payload.items()]  # fmt: skip
    return SpanDetails(span.event.kind, [Section("attributes", lines), values])


def _image(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def mutation_row(span: StoredEvent) -> list[str]:
    """table, op, key, status, and the change: ``column: before → after`` per changed column."""
    attrs, payload = span.event.attrs, span.event.payload
    closed = sealed(payload)
    key_columns = attrs.get("key_columns") or []
    if closed:
        key = ", ".join(f"{c}={closed}" for c in key_columns) or closed
        change = f"{', '.join(attrs.get('changed') or [])}: {closed}"
    else:
        key = ", ".join(f"{c}={v}" for c, v in (payload.get("key") or {}).items())
        before, after = _image(payload.get("before")), _image(payload.get("after"))
        columns = attrs.get("changed") or sorted(set(before or {}) | set(after or {}))
        change = "; ".join(f"{c}: {_side(before, c)} → {_side(after, c)}" for c in columns)
    status = str(attrs.get("status", "open"))
    return [str(attrs.get("table", "?")), str(attrs.get("op", "?")), key, status, change]


def _side(image: dict[str, Any] | None, column: str) -> str:
    if image is None:
        return "∅"
    return _value(image.get(column))
