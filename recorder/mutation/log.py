"""The recorder's mutation log: per connection, captures in, final mutation events out."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ..model import Event
from .capture import StatementCapture
from .events import mutation_events
from .lookupkey import lookup_key
from .txn import ROLLED_BACK, Outcome, Rows, TxnTracker


class MutationLog:
    def __init__(self) -> None:
        # FLUX_LOOKUP_KEY, else the fixed key of old stores, until use_store() names the store.
        self._trackers: dict[str, TxnTracker[Event]] = {}
        self._autocommits: Counter[str] = Counter()
        self._seqs: Counter[str] = Counter()
        self._secret = lookup_key()
        self.counters: Counter[str] = Counter()  # drained into the store's counters

    def use_store(self, location: str) -> None:
        """Digests rows with the store's own lookup key, made on first use."""
        self._secret = lookup_key(location, create=True)

    def cycle(
        self,
        conn_id: str,
        captures: tuple[StatementCapture, ...],
        decoded: Any,
        query_event: Event,
        *,
        status_before: str,
        status_after: str,
        txn_serial: int,
    ) -> list[tuple[Event, str]]:
        """The mutation events that became final in this cycle, with their status."""
        tracker = self._trackers.get(conn_id)
        if tracker is None:
            if not captures and status_before == "I" and status_after in ("I", ""):
                return []  # nothing captured, no transaction: the common case costs nothing
            tracker = self._trackers[conn_id] = TxnTracker()
        if status_before in ("T", "E") or status_after in ("T", "E", ""):
            txn = f"{conn_id}/{txn_serial}"
        else:
            self._autocommits[conn_id] += 1
            txn = f"{conn_id}/a{self._autocommits[conn_id]}"
        by_index: defaultdict[int, list[StatementCapture]] = defaultdict(list)
        for capture in captures:
            by_index[capture.index].append(capture)
        outcomes: list[str | None] = decoded.outcomes
        executed: list[str] = decoded.executed
        steps: list[Rows[Event] | Outcome] = []
        last = max([len(outcomes) - 1, *by_index])
        for index in range(last + 1):
            rows: list[Event] = []
            for capture in by_index.get(index, ()):
                if capture.tag is None:
                    continue  # the statement failed: it changed nothing
                if capture.truncated:  # rows past the proxy's per-statement cap were not kept
                    self.counters["mutations.truncated"] += 1
                if capture.uncaptured:
                    self.counters["mutations.uncaptured"] += 1
                    self.counters[f"mutations.uncaptured.{capture.uncaptured}"] += 1
                    continue
                made = mutation_events(
                    capture, conn_id=conn_id, start_ns=query_event.start_ns,
                    query_span=query_event.span_id,
                    statement=executed[index] if index < len(executed) else None,
                    txn=txn, secret=self._secret, trace_id=query_event.trace_id,
                )  # fmt: skip
                for event in made:  # capture order on the connection, for history ordering
                    self._seqs[conn_id] += 1
                    event.attrs["seq"] = self._seqs[conn_id]
                rows.extend(made)
                self.counters["mutations.captured"] += sum(
                    1 for e in made if not e.attrs.get("key_changed")
                )
            if rows:
                steps.append(Rows(rows))
            if index < len(outcomes):
                steps.append(
                    Outcome(outcomes[index], executed[index] if index < len(executed) else "")
                )
        final = tracker.apply(steps, status_before=status_before, status_after=status_after)
        if not tracker.pending and not tracker.savepoints and status_after == "I":
            del self._trackers[conn_id]
        self._count(final)
        return final

    def close(self, conn_id: str) -> list[tuple[Event, str]]:
        tracker = self._trackers.pop(conn_id, None)
        self._autocommits.pop(conn_id, None)
        self._seqs.pop(conn_id, None)
        final = tracker.close() if tracker is not None else []
        self._count(final)
        return final

    def _count(self, final: list[tuple[Event, str]]) -> None:
        for event, status in final:
            if status == ROLLED_BACK and not event.attrs.get("key_changed"):
                self.counters["mutations.rolled_back"] += 1
