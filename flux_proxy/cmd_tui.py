"""``flux trace debug <id>``: the interactive view of one execution (:mod:`.tui`).

Textual is imported only when the view opens, so the other commands do not pay
for it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from recorder.model import StoredEvent

from .cmd_debug import TRACE_ID_HELP, _add_trace_command
from .cmd_read import open_from_args, reader_from_args, report_unopened
from .config import add_private_key_flag, add_store_flags, private_key_values
from .keysetup import KeySetupError
from .spanview import sealed


def register(commands: Any) -> None:
    _add_trace_command(commands, "debug", _debug_parser)


def _debug_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Step through the spans of one execution in the terminal. The span tree "
        "on the left; the selected span's request, response, rows and mutations on the "
        "right. Keys: up/down or j/k move, enter/space expand, tab switches pane, n or / "
        "and p jump to the next and previous error span, q quits.",
    )
    parser.add_argument("trace_id", help=TRACE_ID_HELP)
    add_store_flags(parser)
    add_private_key_flag(parser)
    parser.set_defaults(handler=run_debug)
    return parser


@dataclass(slots=True)
class Loaded:
    trace_id: str
    events: list[StoredEvent]
    notes: list[str]  # shown under the view's title
    keys_given: list[str] | None  # key ids of --private-key / FLUX_PRIVATE_KEY, if given


def load(args: argparse.Namespace) -> Loaded:
    """The trace's events, opened with the keys given (else the data dir's dev key)."""
    values = private_key_values(args)
    sealer = reader_from_args(args)
    store = open_from_args(args, sealer)
    try:
        trace_id = store.resolve_trace_id(args.trace_id)
        events = store.get_trace(trace_id)
    finally:
        store.close()
    closed = sum(1 for s in events if sealed(s.event.payload))
    notes = []
    if closed:
        notes.append(
            f"{closed} payload(s) show as [encrypted] or [unreadable]: "
            "give --private-key or FLUX_PRIVATE_KEY to see their values"
        )
    return Loaded(trace_id, events, notes, sealer.private_key_ids if values else None)


def run_debug(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "flux: trace debug is interactive and needs a terminal; "
            "use `flux trace <id>` (or --output json) in scripts",
            file=sys.stderr,
        )
        return 2
    try:
        loaded = load(args)
    except KeySetupError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return 2
    from .tui import TraceDebugApp  # Textual takes a while to import: only here

    TraceDebugApp(loaded.trace_id, loaded.events, loaded.notes).run()
    return report_unopened(loaded.events, keys_given=loaded.keys_given)
