"""The recorder process: raw capture items in through a pipe, events out to the store.

The sidecar's event loop must never share a lock with decoding and storage.
In one process it would: a Python thread doing that work holds the GIL, and
the event loop, woken by a socket, waits up to the interpreter's switch
interval (5 ms) to get it back, on every round trip. So the sidecar runs this
module as a child process and writes msgpack-framed items to its standard
input; the child decodes, attributes and stores them in batches.

    python -m recorder.ingest --store LOCATION   (reads items from stdin until EOF)

The wire format between the two is an internal detail of one flux version:
each item is a msgpack array whose first element is a tag.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgpack

from protocols.pgwire import RawCycle
from protocols.traceparent import new_traceparent

from .abc import PayloadSealer
from .crypto import EnvelopeSealer
from .keys import InvalidKey, load_public_keys
from .model import Event
from .mutation.capture import StatementCapture
from .pgcapture import (
    PgCaptureItem,
    PgCycleCaptured,
    PgEventBuilder,
    PgSessionEnded,
    PgSessionStarted,
)
from .store import open_store
from .writer import RecordWriter

log = logging.getLogger("flux.recorder")

_CYCLE: Final = 1
_SESSION_STARTED: Final = 2
_SESSION_ENDED: Final = 3
_EVENT: Final = 4
_COUNTERS: Final = 5

# Largest single item accepted from the pipe; a raw cycle is capped well below this.
MAX_ITEM_BYTES: Final = 64 << 20


class Counters:
    """Counter increments measured by the sidecar process (e.g. events it dropped)."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values


Item = PgCaptureItem | Event | Counters


def pack_item(item: Item) -> bytes:
    """Called on the sidecar's event loop: flat arrays, no per-field dicts."""
    match item:
        case PgCycleCaptured(conn_id=conn_id, cycle=c):
            fields: list[Any] = [
                _CYCLE,
                conn_id,
                c.frontend,
                c.backend,
                c.start_ns,
                c.end_ns,
                c.status,
                c.truncated,
                c.complete,
            ]
            if item.captures or item.inflight is not None:
                fields.append([capture.to_wire() for capture in item.captures])
            if item.inflight is not None:  # the one inbound request in flight
                fields.append([item.inflight.trace_id, item.inflight.parent_id])
        case PgSessionStarted():
            fields = [
                _SESSION_STARTED,
                item.conn_id,
                [list(p) for p in item.parameters],
                item.backend,
                item.client,
                item.upstream,
                item.start_ns,
                item.end_ns,
            ]
        case PgSessionEnded():
            fields = [_SESSION_ENDED, item.conn_id, item.end_ns, item.reason]
        case Event():
            fields = [
                _EVENT,
                item.kind,
                item.trace_id,
                item.span_id,
                item.parent_span_id,
                item.conn_id,
                item.start_ns,
                item.duration_ns,
                item.error,
                item.fingerprint,
                item.attrs,
                item.payload,
            ]
        case Counters(values=values):
            fields = [_COUNTERS, values]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def unpack_item(fields: list[Any]) -> Item:
    tag = fields[0]
    if tag == _CYCLE:
        _, conn_id, frontend, backend, start_ns, end_ns, status, truncated, complete = fields[:9]
        extra = fields[9] if len(fields) > 9 else ()
        captures = tuple(StatementCapture.from_wire(c) for c in extra)
        inflight = new_traceparent(*fields[10]) if len(fields) > 10 else None
        cycle = RawCycle(
            frontend=frontend,
            backend=backend,
            start_ns=start_ns,
            end_ns=end_ns,
            status=status,
            truncated=truncated,
            complete=complete,
        )
        return PgCycleCaptured(conn_id=conn_id, cycle=cycle, captures=captures, inflight=inflight)
    if tag == _SESSION_STARTED:
        _, conn_id, parameters, backend, client, upstream, start_ns, end_ns = fields
        return PgSessionStarted(
            conn_id=conn_id,
            parameters=tuple(tuple(p) for p in parameters),
            backend=backend,
            client=client,
            upstream=upstream,
            start_ns=start_ns,
            end_ns=end_ns,
        )
    if tag == _SESSION_ENDED:
        return PgSessionEnded(conn_id=fields[1], end_ns=fields[2], reason=fields[3])
    if tag == _EVENT:
        (
            _,
            kind,
            trace_id,
            span_id,
            parent,
            conn_id,
            start_ns,
            duration_ns,
            error,
            fingerprint,
            attrs,
            payload,
        ) = fields
        return Event(
            kind=kind,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            conn_id=conn_id,
            start_ns=start_ns,
            duration_ns=duration_ns,
            error=error,
            fingerprint=fingerprint,
            attrs=attrs,
            payload=payload,
        )
    if tag == _COUNTERS:
        return Counters(dict(fields[1]))
    raise ValueError(f"unknown recorder item tag {tag!r}")


