"""Debugging commands over the store: ``why``, ``trace diff`` and ``tail``.

The analysis lives in :mod:`recorder.analysis` (pure functions over stored events);
this module opens the store, calls it, and hands the result to :mod:`.render_debug`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from recorder.abc import Store
from recorder.analysis.diff import DEFAULT_RATIO, DEFAULT_THRESHOLD_MS, diff
from recorder.analysis.tail import Follower, TailFilter, parse_since
from recorder.analysis.why import explain
from recorder.model import StoredEvent
from recorder.store import StoreNotFound

from . import render_debug
from .cmd_read import open_from_args, output_flag, reader_from_args, report_unopened
from .config import add_private_key_flag, add_store_flags, private_key_values

TRACE_ID_HELP: Final = "trace id, or a unique prefix of at least 6 hex digits"
# Executions started longer ago than this are no longer watched for completion.
TAIL_WINDOW_NS: Final = 600 * 10**9
TAIL_SCAN: Final = 5000  # executions listed per poll, newest first


def register(commands: Any) -> None:
    why = commands.add_parser("why", help="the root cause of a failed execution, with a fix")
    why.add_argument("trace_id", help=TRACE_ID_HELP)
    add_store_flags(why)
    add_private_key_flag(why)
    output_flag(why)
    why.set_defaults(handler=run_why)

    tail = commands.add_parser("tail", help="executions as they complete, one line each")
    add_store_flags(tail)
    output_flag(tail)
    tail.add_argument("--errors", action="store_true", help="only executions that failed")
    tail.add_argument("--path", help="only requests whose path starts so, or matches a glob")
    tail.add_argument(
        "--min-duration",
        type=float,
        default=0.0,
        metavar="MS",
        help="only executions that took at least MS milliseconds",
    )
    tail.add_argument(
        "--since",
        help="first show executions since then: 30s, 5m, 2h, 1d or "
        "an ISO 8601 time (default: only those completing from now on)",
    )
    tail.add_argument(
        "--limit",
        "-n",
        type=int,
        default=0,
        help="stop after N executions (default: follow until interrupted)",
    )
    tail.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after SECONDS (default: never)",
    )
    tail.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how often the store is read (default 0.25)",
    )
    tail.set_defaults(handler=run_tail)  # fmt: skip

    _add_trace_command(commands, "diff", _diff_parser)


def _diff_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare two executions span by span. Exit status 0 when they agree, "
        "1 when they differ, 2 on trouble.",
    )
    parser.add_argument("a", help=TRACE_ID_HELP)
    parser.add_argument("b", help=TRACE_ID_HELP)
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD_MS,
        metavar="MS",
        help=f"report a latency change of at least MS milliseconds "
        f"(default {DEFAULT_THRESHOLD_MS:g}) ...",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=DEFAULT_RATIO,
        help=f"... that is also at least RATIO times the faster one "
        f"(default {DEFAULT_RATIO:g}; 1 reports on --threshold alone)",
    )
    add_store_flags(parser)
    add_private_key_flag(parser)
    output_flag(parser)
    parser.set_defaults(handler=run_diff)  # fmt: skip
    return parser


def _add_trace_command(commands: Any, word: str, build: Any) -> None:
    """``flux trace WORD ...``: a first argument of WORD is that command, never a trace id.

    ``flux trace <id>`` is a positional argument, which argparse cannot mix with
    subcommands; WORD is not hex, so no trace id or prefix can be mistaken for it.
    """
    trace: argparse.ArgumentParser = commands.choices["trace"]  # cmd_read registers it first
    sub: argparse.ArgumentParser = build(f"{trace.prog} {word}")
    original = trace.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args and args[0] == word:
            return sub.parse_known_args(list(args[1:]), namespace)
        return original(args, namespace)

    trace.parse_known_args = parse_known_args  # type: ignore[method-assign, assignment]
    more = f"`{trace.prog} {word} ...`: {(sub.description or '').split('.')[0].lower()} (see -h)"
    trace.epilog = f"{trace.epilog}\n{more}" if trace.epilog else more


Traces = list[tuple[str, list[StoredEvent]]]


def _load(args: argparse.Namespace, *given: str) -> tuple[Traces, list[str] | None]:
    """Each trace named (id and events), opened with the keys the flags name, and those
    keys' ids (None when none was given)."""
    values = private_key_values(args)
    sealer = reader_from_args(args)
    store = open_from_args(args, sealer)
    try:
        traces = [_trace(store, name) for name in given]
    finally:
        store.close()
    return traces, (sealer.private_key_ids if values else None)


def _trace(store: Store, given: str) -> tuple[str, list[StoredEvent]]:
    trace_id = store.resolve_trace_id(given)
    return trace_id, store.get_trace(trace_id)


def run_why(args: argparse.Namespace) -> int:
    [(trace_id, events)], keys_given = _load(args, args.trace_id)
    status = render_debug.why(explain(trace_id, events), args.output)
    return max(status, report_unopened(events, keys_given=keys_given))


def run_diff(args: argparse.Namespace) -> int:
    [(a_id, a_events), (b_id, b_events)], keys_given = _load(args, args.a, args.b)
    if args.threshold < 0 or args.ratio < 1:
        print("flux: --threshold must be >= 0 and --ratio >= 1", file=sys.stderr)
        return 2
    result = diff(a_id, a_events, b_id, b_events, threshold_ms=args.threshold, ratio=args.ratio)
    status = render_debug.trace_diff(result, args.output)
    # The exit status says whether they differ; payloads that did not open are noted only.
    report_unopened(a_events + b_events, keys_given=keys_given)
    return status


def run_tail(args: argparse.Namespace) -> int:
    started = time.time_ns()
    try:
        since = parse_since(args.since, started) if args.since else None
    except ValueError as exc:
        print(f"flux: --since {exc}", file=sys.stderr)
        return 2
    wanted = TailFilter(
        errors=args.errors, path=args.path, min_duration_ns=int(args.min_duration * 1e6)
    )
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    follower = Follower()
    shown = 0
    store = _open_when_there(args)
    if store is None:
        print(f"flux: waiting for a store at {store_label(args)}", file=sys.stderr)
        since = since or started  # all it will hold is new
    first = True
    try:
        while deadline is None or time.monotonic() < deadline:
            store = store or _open_when_there(args)
            if store is not None:
                now = time.time_ns()
                floor = now - TAIL_WINDOW_NS
                if first and since is not None:
                    floor = min(floor, since)
                rows = store.list_executions(limit=TAIL_SCAN, since_ns=floor)
                if first and since is None:
                    follower.skip_existing(rows, now)
                if first:  # from here on, whatever completes is shown
                    print(f"flux: following {store_label(args)} (Ctrl-C to stop)", file=sys.stderr)
                first = False
                for row in follower.poll(rows, now):
                    if (since is not None and row.start_ns < since) or not wanted.accepts(row):
                        continue
                    render_debug.tail_line(row, args.output)
                    shown += 1
                    if args.limit and shown >= args.limit:
                        return 0
                follower.forget_unlisted(rows)
            time.sleep(max(args.interval, 0.01))
    except KeyboardInterrupt:
        return 0
    finally:
        if store is not None:
            store.close()
    return 0


def _open_when_there(args: argparse.Namespace) -> Store | None:
    """The store, or None while it does not exist yet (tail may start before the sidecar)."""
    try:
        return open_from_args(args)
    except StoreNotFound:
        return None


def store_label(args: argparse.Namespace) -> str:
    return str(args.store or args.data_dir)
