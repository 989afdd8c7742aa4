"""How many typical pg.query events per second RecordWriter sustains into SQLite.

    .venv/bin/python bench/store_throughput.py [--events 200000] [--batch-size 512]

The producer submits as fast as it can and backs off briefly when the queue is
full (so nothing is dropped); the figure is events / (first submit .. flush done).
It also times SQLiteStore.write_batch alone, without the writer thread, with
payloads in plaintext and sealed (envelope encryption to a 3072-bit key), and
reports what sealing adds per event and to the file size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from recorder.abc import PayloadSealer
from recorder.crypto import EnvelopeSealer
from recorder.keys import generate_keypair
from recorder.model import PG_QUERY, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore
from recorder.writer import RecordWriter


def typical_events(n: int) -> list[Event]:
    """~10 plaintext attrs and a ~300-byte payload, 8 queries per trace."""
    events = []
    trace = new_trace_id()
    for i in range(n):
        if i % 8 == 0:
            trace = new_trace_id()
        events.append(
            Event(
                kind=PG_QUERY,
                trace_id=trace,
                span_id=new_span_id(),
                parent_span_id=new_span_id(),
                conn_id="pg-7",
                start_ns=time.time_ns(),
                duration_ns=812_000,
                fingerprint="select * from users where id = $1",
                attrs={
                    "statement": "SELECT",
                    "tables": ["users"],
                    "command_tags": ["SELECT 1"],
                    "rows": 1,
                    "sqlstate": None,
                    "protocol": "extended",
                    "txn": "idle",
                    "db": "app",
                    "user": "app",
                    "params": 1,
                },
                payload={
                    "sql": "SELECT id, email, name FROM users WHERE id = $1 /*traceparent*/",
                    "params": [str(i)],
                    "rows": [[str(i), f"user{i}@example.com", "Some Name"]],
                    "frontend": os.urandom(120),
                    "backend": os.urandom(80),
                },
            )
        )
    return events


def bench_writer(path: str, events: list[Event], batch_size: int) -> tuple[float, dict[str, int]]:
    writer = RecordWriter(lambda: SQLiteStore(path), batch_size=batch_size)
    start = time.perf_counter()
    for event in events:
        while not writer.submit(event):
            time.sleep(0.0005)  # the queue is full: let the writer catch up
    assert writer.flush(120)
    elapsed = time.perf_counter() - start
    writer.close()
    return len(events) / elapsed, writer.stats()


def bench_store(
    path: str, events: list[Event], batch_size: int, sealer: PayloadSealer | None = None
) -> float:
    store = SQLiteStore(path, sealer=sealer)
    start = time.process_time()  # CPU, not wall: the machine may be shared
    for i in range(0, len(events), batch_size):
        store.write_batch(events[i : i + batch_size], {"events.recorded": batch_size})
    elapsed = time.process_time() - start
    store.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    events = typical_events(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        rate, stats = bench_writer(os.path.join(tmp, "w.db"), events, args.batch_size)
        size = os.path.getsize(os.path.join(tmp, "w.db"))
        retried = stats.pop("dropped")  # full-queue refusals the producer retried, none lost
        print(f"RecordWriter -> SQLite: {rate:,.0f} events/s  {stats}, {retried} retried submits")
        print(f"  db file: {size / len(events):,.0f} bytes/event")
        plain = bench_store(os.path.join(tmp, "s.db"), events, args.batch_size)
        print(f"SQLiteStore.write_batch alone: {plain:,.0f} events per CPU second")
        sealer = EnvelopeSealer([generate_keypair()[1]])
        sealed = bench_store(os.path.join(tmp, "e.db"), events, args.batch_size, sealer)
        per_event = (1 / sealed - 1 / plain) * 1e6
        growth = os.path.getsize(os.path.join(tmp, "e.db")) - os.path.getsize(
            os.path.join(tmp, "s.db")
        )
        print(
            f"  sealed: {sealed:,.0f} events per CPU second, +{per_event:.1f} us CPU and "
            f"+{growth / len(events):,.0f} bytes per event"
        )


if __name__ == "__main__":
    main()
