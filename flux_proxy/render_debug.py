"""Output of ``flux why``, ``flux trace diff`` and ``flux tail``: rich for people, JSON
for programs (``tail`` writes JSON lines, one per execution, flushed as they come)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from recorder.analysis.diff import Change, SpanDiff, TraceDiff
from recorder.analysis.spans import SpanRef
from recorder.analysis.why import Cause, Why
from recorder.model import ExecutionSummary

from .render import _console, _json, _jsonable, _ms, _time

_MARKS = {"same": " ", "changed": "~", "only_a": "-", "only_b": "+"}
_STYLES = {"same": "dim", "changed": "yellow", "only_a": "red", "only_b": "green"}


def _span(ref: SpanRef) -> str:
    line = f"#{ref.seq} {ref.kind}  {escape(ref.what)}"
    return f"[red]{line}[/red]" if ref.error else line


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


# -- why ------------------------------------------------------------------------------------


def why(result: Why, output: str) -> int:
    if output == "json":
        return _json(result.to_json())
    console = _console()
    head = f"[bold]trace {result.trace_id}[/bold]  {escape(result.outcome)}"
    if not result.failed:
        console.print(f"{head}  [green]did not fail[/green]")
        if result.handled:
            console.print(f"{len(result.handled)} span(s) failed and the execution went on:")
            for ref in result.handled:
                console.print(f"  {_span(ref)}")
        return 0
    console.print(f"{head}  [red]failed[/red]")
    cause = result.cause
    assert cause is not None
    _cause(console, cause)
    if result.ancestors or result.preceding:
        console.print("[bold]how it got there[/bold]")
        for ref in result.ancestors:
            console.print(f"  {_span(ref)}  [dim](contains it)[/dim]")
        if result.preceding_omitted:
            console.print(f"  [dim]... {result.preceding_omitted} earlier span(s)[/dim]")
        for ref in result.preceding:
            same = ref.conn_id is not None and ref.conn_id == cause.span.conn_id
            note = "  [dim](same connection)[/dim]" if same and ref.kind == "pg.query" else ""
            console.print(f"  {_span(ref)}  [dim]+{_ms(int(ref.offset_ms * 1e6))}[/dim]{note}")
    _mutations(console, result)
    if result.consequences:
        console.print("[bold]what it led to[/bold]")
        for ref in result.consequences:
            console.print(f"  {_span(ref)}")
    console.print("[bold]suggestion[/bold]")
    console.print(Padding(Text(cause.advice.suggestion), (0, 0, 0, 2)))  # wraps indented
    return 0


def _cause(console: Any, cause: Cause) -> None:
    ref = cause.span
    console.print(
        f"[bold]failed first[/bold]  #{ref.seq} {ref.kind} (span {ref.span_id}) at "
        f"+{ref.offset_ms:.2f}ms, took {ref.duration_ms:.2f}ms"
    )
    reason = cause.fields.get("message") or cause.error or ""
    console.print(
        f"  [red]{escape(cause.advice.title)}[/red]" + (f": {escape(reason)}" if reason else "")
    )
    for name in ("detail", "hint", "constraint", "table", "column", "where"):
        if cause.fields.get(name):
            console.print(f"  {name}: {escape(cause.fields[name])}")
    if cause.statement:
        console.print(f"  statement: {escape(cause.statement)}")
    if cause.call:
        console.print(f"  call: {escape(cause.call)}")
    for name, value in (cause.values or {}).items():
        if name == "parameters" and isinstance(value, list) and len(value) == 1:
            value = value[0]  # one execution: its values, not a list of one list
        console.print(f"  {name}: {escape(_value(value))}")
    if cause.sealed:
        console.print("  [dim]values: [encrypted] (give --private-key to see them)[/dim]")
    if cause.transaction is not None:
        t = cause.transaction
        console.print(f"  in the transaction begun at #{t.seq}: {escape(t.what)}")


def _mutations(console: Any, result: Why) -> None:
    if not result.mutations:
        return
    counts = ", ".join(
        f"{n} {status.replace('_', ' ')}" for status, n in result.mutation_counts().items()
    )
    console.print(f"[bold]rows changed before the failure[/bold] ({counts})")
    for m in result.mutations:
        key = _value(m.key) if m.key is not None else "[encrypted]"
        style = "yellow" if m.status == "committed" else "dim"
        console.print(
            f"  #{m.seq} {m.op} {escape(m.table)} {escape(key)}  "
            f"[{style}]{m.status.replace('_', ' ')}[/{style}]"
        )
    if any(m.status == "committed" for m in result.mutations):
        console.print("  [yellow]committed changes stay after the failure: a retry must not "
                      "apply them twice[/yellow]")  # fmt: skip


# -- trace diff -----------------------------------------------------------------------------


def trace_diff(result: TraceDiff, output: str) -> int:
    if output == "json":
        _json(result.to_json())
        return 1 if result.differs else 0
    console = _console()
    a_spans = sum(1 for s in result.spans if s.a is not None)
    b_spans = sum(1 for s in result.spans if s.b is not None)
    console.print(
        f"[bold]trace diff[/bold]  a {result.a} ({a_spans} spans, {result.duration_a_ms:.2f}ms)"
        f"  →  b {result.b} ({b_spans} spans, {result.duration_b_ms:.2f}ms)"
    )
    console.print(f"[dim]  {'a':>5} {'b':>5}[/dim]")
    for span in result.spans:
        _diff_row(console, span)
    summary = (
        f"{result.count('changed')} changed, {result.count('only_a')} only in a, "
        f"{result.count('only_b')} only in b, {result.count('same')} same "
        f"(latency reported beyond {result.threshold_ms:g}ms and ×{result.ratio:g})"
    )
    console.print(summary if result.differs else f"no differences: {summary}")
    return 1 if result.differs else 0


def _diff_row(console: Any, span: SpanDiff) -> None:
    style, mark = _STYLES[span.op], _MARKS[span.op]
    seqs = " ".join(f"{f'#{ref.seq}' if ref else '-':>5}" for ref in (span.a, span.b))
    shown = span.b if span.op == "only_b" else span.a
    assert shown is not None
    console.print(f"[{style}]{mark} {seqs} {shown.kind:<13} {escape(shown.what)}[/{style}]")
    for change in span.changes:
        console.print(f"[yellow]      {escape(_change(change))}[/yellow]")


def _change(change: Change) -> str:
    if change.field == "duration_ms":
        return f"latency: {_ms(int(change.a * 1e6))} → {_ms(int(change.b * 1e6))}"
    return f"{change.field}: {_value(change.a)} → {_value(change.b)}"


# -- tail -----------------------------------------------------------------------------------


def tail_line(row: ExecutionSummary, output: str) -> None:
    if output == "json":
        record = {
            "time": _time(row.start_ns),
            "trace_id": row.trace_id,
            "method": row.method,
            "path": row.path,
            "status": row.status,
            "duration_ms": row.duration_ns / 1e6,
            "queries": row.queries,
            "calls": row.calls,
            "errors": row.errors,
            "events": row.events,
            "root_kind": row.root_kind,
            "start_ns": row.start_ns,
            "end_ns": row.end_ns,
        }
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        return
    request = f"{row.method} {row.path}" if row.method else f"({row.root_kind or '?'})"
    status = f"{'-' if row.status is None else row.status:>3}"
    if row.status is not None and row.status >= 500:
        status = f"[red]{status}[/red]"
    elif row.status is not None and row.status >= 400:
        status = f"[yellow]{status}[/yellow]"
    errors = f"[red]{row.errors} err[/red]" if row.errors else "0 err"
    _console().print(
        f"{_time(row.start_ns)}  {row.trace_id}  {escape(f'{request:<36}')} {status} "
        f"{_ms(row.duration_ns):>10}  {row.queries:>3}q {row.calls:>2}c  {errors}",
        soft_wrap=True,  # one line per execution, whatever the terminal's width: greppable
    )
    sys.stdout.flush()
