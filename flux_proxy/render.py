"""Output of the read commands: rich for people, JSON for programs."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recorder.model import MUTATION, PG_QUERY, PG_SESSION, UDP, ExecutionSummary, StoredEvent
from recorder.store import SEALED_MARKER, UNREADABLE_MARKER

from .render_tree import HTTP_KINDS, describe_http, span_tree

ENCRYPTED = "[encrypted]"  # a payload sealed to a key we were not given
UNREADABLE = "[unreadable]"  # a payload that failed authentication or is damaged
_RAW = ("frontend", "backend")  # wire bytes, kept for replay; too long to show
_VALUES_WIDTH = 160


def _console() -> Console:
    # Piped output is read by people too (less, CI logs): do not squeeze it to 80 columns.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(highlight=False, soft_wrap=False, width=width)


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}ms"


def _json(value: Any) -> int:
    json.dump(value, sys.stdout, indent=2, default=_jsonable)
    sys.stdout.write("\n")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def traces(rows: list[ExecutionSummary], output: str) -> int:
    if output == "json":
        return _json(
            [
                {
                    "trace_id": r.trace_id,
                    "start": _time(r.start_ns),
                    "start_ns": r.start_ns,
                    "duration_ms": r.duration_ns / 1e6,
                    "queries": r.queries,
                    "calls": r.calls,
                    "events": r.events,
                    "errors": r.errors,
                    "method": r.method,
                    "path": r.path,
                    "status": r.status,
                }
                for r in rows
            ]
        )
    table = Table(title="recent executions", title_justify="left")
    table.add_column("trace id", no_wrap=True, min_width=32)
    for column in ("start (UTC)", "duration", "request", "queries", "calls", "errors"):
        table.add_column(column, no_wrap=column != "request")
    for r in rows:
        request = f"{r.method} {r.path} → {r.status}" if r.method else "-"
        errors = f"[red]{r.errors}[/red]" if r.errors else "0"
        table.add_row(
            r.trace_id,
            _time(r.start_ns),
            _ms(r.duration_ns),
            request,
            str(r.queries),
            str(r.calls),
            errors,
        )
    if not rows:
        _console().print("no executions recorded yet")
        return 0
    _console().print(table)
    return 0


def describe(event: StoredEvent) -> str:
    """One line saying what a span was, from its plaintext fields."""
    e = event.event
    attrs = e.attrs
    if e.kind == PG_QUERY:
        statements = attrs.get("statements") or []
        sql = "; ".join(s.get("normalized", "") for s in statements) or "(no statement)"
        tags = ", ".join(t for t in attrs.get("tags", []) if t)
        parts = [sql if len(sql) <= 100 else sql[:97] + "..."]
        if tags:
            parts.append(f"→ {tags}")
        if attrs.get("sqlstate"):
            parts.append(f"ERROR {attrs['sqlstate']}")
        if not attrs.get("complete", True):
            parts.append("(connection ended mid-cycle)")
        if attrs.get("uncaptured"):
            parts.append(f"(data change not captured: {', '.join(attrs['uncaptured'])})")
        return " ".join(parts)
    if e.kind == MUTATION:
        changed = ", ".join(attrs.get("changed", ()))
        return (f"{attrs.get('op')} {attrs.get('table')} ({attrs.get('status')})"
                + (f": {changed}" if changed else ""))  # fmt: skip
    if e.kind == PG_SESSION:
        return f"session {attrs.get('user')}@{attrs.get('database')} from {attrs.get('client')}"
    if e.kind in HTTP_KINDS:
        return describe_http(e.kind, attrs)
    if e.kind == UDP:
        return _describe_udp(attrs)
    return ", ".join(f"{k}={v}" for k, v in attrs.items() if not isinstance(v, list | dict))


def _describe_udp(attrs: dict[str, Any]) -> str:
    """``DNS A example.com. → NOERROR A 192.0.2.1`` or ``udp 42 bytes → 17 bytes``."""
    sizes = attrs.get("response_bytes") or []
    if attrs.get("error"):
        outcome = f"no answer ({attrs['error']})"
    elif not attrs.get("dns"):
        outcome = " + ".join(f"{n} bytes" for n in sizes) if sizes else "no answer"
    else:
        answers = ", ".join(attrs.get("answers") or [])
        outcome = " ".join(p for p in (attrs.get("rcode") or "?", answers) if p)
        if attrs.get("tc"):
            outcome += " (truncated)"
    if not attrs.get("dns"):
        return f"udp {attrs.get('request_bytes', 0)} bytes → {outcome}"
    question = f"{attrs.get('qtype')} {attrs.get('qname')}" if attrs.get("qname") else "?"
    line = f"DNS {question} → {outcome}"
    if attrs.get("decode_error"):
        line += f" (malformed {attrs['decode_error']})"
    return line


def trace(trace_id: str, events: list[StoredEvent], output: str) -> int:
    if output == "json":
        return _json(
            {
                "trace_id": trace_id,
                "events": [
                    {
                        "seq": s.seq,
                        "kind": s.event.kind,
                        "span_id": s.event.span_id,
                        "parent_span_id": s.event.parent_span_id,
                        "conn_id": s.event.conn_id,
                        "start_ns": s.event.start_ns,
                        "duration_ms": s.event.duration_ns / 1e6,
                        "error": s.event.error,
                        "fingerprint": s.event.fingerprint,
                        "attrs": s.event.attrs,
                        **_payload_json(s.event.payload),
                    }
                    for s in events
                ],
            }
        )
    console = _console()
    if not events:
        console.print(f"trace {trace_id}: no events")
        return 0
    start = min(s.event.start_ns for s in events)
    end = max(s.event.start_ns + s.event.duration_ns for s in events)
    console.print(f"[bold]trace {trace_id}[/bold]  {_time(start)} UTC  total {_ms(end - start)}")
    table = Table(box=None, pad_edge=False)
    for column in ("#", "+offset", "duration", "kind", "span"):
        table.add_column(column, no_wrap=column != "span")
    for depth, s in span_tree(events):  # children under their parent span, in start order
        line = escape(describe(s))
        if s.event.error:
            line = f"[red]✗ {line}[/red]"
        values = payload_text(s.event.payload)
        if values:
            line += f"\n[dim]{escape(values)}[/dim]"
        table.add_row(
            str(s.seq),
            _ms(s.event.start_ns - start),
            _ms(s.event.duration_ns),
            ("  " * (depth - 1) + "└ " if depth else "") + s.event.kind,
            line,
        )
    console.print(table)
    return 0


def _payload_json(payload: dict[str, Any]) -> dict[str, Any]:
    if len(payload) == 1 and SEALED_MARKER in payload:
        return {"payload": ENCRYPTED, "payload_key_id": payload[SEALED_MARKER]}
    if len(payload) == 1 and UNREADABLE_MARKER in payload:
        return {"payload": UNREADABLE, "payload_error": payload[UNREADABLE_MARKER]}
    return {"payload": {k: v for k, v in payload.items() if k not in _RAW}}


def _short(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)


def payload_text(payload: dict[str, Any]) -> str:
    """One line of the sensitive values (SQL with literals, parameters, bodies...), or
    ``[encrypted]`` when we hold no key for them."""
    if len(payload) == 1 and SEALED_MARKER in payload:
        return ENCRYPTED
    if len(payload) == 1 and UNREADABLE_MARKER in payload:
        return f"{UNREADABLE} {payload[UNREADABLE_MARKER]}"
    parts = []
    for key, value in payload.items():
        if key in _RAW or value in (None, "", [], {}):
            continue
        if isinstance(value, bytes):
            shown = f"<{len(value)} bytes>"
        elif key == "sql" and isinstance(value, list):
            shown = "; ".join(str(v) for v in value)
        else:
            shown = json.dumps(value, default=_short, ensure_ascii=False)
        parts.append(f"{key}: {shown}")
    text = "  ".join(parts)
    return text if len(text) <= _VALUES_WIDTH else text[: _VALUES_WIDTH - 3] + "..."


def stats(values: dict[str, int], output: str) -> int:
    if output == "json":
        return _json(values)
    table = Table(box=None, show_header=False)
    table.add_column("name")
    table.add_column("value", justify="right")
    for name in sorted(values):
        table.add_row(name, f"{values[name]:,}")
    _console().print(table)
    return 0
