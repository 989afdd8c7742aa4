"""Read commands over the store: ``traces``, ``trace``, ``stats``."""

from __future__ import annotations

import argparse
from typing import Any

from recorder.abc import Store
from recorder.store import open_store

from . import render
from .config import add_store_flags


def open_from_args(args: argparse.Namespace) -> Store:
    return open_store(args.store or args.data_dir, readonly=True)


def output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=["text", "json"],
        default="text",
        help="text for people, json for programs",
    )


def register(commands: Any) -> None:
    traces = commands.add_parser("traces", help="recent executions, newest first")
    add_store_flags(traces)
    output_flag(traces)
    traces.add_argument("--limit", "-n", type=int, default=20)
    traces.add_argument("--errors", action="store_true", help="only executions with an error")
    traces.set_defaults(handler=run_traces)

    trace = commands.add_parser("trace", help="one execution's spans in order")
    add_store_flags(trace)
    output_flag(trace)
    trace.add_argument("trace_id", help="trace id, or a unique prefix of at least 6 hex digits")
    trace.set_defaults(handler=run_trace)

    stats = commands.add_parser("stats", help="events recorded, dropped, bytes stored")
    add_store_flags(stats)
    output_flag(stats)
    stats.set_defaults(handler=run_stats)


def run_traces(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    try:
        rows = store.list_executions(limit=args.limit, errors_only=args.errors)
        return render.traces(rows, args.output)
    finally:
        store.close()


def run_trace(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    try:
        trace_id = store.resolve_trace_id(args.trace_id)
        return render.trace(trace_id, store.get_trace(trace_id), args.output)
    finally:
        store.close()


def run_stats(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    try:
        return render.stats(store.stats(), args.output)
    finally:
        store.close()
