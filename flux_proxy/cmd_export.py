"""``flux export`` (bundle, HAR, OTLP/JSON) and ``flux import`` (a bundle into a store).

The conversions live in ``recorder/export``; this module picks the executions, reads
the store, shows progress and writes files. Files that may hold values (a HAR opened
with the private key) or sealed payloads (a bundle) are created 0600, and written
whole to a temporary name first, so a failed export never leaves half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recorder.abc import PayloadSealer, Store
from recorder.export.bundle import BundleWriter, KeepSealed, import_bundle, read_bundle
from recorder.export.context import ExecutionReader
from recorder.export.har import har_log
from recorder.export.otlp import SpanConverter, export_request
from recorder.model import StoredEvent
from recorder.store import StoreError, open_store

from .cmd_read import reader_from_args
from .config import add_private_key_flag, add_store_flags, env, private_key_values
from .keysetup import KeySetupError, private_keys
from .otlpexport import package_version

PROGRESS_FROM = 3  # executions (or thousands of imported events) before a bar is worth it
_MAX_EXECUTIONS = 1_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="executions as a portable bundle, HAR 1.2 or OTLP/JSON",
        description="Write executions (by id, or all started in --since/--until) as a "
        "bundle for `flux import` elsewhere (payloads stay sealed), HAR 1.2 for HTTP "
        "tools, or OTLP/JSON for OpenTelemetry backends.",
    )
    add_store_flags(export)
    export.add_argument("trace_ids", nargs="*", metavar="ID", help="trace ids or prefixes")
    export.add_argument("--format", "-f", choices=["bundle", "har", "otlp"], default="bundle")
    export.add_argument(
        "--out", "-o", dest="out", metavar="FILE", help="write here (default: standard output)"
    )
    export.add_argument("--since", metavar="TIME", help="executions started at/after TIME")
    export.add_argument("--until", metavar="TIME", help="executions started before TIME")
    export.add_argument(
        "--output",
        choices=["text", "json"],
        default="text",
        help="the summary, for people (stderr) or programs (stdout, with -o FILE)",
    )
    add_private_key_flag(export)
    export.set_defaults(handler=run_export)

    imp = commands.add_parser(
        "import",
        help="load a bundle into this store (idempotent)",
        description="Load a bundle made by `flux export --format bundle`. Events already "
        "present are skipped; a damaged or foreign file is refused and nothing is written.",
    )
    add_store_flags(imp)
    imp.add_argument("file", metavar="FILE", help="the bundle ('-' for standard input)")
    imp.add_argument("--output", choices=["text", "json"], default="text")
    add_private_key_flag(imp)
    imp.set_defaults(handler=run_import)


# -- choosing executions -----------------------------------------------------------


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """Nanoseconds since the epoch for ``2024-05-01T14:00:00`` (UTC unless an offset is
    given, as ``flux traces`` shows times), ``14:00`` (today, UTC) or ``15m`` (ago)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        moment = now - timedelta(seconds=int(value[:-1]) * _UNITS[value[-1]])
    else:
        try:
            if len(value) <= 8 and ":" in value:
                clock = datetime.strptime(value, "%H:%M:%S" if value.count(":") == 2 else "%H:%M")
                moment = now.replace(
                    hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
                )
            else:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a time: {text!r} (2024-05-01T14:00:00, 14:00 or 15m for 15 minutes ago)"
            ) from None
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


def chosen_traces(store: Store, args: argparse.Namespace) -> list[str]:
    """The ids asked for, then those started in the window, oldest first, no repeats."""
    ids = [store.resolve_trace_id(given) for given in args.trace_ids]
    if args.since or args.until:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        window = store.list_executions(limit=_MAX_EXECUTIONS, since_ns=since)
        ids += [r.trace_id for r in reversed(window) if until is None or r.start_ns < until]
    elif not ids:
        raise argparse.ArgumentTypeError("name executions to export: IDs, --since or --until")
    return list(dict.fromkeys(ids))


def source_store_id(location: str) -> str:
    """A stable id for the store a bundle came from: its host, path and file identity,
    hashed (the bundle should not carry the host name or path in the clear)."""
    path = Path(location)
    target = path / "flux.db" if path.is_dir() else path
    try:
        info = target.stat()
        identity = f"{target.resolve()}\0{info.st_dev}\0{info.st_ino}"
    except OSError:
        identity = location
    digest = hashlib.blake2b(f"{socket.gethostname()}\0{identity}".encode(), digest_size=8)
    return f"sqlite:{digest.hexdigest()}"


def _progress(total: int, what: str) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=total < PROGRESS_FROM or not console.is_terminal,
    )


def _each(traces: list[str], progress: Progress) -> Iterator[str]:
    task = progress.add_task("", total=len(traces))
    for trace in traces:
        yield trace
        progress.advance(task)


# -- writing -----------------------------------------------------------------------


