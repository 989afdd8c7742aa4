"""What an exported execution takes along: its own events and the unattributed ones that
replaying it needs.

That context is what replay loads around a trace: the PostgreSQL sessions of its
connections (startup and parameter status) and their unattributed traffic from shortly
before the execution to its end (session settings, statements prepared before the trace
began). Other executions' events are not taken along.

Finding it means reading every event of those stretches of time. Exporting many
executions (a time window), the stretches overlap, so :class:`ExecutionReader` reads
each stretch once and keeps the unattributed PostgreSQL events it saw, by connection and
in start order, for the executions that follow.
"""

from __future__ import annotations

import bisect
from typing import Final

from recorder.abc import Store
from recorder.model import PG_SESSION, StoredEvent

# Replay loads this much of a connection's traffic before an execution (prepared
# statements, session settings); an export carries the same.
CONTEXT_NS: Final = 60 * 10**9


def _order(stored: StoredEvent) -> tuple[int, int]:
    return (stored.event.start_ns, stored.id)


class ExecutionReader:
    """Reads executions with their context from one store, each stretch of time once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._covered: list[tuple[int, int]] = []  # disjoint [since, until) already read
        self._by_conn: dict[str, list[StoredEvent]] = {}  # unattributed pg.*, start order
        self._sessions: dict[str, list[StoredEvent]] | None = None

    def events(self, trace_id: str) -> list[StoredEvent]:
        """The execution's events and its context, in store (write) order."""
        own = self.store.get_trace(trace_id)
        conns = {e.event.conn_id for e in own if e.event.conn_id is not None}
        if not own or not conns:
            return own
        start = min(e.event.start_ns for e in own)
        end = max(e.event.start_ns + e.event.duration_ns for e in own)
        self._read(start - CONTEXT_NS, end + 1)
        context: dict[int, StoredEvent] = {}
        sessions = self._session_events()
        for conn in conns:
            found = self._by_conn.get(conn, [])
            low = bisect.bisect_left(found, (start - CONTEXT_NS, -1), key=_order)
            high = bisect.bisect_left(found, (end + 1, -1), key=_order)
            context.update((e.id, e) for e in found[low:high])
            context.update((e.id, e) for e in sessions.get(conn, ()) if e.event.start_ns <= end)
        return sorted([*context.values(), *own], key=lambda e: e.id)

    def _session_events(self) -> dict[str, list[StoredEvent]]:
        if self._sessions is None:  # one read for the whole export: a session may be old
            self._sessions = {}
            for e in self.store.events(kind=PG_SESSION):
                if e.event.conn_id is not None:
                    self._sessions.setdefault(e.event.conn_id, []).append(e)
        return self._sessions

    def _read(self, since: int, until: int) -> None:
        for low, high in self._gaps(since, until):
            for e in self.store.events(since_ns=low, until_ns=high):
                event = e.event
                if event.trace_id is None and event.conn_id and event.kind[:3] == "pg.":
                    bisect.insort(self._by_conn.setdefault(event.conn_id, []), e, key=_order)
            self._cover(low, high)

    def _gaps(self, since: int, until: int) -> list[tuple[int, int]]:
        gaps, cursor = [], since
        for low, high in self._covered:
            if high <= cursor:
                continue
            if low >= until:
                break
            if low > cursor:
                gaps.append((cursor, low))
            cursor = max(cursor, high)
        if cursor < until:
            gaps.append((cursor, until))
        return gaps

    def _cover(self, since: int, until: int) -> None:
        merged: list[tuple[int, int]] = []
        for low, high in sorted([*self._covered, (since, until)]):
            if merged and low <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self._covered = merged


def execution_events(store: Store, trace_id: str) -> list[StoredEvent]:
    """One execution's events and its context (see the module's docstring), by store id."""
    return ExecutionReader(store).events(trace_id)
