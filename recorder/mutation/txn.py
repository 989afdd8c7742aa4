"""When a captured row change becomes committed or rolled back.

A row change is final only when its transaction ends. Per connection, the
tracker replays what the server did, execution by execution, from what the
recording shows: the rows each statement captured, its command tag or its
error, and the ReadyForQuery status at the end of the cycle.

- Autocommit, or the implicit transaction of a multi-statement simple Query or
  an extended-protocol batch: committed when the cycle ends idle without an
  error; an error rolls back everything since the implicit transaction began.
  A COMMIT that fails (a serializable transaction's serialization failure at
  commit) leaves the session idle after an error: rolled back too.
- BEGIN ... COMMIT/ROLLBACK: held until the end. A COMMIT of a failed
  transaction answers ``ROLLBACK`` and is one.
- SAVEPOINT / RELEASE / ROLLBACK TO: a rollback to a savepoint rolls back what
  was captured after it (those are final at once) and keeps the savepoint.
- PREPARE TRANSACTION: the outcome is decided elsewhere; marked ``prepared``.
- The connection ends with a transaction open: the server rolls it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

COMMITTED: Final = "committed"
ROLLED_BACK: Final = "rolled_back"
PREPARED: Final = "prepared"
UNKNOWN: Final = "unknown"  # held too long: emitted before its transaction ended

MAX_PENDING: Final = 100_000

_SAVEPOINT_NAME = re.compile(
    r"^\s*(?:savepoint|release(?:\s+savepoint)?|rollback(?:\s+(?:work|transaction))?\s+to"
    r"(?:\s+savepoint)?)\s+(\"(?:[^\"]|\"\")*\"|[^\s;]+)",
    re.IGNORECASE,
)
_ROLLBACK_TO = re.compile(r"^\s*rollback(?:\s+(?:work|transaction))?\s+to\b", re.IGNORECASE)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rows(Generic[T]):
    """Row changes one execution captured."""

    items: list[T]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one execution ended: its command tag, or ``tag`` None for an error."""

    tag: str | None
    sql: str = ""


def savepoint_name(sql: str) -> str:
    match = _SAVEPOINT_NAME.match(sql)
    if match is None:
        return ""
    name = match.group(1)
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


@dataclass
class TxnTracker(Generic[T]):
    pending: list[tuple[int, T]] = field(default_factory=list)
    savepoints: list[tuple[str, int]] = field(default_factory=list)
    _serial: int = 0

    def apply(
        self, steps: list[Rows[T] | Outcome], *, status_before: str, status_after: str
    ) -> list[tuple[T, str]]:
        """Feeds one cycle; returns the row changes that became final, with their status."""
        final: list[tuple[T, str]] = []
        explicit = status_before in ("T", "E")
        failed = False
        for step in steps:
            if isinstance(step, Rows):
                for item in step.items:
                    self.pending.append((self._serial, item))
                    self._serial += 1
                continue
            if step.tag is None:  # an error: the rest of the cycle did not run
                failed = True
                if not explicit:
                    self._end(final, ROLLED_BACK)
                break
            word = step.tag.split(" ", 1)[0]
            if word in ("BEGIN", "START"):
                explicit = True
            elif word == "SAVEPOINT":
                self.savepoints.append((savepoint_name(step.sql), self._serial))
            elif word == "RELEASE":
                self._pop_to(savepoint_name(step.sql), inclusive=True)
            elif word == "ROLLBACK" and _ROLLBACK_TO.match(step.sql):
                mark = self._pop_to(savepoint_name(step.sql), inclusive=False)
                if mark is not None:
                    kept = [(s, item) for s, item in self.pending if s < mark]
                    final.extend((item, ROLLED_BACK) for s, item in self.pending if s >= mark)
                    self.pending = kept
            elif word in ("COMMIT", "ROLLBACK") or step.tag == "PREPARE TRANSACTION":
                status = {"COMMIT": COMMITTED, "ROLLBACK": ROLLED_BACK}.get(word, PREPARED)
                self._end(final, status)
                explicit = False
        if status_after == "I":
            # Idle after an error: the error ended the transaction (a COMMIT that failed, as
            # a serialization failure can); otherwise what is left committed.
            self._end(final, ROLLED_BACK if failed else COMMITTED)
        if len(self.pending) > MAX_PENDING:
            excess = len(self.pending) - MAX_PENDING
            final.extend((item, UNKNOWN) for _, item in self.pending[:excess])
            del self.pending[:excess]
        return final

    def close(self) -> list[tuple[T, str]]:
        """The connection ended: an open transaction is rolled back by the server."""
        final: list[tuple[T, str]] = []
        self._end(final, ROLLED_BACK)
        return final

    def _end(self, final: list[tuple[T, str]], status: str) -> None:
        final.extend((item, status) for _, item in self.pending)
        self.pending.clear()
        self.savepoints.clear()

    def _pop_to(self, name: str, *, inclusive: bool) -> int | None:
        """Drops savepoints above ``name`` (and it, if ``inclusive``); returns its mark."""
        for i in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[i][0] == name:
                mark = self.savepoints[i][1]
                del self.savepoints[i if inclusive else i + 1 :]
                return mark
        return None
