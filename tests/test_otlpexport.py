"""The live OTLP follower against a real store and a real HTTP collector on loopback:
the queue stays bounded, a refusing collector costs counted drops, never an error."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flux_proxy.otlpexport import (
    POSTS_FAILED,
    SPANS_DROPPED,
    SPANS_EXPORTED,
    SpanFollower,
    follow,
    traces_url,
)
from recorder.model import PG_QUERY, PG_SESSION, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore


class Collector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status = 200
        self.reply = b"{}"
        self.span_ids: list[str] = []
        self.posts = 0

    @property
    def url(self) -> str:
        return traces_url(f"http://127.0.0.1:{self.server_address[1]}")


class Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.posts += 1
        if self.server.status == 200:
            for resource in body["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    self.server.span_ids += [span["spanId"] for span in scope["spans"]]
        self.send_response(self.server.status)
        self.send_header("content-length", str(len(self.server.reply)))
        self.end_headers()
        self.wfile.write(self.server.reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def write(path: Path, events: list[Event]) -> None:
    with SQLiteStore(path) as store:
        store.write_batch(events, {})


def queries(trace: str, count: int, start: int) -> list[Event]:
    return [
        Event(kind=PG_QUERY, trace_id=trace, span_id=new_span_id(), parent_span_id=None,
              conn_id="c1", start_ns=start + i, duration_ns=5,
              attrs={"statements": [{"normalized": "select ?", "kind": "select"}]})
        for i in range(count)
    ]  # fmt: skip


def test_endpoint_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="http"):
        traces_url("c:4318")


def test_only_what_was_stored_since_the_start_is_sent(tmp_path: Path, collector: Collector) -> None:
    db = tmp_path / "flux.db"
    trace = new_trace_id()
    old = queries(trace, 2, 1_000)  # recorded before this sidecar started
    write(db, old)
    follower = SpanFollower(str(db), collector.url, since_ns=10_000, batch=3)
    new = queries(trace, 4, 20_000)
    session = Event(kind=PG_SESSION, trace_id=None, span_id=new_span_id(), parent_span_id=None,
                    conn_id="c1", start_ns=19_000, duration_ns=1)  # fmt: skip
    write(db, [session, *new])
    stop = threading.Event()
    stop.set()  # one round, then the last one
    follow(follower, stop, 0.01)
    assert collector.span_ids == [e.span_id for e in new]  # in order, in two batches
    assert collector.posts == 2
    assert follower.converter.skipped == 1  # the unattributed session makes no span
    with SQLiteStore(db, readonly=True) as store:
        assert store.counters()[SPANS_EXPORTED] == 4


def test_a_refusing_collector_costs_counted_drops_and_the_queue_stays_bounded(
    tmp_path: Path, collector: Collector
) -> None:
    db = tmp_path / "flux.db"
    write(db, [])
    follower = SpanFollower(str(db), collector.url, since_ns=0, batch=2, max_queue=5)
    events = queries(new_trace_id(), 12, 1_000)
    write(db, events)
    collector.status = 503
    assert follower.read() == 5 and len(follower.queue) == 5  # bounded: the store keeps the rest
    assert follower.read() == 0
    assert not follower.send()  # refused once: kept for another try
    assert len(follower.queue) == 5
    assert not follower.send()  # refused twice: dropped, counted
    assert len(follower.queue) == 3
    assert follower.counts == {SPANS_EXPORTED: 0, SPANS_DROPPED: 2, POSTS_FAILED: 2}
    collector.status = 200  # the collector is back: everything after the drop arrives
    while follower.read() or follower.queue:
        assert follower.send()
    assert collector.span_ids == [e.span_id for e in events[2:]]
    assert follower.counts[SPANS_EXPORTED] == 10
    follower.save_counters()
    with SQLiteStore(db, readonly=True) as store:
        assert store.counters() == {SPANS_EXPORTED: 10, SPANS_DROPPED: 2, POSTS_FAILED: 2}


def test_spans_the_collector_rejects_are_counted_as_dropped(
    tmp_path: Path, collector: Collector
) -> None:
    db = tmp_path / "flux.db"
    write(db, queries(new_trace_id(), 3, 1_000))
    collector.reply = b'{"partialSuccess": {"rejectedSpans": "1", "errorMessage": "too old"}}'
    follower = SpanFollower(str(db), collector.url, since_ns=0)
    follower.read()
    assert follower.send()
    assert follower.counts == {SPANS_EXPORTED: 2, SPANS_DROPPED: 1, POSTS_FAILED: 0}


def test_an_unreachable_collector_is_not_an_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = tmp_path / "flux.db"
    write(db, queries(new_trace_id(), 1, 1_000))
    follower = SpanFollower(str(db), traces_url(f"http://127.0.0.1:{port}"), since_ns=0)
    follower.read()
    assert not follower.send() and follower.counts[POSTS_FAILED] == 1
