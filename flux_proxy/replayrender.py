"""Output of the replay commands: rich for people, JSON for programs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from recorder.replaycompare import Difference, ResponseView, excerpt

from .recordedrequest import RecordedRequest
from .replayrun import ReplayResult

T = TypeVar("T")

_COLOURS = {"same": "green", "fixed": "green", "regressed": "red", "differs": "yellow"}
_SHOWN_MISSES = 20


def console() -> Console:
    # As ``flux trace``: piped output is read by people too, do not squeeze it to 80 columns.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(highlight=False, soft_wrap=False, width=width)


def _ms(value: float) -> str:
    return f"{value:.1f}ms"


def _status(status: int | None, error: str | None = None) -> str:
    return str(status) if status is not None else f"no response ({error or 'unknown'})"


def _difference_line(d: Difference) -> str:
    where = escape(d.where)
    # JSON values as JSON, so that "100.50" → 100.5 shows the type changed too.
    as_json = d.where.startswith("$") and d.detail is None

    def shown(value: Any, limit: int) -> str:
        text = json.dumps(value, ensure_ascii=False) if as_json else value
        return escape(excerpt(text, limit))

    if d.change == "added":
        line = f"  {where}  [green]added[/green] {shown(d.new, 100)}"
    elif d.change == "removed":
        line = f"  {where}  [red]removed[/red] {shown(d.recorded, 100)}"
    else:
        line = f"  {where}  {shown(d.recorded, 80)} [bold]→[/bold] {shown(d.new, 80)}"
    if d.detail:
        line += f"  [dim]({escape(d.detail)})[/dim]"
    if d.volatile:
        hint = f"--ignore '{d.where}'" if d.where != "status" else ""
        line += f"  [dim]looks like a {escape(d.volatile)}; {escape(hint)}[/dim]"
    return line


def _miss_lines(misses: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for miss in misses[:_SHOWN_MISSES]:
        lines.append(
            f"  [red]miss[/red] {escape(str(miss.get('kind')))}  "
            f"{escape(excerpt(miss.get('request') or '', 160))}"
        )
        if miss.get("closest"):
            lines.append(f"       closest recorded: {escape(excerpt(miss['closest'], 160))}")
    if len(misses) > _SHOWN_MISSES:
        lines.append(f"  … and {len(misses) - _SHOWN_MISSES} more misses")
    return lines


def _volatile_lines(volatile: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in volatile[:_SHOWN_MISSES]:
        values = "; ".join(
            f"value {where}: {excerpt(old, 40)} → {excerpt(new, 40)}"
            for where, old, new in entry.get("differences", [])
        )
        lines.append(
            f"  [yellow]matched with volatile values[/yellow] {escape(str(entry.get('kind')))}  "
            f"{escape(excerpt(entry.get('request') or '', 100))}  [dim]{escape(values)}[/dim]"
        )
    return lines


def result(r: ReplayResult, output: str) -> int:
    if output == "json":
        json.dump(r.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return r.exit_code
    out = console()
    colour = _COLOURS[r.verdict]
    out.print(f"replay {r.trace_id}  {escape(r.method)} {escape(r.path)}")
    out.print(
        f"[bold {colour}]{r.verdict}[/bold {colour}]  recorded "
        f"{_status(r.recorded_status)} in {_ms(r.recorded_ms)} → now "
        f"{_status(r.new_status, r.new_error)} in {_ms(r.new_ms)}"
    )
    for failure in r.recorded_failures:
        out.print(f"  recording failed: {escape(failure)}")
    if r.verdict == "same" and not r.passing:
        out.print("  [red]still failing, the same way[/red]")
    if r.differences:
        out.print(f"differences ({len(r.differences) + r.left_out}):")
        for d in r.differences:
            out.print(_difference_line(d))
        if r.left_out:
            out.print(f"  … and {r.left_out} more")
    if r.ignored:
        out.print(f"[dim]{r.ignored} difference(s) ignored by --ignore[/dim]")
    out.print(
        f"inside the run: {r.hits} answer(s) from recordings, {len(r.misses)} miss(es)"
        + (f", {len(r.volatile)} with volatile values" if r.volatile else "")
    )
    for line in _miss_lines(r.misses) + _volatile_lines(r.volatile):
        out.print(line)
    for note in r.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")
    return r.exit_code


def why_failing(r: ReplayResult) -> str:
    """One line on what went wrong in a new run that did not succeed."""
    if r.new_status is None:
        return r.new_error or "no response"
    parts = [f"{r.new_status}"]
    if r.new_excerpt:
        parts.append(excerpt(r.new_excerpt, 120))
    if r.misses:
        first = r.misses[0]
        parts.append(f"{len(r.misses)} miss(es), first: {excerpt(first.get('request') or '', 80)}")
    return "; ".join(parts)


def incident(
    window: str,
    results: Sequence[ReplayResult],
    not_replayed: Sequence[tuple[str, str]],
    output: str,
) -> int:
    total = len(results) + len(not_replayed)
    passing = sum(1 for r in results if r.passing)
    code = 0 if passing == total else 1
    if output == "json":
        json.dump(
            {
                "window": window,
                "total": total,
                "passing": passing,
                "results": [r.as_dict() for r in results],
                "not_replayed": [{"trace_id": t, "reason": why} for t, why in not_replayed],
            },
            sys.stdout,
            indent=2,
            default=str,
        )
        sys.stdout.write("\n")
        return code
    out = console()
    colour = "green" if code == 0 else "red"
    out.print(f"[bold {colour}]{passing}/{total} passing[/bold {colour}]  ({escape(window)})")
    failing = [r for r in results if not r.passing]
    if failing or not_replayed:
        out.print("still failing:")
    for r in failing:
        out.print(
            f"  {r.trace_id}  {escape(r.method)} {escape(r.path)}  "
            f"recorded {_status(r.recorded_status)} → {escape(why_failing(r))}"
            f"  [dim]({r.verdict})[/dim]"
        )
    for trace, why in not_replayed:
        out.print(f"  {trace}  not replayed: {escape(why)}")
    return code


def progress(items: Sequence[T], what: str, output: str) -> Iterator[T]:
    """``items`` one by one, with a progress bar on stderr when it is a terminal."""
    bar = Console(stderr=True)
    if output == "json" or not bar.is_terminal:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (f"{what}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=bar, transient=True) as shown:
        task = shown.add_task(what, total=len(items))
        for item in items:
            yield item
            shown.advance(task)


def resumed(
    request: RecordedRequest,
    trace: str,
    response: ResponseView,
    elapsed_ns: int,
    recorded: dict[str, Any] | None,
    output: str,
) -> int:
    """What ``flux resume`` did; 0 when the new execution is recorded and succeeded."""
    if recorded is None:
        code = 2
    else:
        status = recorded.get("status")
        code = 0 if isinstance(status, int) and status < 500 else 1
    if output == "json":
        answer = {
            "resumed_from": request.trace_id,
            "trace_id": trace,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "error": response.error,
            "duration_ms": elapsed_ns / 1e6,
            "recorded": recorded,
        }
        json.dump(answer, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return code
    out = console()
    out.print(
        f"{escape(request.method)} {escape(request.path)} → "
        f"{_status(response.status, response.error)} in {_ms(elapsed_ns / 1e6)}"
    )
    if recorded is None:
        out.print(f"[red]the new execution {trace} was not recorded in time[/red]")
    else:
        colour = "green" if code == 0 else "red"
        out.print(
            f"recorded as {trace}: [{colour}]{recorded.get('status')}[/{colour}], "
            f"{recorded['queries']} queries, {recorded['calls']} calls, "
            f"{recorded['errors']} errors  (flux trace {trace})"
        )
    return code