@contextlib.contextmanager
def _destination(out: str | None, binary_ok: bool) -> Iterator[IO[bytes]]:
    """The file to write: ``-o FILE`` through a 0600 temporary renamed at the end, or
    standard output (not a terminal for binary data)."""
    if out is None or out == "-":
        if not binary_ok and sys.stdout.isatty():
            raise argparse.ArgumentTypeError(
                "a bundle is binary: give -o FILE or redirect standard output"
            )
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(out)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp makes it 0600
            yield handle
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def run_export(args: argparse.Namespace) -> int:
    if args.output == "json" and args.out in (None, "-"):
        raise argparse.ArgumentTypeError("--output json needs -o FILE: stdout carries the export")
    location = args.store or args.data_dir
    sealer: PayloadSealer | None = KeepSealed() if args.format == "bundle" else None
    if args.format == "har":
        sealer = reader_from_args(args)
    store = open_store(location, readonly=True, sealer=sealer)
    try:
        traces = chosen_traces(store, args)
        if not traces:
            print("flux: no executions in that window", file=sys.stderr)
            return 1
        with _progress(len(traces), f"exporting {args.format}") as progress:
            picked = _each(traces, progress)
            if args.format == "bundle":
                summary = _export_bundle(store, picked, location, args.out)
            else:
                summary = _export_json(store, picked, args.format, args.out)
    finally:
        store.close()
    summary["executions"] = len(traces)
    if args.output == "json":
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        where = args.out if args.out not in (None, "-") else "standard output"
        keys = (
            f", sealed to key id {', '.join(summary['key_ids'])}" if summary.get("key_ids") else ""
        )
        print(
            f"flux: exported {len(traces)} execution(s), {summary['events']} event(s) as "
            f"{args.format} to {where}{keys}",
            file=sys.stderr,
        )
    return 0


def _export_bundle(
    store: Store, traces: Iterator[str], location: str, out: str | None
) -> dict[str, Any]:
    writer = BundleWriter(
        source_store=source_store_id(location),
        created_ns=time.time_ns(),
        generator=f"flux-proxy {package_version()}",
    )
    reader = ExecutionReader(store)
    for trace in traces:
        writer.add_execution(trace, reader.events(trace))
    with _destination(out, binary_ok=False) as handle:
        result = writer.finish(handle)
    return {
        "format": "bundle",
        "file": out,
        "traces": result.traces,
        "events": result.events,
        "key_ids": result.key_ids,
        "bytes": result.bytes,
    }


def _export_json(store: Store, traces: Iterator[str], fmt: str, out: str | None) -> dict[str, Any]:
    events: list[StoredEvent] = []
    converter = SpanConverter()
    reader = ExecutionReader(store)
    spans: list[dict[str, Any]] = []
    ids: list[str] = []
    for trace in traces:
        ids.append(trace)
        if fmt == "har":
            events.extend(store.get_trace(trace))
        else:  # the sessions in the context name each query's database
            spans.extend(converter.spans(e.event for e in reader.events(trace)))
    if fmt == "har":
        document = har_log(events, creator_version=package_version())
        count = len(document["log"]["entries"])
    else:
        service = env("OTEL_SERVICE_NAME", "flux-proxy") or "flux-proxy"
        document = export_request(spans, service_name=service, scope_version=package_version())
        count = len(spans)
    data = json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"
    with _destination(out, binary_ok=True) as handle:
        handle.write(data)
    return {"format": fmt, "file": out, "traces": ids, "events": count, "bytes": len(data)}


# -- importing ---------------------------------------------------------------------


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {name}: {exc.strerror or exc}") from None


def run_import(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    # Checked whole before the store is even opened: a refused file writes nothing.
    bundle = read_bundle(data)
    store = open_store(args.store or args.data_dir)
    try:
        with _progress(len(bundle.events) // 1000, "importing") as progress:
            task = progress.add_task("", total=len(bundle.events))
            advance: Callable[[int], None] = lambda n: progress.advance(task, n)  # noqa: E731
            result = import_bundle(store, bundle, progress=advance)
    finally:
        store.close()
    summary = {
        "file": args.file,
        "source_store": bundle.source_store,
        "created": datetime.fromtimestamp(bundle.created_ns / 1e9, UTC).isoformat(),
        "traces": bundle.traces,
        "events": result.events,
        "added": result.added,
        "skipped": result.skipped,
        "key_ids": bundle.key_ids,
    }
    if args.output == "json":
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(
        f"flux: imported {result.added} event(s) of {len(bundle.traces)} execution(s) from "
        f"{args.file} (made {summary['created']} from store {bundle.source_store}); "
        f"{result.skipped} already present"
    )
    _hint_keys(bundle.key_ids, args)
    return 0


def _hint_keys(key_ids: list[str], args: argparse.Namespace) -> None:
    """Says when this machine holds no private key for what was imported: replay needs it."""
    try:
        held = {key.key_id for key in private_keys(private_key_values(args), Path(args.data_dir))}
    except KeySetupError:
        held = set()
    missing = [k for k in key_ids if k not in held]
    if missing:
        print(
            f"flux: payloads are sealed to key id {', '.join(missing)}: replaying or showing "
            "their values here needs that private key (FLUX_PRIVATE_KEY or --private-key)",
            file=sys.stderr,
        )
