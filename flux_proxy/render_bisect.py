"""Output of ``flux bug bisect``: a progress bar and one line per tested commit on stderr,
the result on stdout (rich for people, one JSON document for programs)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

_COLOUR = {"good": "green", "bad": "red", "skip": "yellow"}
_SHOWN_DIFFERENCES = 20


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


class Progress:
    """A bar of replays done against the estimate of replays needed, and one line per
    tested commit above it, on stderr: stdout keeps the result (or the JSON) alone."""

    def __init__(self, bar: RichProgress, task: TaskID) -> None:
        self.bar, self.task = bar, task

    def advance(self, done: int, total: int, commit: str, title: str) -> None:
        self.bar.update(self.task, completed=done, total=total,
                        description=f"replaying at {commit[:10]} {escape(title[:50])}")  # fmt: skip

    def step(self, step: dict[str, Any]) -> None:
        outcome = step["outcome"]
        why = step["verdict"] or "could not replay"
        self.bar.console.print(f"[{_COLOUR[outcome]}]{outcome:4}[/] {step['commit'][:12]} "
                               f"{escape(step['subject'])}  [dim]({escape(why)})[/]")  # fmt: skip
        problem = [line for line in (step.get("problem") or "").splitlines() if line.strip()]
        # The first line says what went wrong; the last is often the app's own exception.
        for line in problem[:1] + problem[-1:] if len(problem) > 1 else problem:
            self.bar.console.print("     [dim]" + escape(line[:200]) + "[/]")


@contextlib.contextmanager
def progress(commits: int) -> Iterator[Progress]:
    console = _console(stderr=True)
    bar = RichProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} replays"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(f"bisecting {commits - 1} commits", total=None)
    with bar:
        yield Progress(bar, task)


def summary(result: dict[str, Any], output: str) -> None:
    if output == "json":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    console = _console()
    recorded = result["recorded_status"]
    status = "no answer" if recorded is None else recorded
    console.print(
        f"request {result['request']} (recorded: {status}, "
        f"{'failed' if result['recorded_failed'] else 'succeeded'}); "
        f"{len(result['steps'])} replays over {result['commits']} commits"
    )
    if result["error"]:
        console.print(f"[red]bisect stopped[/]: {escape(result['error'])}")
        return
    first = result["first_bad"]
    if first is None:
        console.print("[yellow]skipped commits leave several candidates for the first bad:[/]")
        for commit in result["candidates"]:
            console.print(f"  {commit}")
        return
    console.print(f"\n[bold red]first bad commit[/]: [bold]{first['commit']}[/]")
    console.print(f"  Author: {escape(first.get('author', ''))}")
    console.print(f"  Date:   {escape(first.get('date', ''))}")
    console.print(f"\n      {escape(first['subject'])}")
    console.print(f"\n[bold]the replay at {first['commit'][:12]}[/]: verdict "
                  f"[red]{first['verdict']}[/] (exit {first['exit_code']})")  # fmt: skip
    replay_report(console, first.get("replay") or {})


def replay_report(console: Console, report: dict[str, Any]) -> None:
    """The differences and misses of ``flux replay --output json``, in a few lines."""
    differences = report.get("differences") or []
    for difference in differences[:_SHOWN_DIFFERENCES]:
        where = difference.get("where", "?")
        change = difference.get("change", "changed")
        old, new = _short(difference.get("recorded")), _short(difference.get("new"))
        text = {"added": f"+ {new}", "removed": f"- {old}"}.get(change, f"{old} → {new}")
        console.print(f"  {escape(str(where))}: {escape(text)}")
    if len(differences) > _SHOWN_DIFFERENCES:
        console.print(f"  … and {len(differences) - _SHOWN_DIFFERENCES} more differences")
    misses = report.get("misses") or []
    for miss in misses[:_SHOWN_DIFFERENCES]:
        if isinstance(miss, dict):
            console.print(f"  [red]miss[/] {escape(str(miss.get('kind')))}  "
                          f"{escape(_short(miss.get('request') or '', 160))}")  # fmt: skip
            if miss.get("closest"):
                console.print(f"       closest recorded: {escape(_short(miss['closest'], 160))}")
        else:
            console.print(f"  [red]miss[/] {escape(_short(miss, 160))}")
    if "hits" in report:
        console.print(f"  inside the run: {report['hits']} answer(s) from recordings, "
                      f"{len(misses)} miss(es)")  # fmt: skip


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
