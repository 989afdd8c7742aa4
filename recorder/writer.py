"""The hand-off from the proxy's event loop to the disk.

The data path must never wait on the store: ``submit`` is a bounded deque
append (O(1), no lock, never blocks, never raises) and a background thread
does everything expensive (turning raw items into events, msgpack, SQLite) in
batches. When the queue is full the item is dropped and counted: losing a
record is better than stalling the traffic being recorded.

``submit`` is meant for one producer thread (the event loop); the counters it
bumps are plain ints, exact with one producer and merely approximate with more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from recorder.abc import Store
from recorder.model import Event
from recorder.store import BYTES_STORED, EVENTS_DROPPED, EVENTS_FAILED, EVENTS_RECORDED, pack

log = logging.getLogger(__name__)

_RETRY_DELAYS: Final = (0.05, 0.2, 1.0)  # then the batch is dropped; the queue is filling meanwhile
_COUNTERS_ONLY_EVERY: Final = 1.0  # seconds between writes that carry no events
_LOG_EVERY: Final = 100  # repeated failures are logged on the 1st, 101st, 201st...


def _approximate_size(event: Event) -> int:
    """What ``bytes.stored`` counts: payload bytes and strings, without packing them twice."""
    return 64 + sum(len(v) for v in event.payload.values() if isinstance(v, bytes | str))


def _packable(event: Event) -> bool:
    try:
        pack(event.attrs)
        pack(event.payload)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


class RecordWriter:
    def __init__(
        self,
        store_factory: Callable[[], Store],
        *,
        process: Callable[[list[Any]], list[Event]] | None = None,
        max_queue: int = 10000,
        batch_size: int = 512,
        flush_interval: float = 0.05,
        name: str = "flux-record-writer",
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("max_queue, batch_size and flush_interval must be positive")
        self._store_factory = store_factory
        self._process = process
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval

        self._queue: deque[Any] = deque()
        self._external: deque[dict[str, int]] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._closing = False
        self._flush_wanted = False

        # Producer side (written only by submit's thread).
        self._accepted = 0
        self._dropped = 0
        # Writer side (written only by the writer thread).
        self._handled = 0  # items taken off the queue and finished with, whatever the outcome
        self._recorded = 0
        self._failed = 0
        self._batches = 0
        self._stored_bytes = 0
        self._failure_logs: dict[str, int] = {}
        # What the store has not been told yet; kept across failed writes so counts are not lost.
        self._unsaved: dict[str, int] = {}
        self._dropped_seen = 0
        self._last_write = time.monotonic()
        self._store: Store | None = None

        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- event loop side ---------------------------------------------------------------

    def submit(self, item: Any) -> bool:
        """Queue ``item`` for recording; False (and counted as dropped) when full or closed."""
        try:
            queue = self._queue
            if self._closing or len(queue) >= self._max_queue:
                self._dropped += 1
                return False
            queue.append(item)
            self._accepted += 1
            # Wake the writer early only when a full batch is waiting; otherwise it
            # lingers up to flush_interval so that light traffic still batches.
            if len(queue) == self._batch_size:
                self._wake.set()
            return True
        except Exception:  # the hot path must never raise into the proxy
            return False

    def add_counters(self, values: dict[str, int]) -> None:
        """Counter increments measured elsewhere (the sidecar's own drops), persisted with
        the next write. Same thread rules as ``submit``."""
        self._external.append(values)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "submitted": self._accepted,
            "recorded": self._recorded,
            "dropped": self._dropped,
            "failed": self._failed,
            "batches": self._batches,
            "bytes": self._stored_bytes,
        }

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item submitted before this call has been written (or has
        failed and been counted). False on timeout or if the writer thread is gone."""
        target = self._accepted
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._handled < target:
                if not self._thread.is_alive():
                    return False
                self._flush_wanted = True
                self._wake.set()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Bounded wait so a writer that died without notifying is noticed.
                self._done.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, persist the counters, stop the thread. Idempotent.
        True when the thread finished within ``timeout``."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        # A submit that raced with close may have appended after the final drain.
        if leftover := len(self._queue):
            self._queue.clear()
            self._dropped += leftover
        return True

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                closing = self._closing
                if not closing and not self._flush_wanted and len(self._queue) < self._batch_size:
                    self._wake.wait(self._flush_interval)
                self._wake.clear()
                self._flush_wanted = False
                try:
                    self._drain(final=closing)
                except Exception:  # a bug here must not end recording for the process
                    log.exception("record writer: unexpected error")
                    time.sleep(self._flush_interval)
                if closing and not self._queue:
                    break
        finally:
            self._close_store()
            with self._done:
                self._done.notify_all()

    def _drain(self, *, final: bool) -> None:
        queue = self._queue
        while queue:
            count = min(len(queue), self._batch_size)
            items = [queue.popleft() for _ in range(count)]
            try:
                events, size = self._to_events(items)
                self._write(events, size, final=final)
            finally:  # even after a bug, so that flush() callers are not left waiting
                with self._done:
                    self._handled += count
                    self._done.notify_all()
        due = time.monotonic() - self._last_write >= _COUNTERS_ONLY_EVERY
        pending = self._dropped != self._dropped_seen or self._unsaved or self._external
        if (final or due) and pending:
            self._write([], 0, final=final)

    def _to_events(self, items: list[Any]) -> tuple[list[Event], int]:
        """Process item by item, so one bad item costs only itself."""
        events: list[Event] = []
        size = 0
        process = self._process
        for item in items:
            try:
                produced = process([item]) if process is not None else [item]
                for event in produced:
                    if not isinstance(event, Event):
                        raise TypeError(f"expected an Event, got {type(event).__name__}")
            except Exception as exc:
                self._failed += 1
                self._add_unsaved(EVENTS_FAILED, 1)
                self._log_failure("process", exc)
                continue
            events.extend(produced)
            size += sum(_approximate_size(event) for event in produced)
        return events, size

    def _write(self, events: list[Event], size: int, *, final: bool) -> None:
        dropped = self._dropped  # read once: the producer keeps counting meanwhile
        while self._external:
            for name, value in self._external.popleft().items():
                self._add_unsaved(name, value)
        counters = dict(self._unsaved)
        for name, value in (
            (EVENTS_RECORDED, len(events)),
            (BYTES_STORED, size),
            (EVENTS_DROPPED, dropped - self._dropped_seen),
        ):
            if value:
                counters[name] = counters.get(name, 0) + value
        delays = (0.05,) if final else _RETRY_DELAYS  # closing should not wait long
        for attempt in range(len(delays) + 1):
            try:
                if self._store is None:
                    self._store = self._store_factory()
                self._store.write_batch(events, counters)
            except (TypeError, ValueError, OverflowError) as exc:
                # A value msgpack cannot encode: find the events at fault (packing each is
                # the cost only this rare path pays), count them, write the others.
                good = [e for e in events if _packable(e)]
                if len(good) == len(events):
                    raise
                self._log_failure("encode", exc)
                self._failed += len(events) - len(good)
                self._add_unsaved(EVENTS_FAILED, len(events) - len(good))
                self._write(good, sum(_approximate_size(e) for e in good), final=final)
                return
            except Exception as exc:
                self._log_failure("write", exc)
                self._close_store()  # a fresh connection on retry, in case this one is broken
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                continue
            self._unsaved.clear()
            self._dropped_seen = dropped
            self._recorded += len(events)
            self._stored_bytes += size
            self._batches += 1
            self._last_write = time.monotonic()
            return
        # Gave up: the events are lost, but what happened to them is not.
        self._dropped_seen = dropped
        self._unsaved = counters
        self._unsaved.pop(EVENTS_RECORDED, None)
        self._unsaved.pop(BYTES_STORED, None)
        self._add_unsaved(EVENTS_FAILED, len(events))
        self._failed += len(events)
        self._last_write = time.monotonic()  # retry the counters later, not in a tight loop

    def _add_unsaved(self, name: str, value: int) -> None:
        if value:
            self._unsaved[name] = self._unsaved.get(name, 0) + value

    def _log_failure(self, what: str, exc: Exception) -> None:
        seen = self._failure_logs.get(what, 0) + 1
        self._failure_logs[what] = seen
        if seen % _LOG_EVERY == 1:
            log.warning(
                "record writer: %s failed (%d so far): %r",
                what,
                seen,
                exc,
                exc_info=seen == 1,
            )

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:
                self._log_failure("close", exc)
