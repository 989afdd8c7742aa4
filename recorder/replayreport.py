"""What one replay run observed: answers found, misses, and values that differed.

Every replaying part of the sidecar (the PostgreSQL replay server, the HTTP
replay addon, the UDP listeners) reports into the one report of the current
run, and ``flux replay`` reads it back through the admin API after its
request, so the verdict can name every query or call that missed or diverged.

The lists are bounded: a replay gone wrong (an app in a retry loop) must not
grow the sidecar without limit; what was left out is counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

MAX_ENTRIES: Final = 500


@dataclass(slots=True)
class ReplayReport:
    scope: str | None = None  # the trace being replayed, or None for any recording
    started_ns: int = field(default_factory=time.time_ns)
    hits: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)
    volatile: list[dict[str, Any]] = field(default_factory=list)
    left_out: int = 0

    def _keep(self, entries: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        if len(entries) < MAX_ENTRIES:
            entries.append(entry)
        else:
            self.left_out += 1

    def hit(
        self,
        kind: str,
        trace: str | None,
        request: str,
        differences: Iterable[tuple[Any, Any, Any]] = (),
    ) -> None:
        """An answer was found. ``differences`` are ``(where, recorded, new)`` for each
        volatile value (a timestamp, a generated id) that differed but still matched."""
        self.hits += 1
        diffs = [[where, recorded, new] for where, recorded, new in differences]
        if diffs:
            self._keep(
                self.volatile,
                {"kind": kind, "trace": trace, "request": request, "differences": diffs},
            )

    def miss(
        self, kind: str, trace: str | None, request: str, message: str, closest: str | None
    ) -> None:
        """No recording answers ``request``; ``closest`` names the nearest recorded one."""
        self._keep(
            self.misses,
            {
                "kind": kind,
                "trace": trace,
                "request": request,
                "message": message,
                "closest": closest,
                "at_ns": time.time_ns(),
            },
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "started_ns": self.started_ns,
            "hits": self.hits,
            "misses": list(self.misses),
            "volatile": list(self.volatile),
            "left_out": self.left_out,
        }
