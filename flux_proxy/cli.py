"""The ``flux`` command line: argument parsing and dispatch only.

Read commands open the store read-only and hand what they find to
``render``; ``serve`` hands its settings to ``sidecar``. Nothing here talks
to the network except through those modules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from recorder.abc import Store
from recorder.store import StoreError, open_store

from . import render
from .config import add_serve_flags, add_store_flags, settings_from_args


def _store(args: argparse.Namespace) -> Store:
    location = args.store or args.data_dir
    return open_store(location, readonly=True)


def _output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=["text", "json"],
        default="text",
        help="text for people, json for programs",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux",
        description="flux-proxy: record, inspect and replay what your service does.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the sidecar")
    add_serve_flags(serve)

    traces = commands.add_parser("traces", help="recent executions, newest first")
    add_store_flags(traces)
    _output_flag(traces)
    traces.add_argument("--limit", "-n", type=int, default=20)
    traces.add_argument("--errors", action="store_true", help="only executions with an error")

    trace = commands.add_parser("trace", help="one execution's spans in order")
    add_store_flags(trace)
    _output_flag(trace)
    trace.add_argument("trace_id", help="trace id, or a unique prefix of at least 6 hex digits")

    stats = commands.add_parser("stats", help="events recorded, dropped, bytes stored")
    add_store_flags(stats)
    _output_flag(stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="flux %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            from .sidecar import serve

            try:
                settings = settings_from_args(args)
            except argparse.ArgumentTypeError as exc:
                parser.error(str(exc))
            return serve(settings)
        store = _store(args)
        try:
            if args.command == "traces":
                rows = store.list_executions(limit=args.limit, errors_only=args.errors)
                return render.traces(rows, args.output)
            if args.command == "trace":
                trace_id = store.resolve_trace_id(args.trace_id)
                return render.trace(trace_id, store.get_trace(trace_id), args.output)
            if args.command == "stats":
                return render.stats(store.stats(), args.output)
        finally:
            store.close()
    except StoreError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
