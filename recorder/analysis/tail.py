"""``flux tail``: which executions have completed since the last look, and filters.

The store says nothing about completion, so the follower infers it from the
executions index as it polls. The sidecar writes a request's ``http.inbound`` event
when the response has gone out, so an execution whose root is an inbound request is
done once its row stops changing for ``settle_ns`` (its last queries and mutations
may reach the store a batch later). An execution without an inbound request (a job,
a script) is done once it has been quiet for ``quiet_ns``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from recorder.model import HTTP_INBOUND, ExecutionSummary

DEFAULT_SETTLE_NS: Final = 500_000_000
DEFAULT_QUIET_NS: Final = 2_000_000_000
_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_UNIT_NS: Final = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
                   "d": 86400 * 10**9}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class TailFilter:
    errors: bool = False  # only executions with an error event or a 5xx answer
    path: str | None = None  # a prefix, or a glob when it holds * ? or [
    min_duration_ns: int = 0

    def accepts(self, row: ExecutionSummary) -> bool:
        if self.errors and not (row.errors or (row.status is not None and row.status >= 500)):
            return False
        if row.duration_ns < self.min_duration_ns:
            return False
        if self.path is not None:
            if row.path is None:
                return False
            if any(c in self.path for c in "*?["):
                return fnmatch.fnmatchcase(row.path, self.path)
            return row.path.startswith(self.path)
        return True


@dataclass(slots=True)
class _Seen:
    state: tuple[int, int, str | None]  # events, end, root kind: what changes while it runs
    since_ns: int  # when ``state`` was first seen
    done: bool = False


class Follower:
    """Fed the executions the store lists at each poll; returns those just completed."""

    def __init__(
        self, *, settle_ns: int = DEFAULT_SETTLE_NS, quiet_ns: int = DEFAULT_QUIET_NS
    ) -> None:
        self.settle_ns = settle_ns
        self.quiet_ns = quiet_ns
        self._seen: dict[str, _Seen] = {}

    def skip_existing(self, rows: Iterable[ExecutionSummary], now_ns: int) -> None:
        """Marks what already looks complete as shown, so following starts from now.
        Requests still running when the follower starts are shown when they complete."""
        for row in rows:
            quiet = now_ns - row.end_ns >= self.quiet_ns
            done = row.root_kind == HTTP_INBOUND or quiet
            self._seen[row.trace_id] = _Seen(_state(row), now_ns, done=done)

    def poll(self, rows: Iterable[ExecutionSummary], now_ns: int) -> list[ExecutionSummary]:
        completed = []
        for row in rows:
            state = _state(row)
            seen = self._seen.get(row.trace_id)
            if seen is None:
                seen = self._seen[row.trace_id] = _Seen(state, now_ns)
            elif seen.state != state:
                if seen.done and seen.state[2] != HTTP_INBOUND and row.root_kind == HTTP_INBOUND:
                    seen.done = False  # a request whose early spans looked like a quiet job
                seen.state, seen.since_ns = state, now_ns
            if seen.done:
                continue
            wait = self.settle_ns if row.root_kind == HTTP_INBOUND else self.quiet_ns
            # Quiet by our clock, or by the events' own: a store read after the fact
            # (``--since``) holds executions that ended long ago.
            if now_ns - seen.since_ns >= wait or now_ns - row.end_ns >= wait:
                seen.done = True
                completed.append(row)
        completed.sort(key=lambda r: (r.end_ns, r.trace_id))
        return completed

    def forget_unlisted(self, rows: Iterable[ExecutionSummary]) -> None:
        """Drops what the last poll no longer listed (it fell out of the time window),
        so memory stays bounded while following for days."""
        listed = {r.trace_id for r in rows}
        for trace_id in [t for t in self._seen if t not in listed]:
            del self._seen[trace_id]

    def __len__(self) -> int:
        return len(self._seen)


def _state(row: ExecutionSummary) -> tuple[int, int, str | None]:
    return (row.events, row.end_ns, row.root_kind)


def parse_since(text: str, now_ns: int) -> int:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1h30m`` ago, or an ISO 8601 time (UTC unless it
    says otherwise), as nanoseconds since the epoch."""
    spec = text.strip()
    pos, total = 0, 0
    for match in _DURATION.finditer(spec):
        if match.start() != pos:
            break
        total += int(float(match[1]) * _UNIT_NS[match[2].lower()])
        pos = match.end()
    if pos == len(spec) and pos:
        return now_ns - total
    try:
        moment = datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 5m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)
