"""RecordWriter: batching, drops, per-item failures, store failures, flush and close."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from recorder import writer as writer_module
from recorder.model import PG_QUERY, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore
from recorder.writer import RecordWriter


def ev(i: int, trace: str | None = None) -> Event:
    return Event(
        kind=PG_QUERY,
        trace_id=trace,
        span_id=new_span_id(),
        parent_span_id=None,
        conn_id="c",
        start_ns=1_000 + i,
        duration_ns=1,
        attrs={"i": i},
        payload={"raw": b"x" * 10},
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flux.db"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_RETRY_DELAYS", (0.001, 0.001))


def read(db: Path) -> tuple[list[int], dict[str, int]]:
    with SQLiteStore(db, readonly=True) as s:
        return [x.event.attrs["i"] for x in s.events()], s.counters()


def test_batches_many_submits(db: Path) -> None:
    trace = new_trace_id()
    w = RecordWriter(lambda: SQLiteStore(db), batch_size=256, flush_interval=0.05)
    assert all(w.submit(ev(i, trace)) for i in range(3000))
    assert w.flush(10)
    stats = w.stats()
    assert stats["recorded"] == 3000 and stats["queued"] == 0 and stats["dropped"] == 0
    assert stats["batches"] <= 3000 // 256 + 3  # batches, not one transaction per event
    assert w.close()
    order, counters = read(db)
    assert order == list(range(3000))
    assert counters["events.recorded"] == 3000
    assert counters["bytes.stored"] == stats["bytes"] > 0
    with SQLiteStore(db, readonly=True) as s:
        assert [x.seq for x in s.get_trace(trace)] == list(range(1, 3001))


def test_light_traffic_lingers_into_one_batch(db: Path) -> None:
    w = RecordWriter(lambda: SQLiteStore(db), flush_interval=0.3)
    for i in range(5):
        w.submit(ev(i))
    assert w.flush(5)
    assert w.stats()["batches"] == 1
    w.close()


def test_store_is_opened_in_the_writer_thread(db: Path) -> None:
    threads: list[threading.Thread] = []

    def factory() -> SQLiteStore:
        threads.append(threading.current_thread())
        return SQLiteStore(db)  # check_same_thread=True: would fail if used elsewhere

    w = RecordWriter(factory)
    w.submit(ev(0))
    assert w.flush(5)
    w.close()
    assert threads and threads[0] is not threading.current_thread()


def test_full_queue_drops_and_counts(db: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def process(items: list[Any]) -> list[Event]:
        entered.set()
        release.wait(10)  # hold the writer so the queue fills up
        return list(items)

    w = RecordWriter(lambda: SQLiteStore(db), process=process, max_queue=10, batch_size=4)
    assert w.submit(ev(0))
    assert entered.wait(5)
    # The writer took up to a batch off the queue before blocking; fill what is left.
    accepted = 1 + sum(w.submit(ev(i)) for i in range(1, 31))
    assert w.stats()["dropped"] == 31 - accepted > 0
    assert w.stats()["queued"] == 10
    assert not w.flush(0.05)  # still blocked: flush times out, says so
    release.set()
    assert w.flush(5)
    assert w.close()
    order, counters = read(db)
    assert len(order) == accepted
    assert counters["events.dropped"] == 31 - accepted
    assert counters["events.recorded"] == accepted


def test_one_bad_item_loses_only_itself(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    def process(items: list[Any]) -> list[Event]:
        (n,) = items
        if n == 3:
            raise ValueError("cannot decode item 3")
        if n == 5:
            return [ev(50), ev(51)]  # one item may become several events
        if n == 7:
            return ["not an event"]  # type: ignore[list-item]
        if n == 8:
            return [Event(**{**_fields(ev(8)), "payload": {"bad": object()}})]
        return [ev(n)]

    with RecordWriter(lambda: SQLiteStore(db), process=process) as w:
        for n in range(10):
            assert w.submit(n)
        assert w.flush(5)
        assert w.stats()["failed"] == 3
    order, counters = read(db)
    assert order == [0, 1, 2, 4, 50, 51, 6, 9]
    assert counters["events.failed"] == 3 and counters["events.recorded"] == 8
    assert "cannot decode item 3" in caplog.text


def _fields(e: Event) -> dict[str, Any]:
    return {name: getattr(e, name) for name in Event.__slots__}


def test_failures_only_still_persist_counters(db: Path) -> None:
    def process(items: list[Any]) -> list[Event]:
        raise RuntimeError("nope")

    w = RecordWriter(lambda: SQLiteStore(db), process=process)
    for n in range(4):
        w.submit(n)
    assert w.flush(5)
    assert w.close()
    assert read(db) == ([], {"events.failed": 4})


def test_counter_only_writes_are_rate_limited(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_COUNTERS_ONLY_EVERY", 0.2)

    def process(items: list[Any]) -> list[Event]:
        raise RuntimeError("nope")

    w = RecordWriter(lambda: SQLiteStore(db), process=process, flush_interval=0.01)
    w.submit(1)
    time.sleep(0.6)  # ~60 idle wake-ups, yet only a few counter-only writes
    assert read(db)[1] == {"events.failed": 1}  # persisted without a close
    assert 1 <= w.stats()["batches"] <= 2  # and only rewritten when something changed
    w.submit(2)
    assert w.close()
    assert read(db)[1] == {"events.failed": 2}


class FlakyStore:
    """Wraps a real store; the first ``failures`` write_batch calls raise."""

    calls = 0

    def __init__(self, db: Path, failures: int) -> None:
        self.inner = SQLiteStore(db)
        self.failures = failures

    def write_batch(self, events: Sequence[Event], counters: Mapping[str, int]) -> None:
        FlakyStore.calls += 1
        if FlakyStore.calls <= self.failures:
            raise OSError("disk full")
        self.inner.write_batch(events, counters)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def flaky() -> Iterator[None]:
    FlakyStore.calls = 0
    yield


def test_store_failure_is_retried(db: Path, flaky: None) -> None:
    w = RecordWriter(lambda: FlakyStore(db, failures=2))
    for i in range(5):
        w.submit(ev(i))
    assert w.flush(5)
    assert w.close()
    order, counters = read(db)
    assert order == list(range(5))
    assert counters["events.recorded"] == 5 and "events.failed" not in counters


def test_store_failure_gives_up_counts_and_survives(db: Path, flaky: None) -> None:
    w = RecordWriter(lambda: FlakyStore(db, failures=3))
    for i in range(5):
        w.submit(ev(i))
    assert w.flush(5)  # handled: written or counted as failed
    assert w.stats()["failed"] == 5 and w.stats()["recorded"] == 0
    w.submit(ev(99))  # the thread is still alive and the store works again
    assert w.flush(5)
    assert w.close()
    order, counters = read(db)
    assert order == [99]
    assert counters["events.failed"] == 5 and counters["events.recorded"] == 1


def test_factory_failure_is_a_write_failure(db: Path) -> None:
    attempts = 0

    def factory() -> SQLiteStore:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise sqlite3.OperationalError("database is locked")
        return SQLiteStore(db)

    w = RecordWriter(factory)
    w.submit(ev(1))
    assert w.flush(5) and w.close()
    assert read(db)[0] == [1] and attempts == 2


def test_flush_and_close_semantics(db: Path) -> None:
    w = RecordWriter(lambda: SQLiteStore(db), flush_interval=10.0)  # would linger long
    assert w.flush(1)  # nothing submitted: immediate
    for i in range(3):
        w.submit(ev(i))
    assert w.flush(2)  # a flush does not wait out the linger
    assert read(db)[0] == [0, 1, 2]
    w.submit(ev(3))
    assert w.close(2)  # close writes what is queued
    assert w.close() and w.flush(0.1)  # idempotent, and nothing is pending
    assert not w.submit(ev(4))  # closed: refused and counted
    assert w.stats()["dropped"] == 1
    assert read(db)[0] == [0, 1, 2, 3]


def test_close_persists_final_counters(db: Path) -> None:
    release = threading.Event()

    def process(items: list[Any]) -> list[Event]:
        release.wait(5)
        return list(items)

    w = RecordWriter(lambda: SQLiteStore(db), process=process, max_queue=2, batch_size=1)
    results = [w.submit(ev(i)) for i in range(10)]
    release.set()
    assert w.close()
    _, counters = read(db)
    assert counters["events.dropped"] == results.count(False) > 0
    assert counters["events.recorded"] == results.count(True)


def test_submit_never_raises() -> None:
    def broken_factory() -> SQLiteStore:
        raise RuntimeError("no store")

    w = RecordWriter(broken_factory, max_queue=3)
    assert w.submit(object()) in (True, False)
    assert w.submit(None) in (True, False)
    w.close(1)
