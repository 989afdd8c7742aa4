"""Read commands over the store: ``traces``, ``trace``, ``stats``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from recorder.abc import PayloadSealer, Store
from recorder.crypto import EnvelopeSealer
from recorder.model import StoredEvent
from recorder.store import SEALED_MARKER, UNREADABLE_MARKER, open_store

from . import render
from .config import add_private_key_flag, add_store_flags, private_key_values
from .keysetup import reader_sealer


def open_from_args(args: argparse.Namespace, sealer: PayloadSealer | None = None) -> Store:
    return open_store(args.store or args.data_dir, readonly=True, sealer=sealer)


def reader_from_args(args: argparse.Namespace) -> EnvelopeSealer:
    """What opens sealed payloads for a read command: the private keys its flags name,
    else the data dir's development key. A key that does not load raises
    ``KeySetupError``, which ``flux`` reports as an error (exit 2)."""
    return reader_sealer(private_key_values(args), Path(args.data_dir))


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
    add_private_key_flag(trace)
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
    values = private_key_values(args)
    sealer = reader_from_args(args)
    store = open_from_args(args, sealer)
    try:
        trace_id = store.resolve_trace_id(args.trace_id)
        events = store.get_trace(trace_id)
        status = render.trace(trace_id, events, args.output)
        given = sealer.private_key_ids if values else None
        return max(status, report_unopened(events, keys_given=given))
    finally:
        store.close()


def report_unopened(events: list[StoredEvent], *, keys_given: list[str] | None) -> int:
    """Says on stderr which payloads did not open and why; 1 if that is an error.

    Damage is always an error. A payload sealed to a key we lack is the normal view
    without the private key, and an error only when keys were given for this read.
    """
    status = 0
    sealed: Counter[str] = Counter()
    for stored in events:
        payload = stored.event.payload
        if len(payload) != 1:
            continue
        if UNREADABLE_MARKER in payload:
            status = 1
            print(
                f"flux: event #{stored.seq} ({stored.event.kind}, span {stored.event.span_id}): "
                f"payload not shown: {payload[UNREADABLE_MARKER]}",
                file=sys.stderr,
            )
        elif SEALED_MARKER in payload:
            sealed[str(payload[SEALED_MARKER])] += 1
    for key_ids, count in sealed.items():
        if keys_given is not None:
            status = 1
            print(
                f"flux: {count} payload(s) sealed to key id {key_ids}: none of the private "
                f"keys given (key id {', '.join(keys_given)}) opens them (a key from before "
                "a rotation? give it too)",
                file=sys.stderr,
            )
        else:
            print(
                f"flux: {count} payload(s) sealed to key id {key_ids} show as [encrypted]; "
                "give --private-key or FLUX_PRIVATE_KEY to see their values",
                file=sys.stderr,
            )
    return status


def run_stats(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    try:
        return render.stats(store.stats(), args.output)
    finally:
        store.close()