def read_items(fd: int, *, chunk: int = 1 << 16) -> Iterator[Item | Exception]:
    """Items from a pipe until EOF; a malformed item is yielded as its exception."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_ITEM_BYTES, strict_map_key=False)
    while data := os.read(fd, chunk):
        unpacker.feed(data)
        for fields in unpacker:
            try:
                yield unpack_item(fields)
            except (ValueError, TypeError) as exc:
                yield exc


class Ingest:
    """Turns items into events; runs inside the recorder's writer thread."""

    def __init__(self) -> None:
        self.pg = PgEventBuilder()
        self.add_counters: Callable[[dict[str, int]], None] | None = None

    def process(self, items: list[Any]) -> list[Event]:
        events: list[Event] = []
        for item in items:
            if isinstance(item, Event):
                events.append(item)
            elif isinstance(item, Exception):
                raise item
            else:
                events.extend(self.pg.process(item))
        counters = self.pg.mutations.counters
        if counters and self.add_counters is not None:
            self.add_counters(dict(counters))  # mutations captured, uncaptured (and why)
            counters.clear()
        return events


def run(
    store_location: str, fd: int = 0, *, sealer: PayloadSealer | None, max_queue: int = 100_000
) -> int:
    """``sealer`` None stores payloads in plaintext: only ever asked for explicitly."""
    ingest = Ingest()
    ingest.pg.mutations.use_store(store_location)  # the store's own row-lookup key
    writer = RecordWriter(
        lambda: open_store(store_location, sealer=sealer),
        process=ingest.process,
        max_queue=max_queue,
    )
    ingest.add_counters = writer.add_counters
    try:
        for item in read_items(fd):
            if isinstance(item, Counters):
                writer.add_counters(item.values)
            else:
                writer.submit(item)
    finally:
        writer.close(timeout=30.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder.ingest")
    parser.add_argument("--store", required=True)
    # Public keys only: the recorder can seal but never open what it writes.
    parser.add_argument("--public-key", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--no-encrypt", action="store_true", help="UNSAFE: store plaintext")
    args = parser.parse_args(argv)
    if args.no_encrypt == bool(args.public_key):
        parser.error("give --public-key (one or more) or --no-encrypt")
    sealer: PayloadSealer | None = None
    if args.public_key:
        try:
            sealer = EnvelopeSealer(load_public_keys(" ".join(args.public_key)))
        except InvalidKey as exc:
            parser.error(str(exc))
    # The sidecar ends us by closing the pipe, after its last item; a Ctrl-C meant for
    # the sidecar must not make us stop reading first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="flux %(levelname)s %(name)s: %(message)s"
    )
    if sealer is None:
        log.warning(
            "UNSAFE: --no-encrypt: payloads (rows, bind values, bodies) stored in plaintext"
        )
    return run(args.store, sealer=sealer)


if __name__ == "__main__":
    sys.exit(main())
