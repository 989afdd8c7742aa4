"""Where replay answers come from: the store, loaded around the traces being replayed."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from protocols.sqltext import normalize
from recorder.abc import PayloadSealer
from recorder.model import StoredEvent
from recorder.pgreplay import Hit, Miss, ReplayIndex
from recorder.replayreport import ReplayReport
from recorder.store import StoreError, TraceNotFound, open_store

log = logging.getLogger("flux.replay")

# A trace's statements may use statements prepared earlier on the same connection:
# load what the connections did this long before the trace started.
CONTEXT_NS = 60 * 10**9
UNATTRIBUTED_LIMIT = 5000
# A miss looks for recordings stored since the index was loaded at most this often.
CATCH_UP_SECONDS = 1.0


class PgReplaySource:
    def __init__(self, store_location: str, sealer: PayloadSealer | None = None) -> None:
        self.location = store_location
        self.sealer = sealer  # opens sealed payloads (the private keys); None: plain only
        self.index = ReplayIndex()
        self.scope: str | None = None  # the trace the current run replays, if any
        self._loaded: set[int] = set()
        self._traces: set[str | None] = set()
        self._caught_up = 0.0
        self.hits = 0
        self.misses = 0
        self.report = ReplayReport()  # the current run's, replaced by reset()

    def reset(self, scope: str | None = None, report: ReplayReport | None = None) -> None:
        """A fresh index (consumption starts over), scoped to one trace or to none."""
        self.index = ReplayIndex()
        self.report = report if report is not None else ReplayReport(scope=scope)
        self._loaded.clear()
        self._traces.clear()
        self._caught_up = 0.0
        self.scope = scope
        if scope is not None:
            self._load(scope)

    def _add(self, events: Sequence[StoredEvent]) -> None:
        fresh = sorted((e for e in events if e.id not in self._loaded), key=lambda e: e.id)
        self._loaded.update(e.id for e in fresh)
        self.index.add_events(fresh)

    def _load(self, trace: str | None) -> None:
        if trace in self._traces:
            return
        self._traces.add(trace)
        try:
            store = open_store(self.location, readonly=True, sealer=self.sealer)
        except (StoreError, OSError) as exc:
            log.error("replay cannot read the store at %s: %s", self.location, exc)
            return
        try:
            if trace is None:
                recent = list(
                    store.events(kind="pg.query", trace_id=None, limit=UNATTRIBUTED_LIMIT)
                )
                self._add(recent + list(store.events(kind="pg.session", limit=100)))
                return
            try:
                own = store.get_trace(trace)
            except TraceNotFound:
                log.warning("replay: trace %s is not in the store", trace)
                return
            start = min(e.event.start_ns for e in own)
            end = max(e.event.start_ns + e.event.duration_ns for e in own)
            conns = {e.event.conn_id for e in own}
            around = [
                e
                for e in store.events(since_ns=start - CONTEXT_NS, until_ns=end + 1)
                if e.event.conn_id in conns and e.event.kind.startswith("pg.")
            ]
            self._add(around + own)
        finally:
            store.close()

    def _catch_up(self) -> bool:
        """Adds what was stored after the newest recording loaded; True if anything was.

        Entering replay from record in the same sidecar, the recorder's last batches can
        land after the index was loaded: a statement recorded a moment before the switch
        must not miss for that."""
        now = time.monotonic()
        if not self._loaded or now - self._caught_up < CATCH_UP_SECONDS:
            return False
        self._caught_up = now
        try:
            store = open_store(self.location, readonly=True, sealer=self.sealer)
        except (StoreError, OSError):
            return False
        try:
            fresh = [
                e
                for e in store.events(after_id=max(self._loaded), limit=UNATTRIBUTED_LIMIT)
                if e.event.kind.startswith("pg.")
            ]
        finally:
            store.close()
        self._add(fresh)
        return bool(fresh)

    def parameter_status(self) -> dict[str, str]:
        if not self.index.parameter_status:
            self._load(None)
        return self.index.parameter_status

    def describe_statement(self, trace: str | None, sql: str) -> tuple[bytes, ...] | Miss:
        """A recorded answer to Describe of the statement, or the miss (reported)."""
        self._load(trace)
        found = self.index.describe_statement(sql)
        if found is None and trace is not None:
            self._load(None)
            found = self.index.describe_statement(sql)
        if found is None and self._catch_up():
            found = self.index.describe_statement(sql)
        if found is not None:
            return found
        miss = self.index.undescribed(trace, sql)
        closest = miss.closest.normalized if miss.closest is not None else None
        self.misses += 1
        self.report.miss("pg.query", trace, normalize(sql), miss.message, closest)
        return miss

    def match(
        self,
        trace: str | None,
        sql: str,
        params: tuple[bytes | None, ...],
        types: tuple[int, ...],
        *,
        simple: bool,
    ) -> Hit | Miss:
        self._load(trace)
        result = self.index.match(trace, sql, params, types, simple=simple)
        if isinstance(result, Miss) and trace is not None:
            # Session-level traffic may only be in unattributed recordings.
            self._load(None)
            result = self.index.match(trace, sql, params, types, simple=simple)
        if isinstance(result, Miss) and self._catch_up():
            result = self.index.match(trace, sql, params, types, simple=simple)
        request = result.recorded.normalized if isinstance(result, Hit) else sql
        if isinstance(result, Hit):
            self.hits += 1
            self.report.hit("pg.query", trace, request, result.volatile)
        else:
            self.misses += 1
            closest = result.closest.normalized if result.closest is not None else None
            self.report.miss("pg.query", trace, request, result.message, closest)
        return result
