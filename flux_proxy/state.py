"""State shared by every listener of one sidecar process: the mode and the counters."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

from recorder.replayreport import ReplayReport

log = logging.getLogger("flux")

MODES: Final = ("record", "replay", "passthrough")


class SidecarState:
    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        # Bumped on every switch; connections compare it at their idle points, which costs
        # one integer comparison per read instead of a callback per connection.
        self.mode_epoch = 0
        self.counters: Counter[str] = Counter()
        # What replay answers from: one trace (`flux replay`) or every recording (None).
        # Bumped with each new run so replay sources start consumption over.
        self.replay_scope: str | None = None
        self.replay_generation = 0
        self.report = ReplayReport()

    def begin_replay(self, scope: str | None) -> None:
        """A new replay run: recordings are unused again and the report starts empty."""
        self.replay_scope = scope
        self.replay_generation += 1
        self.report = ReplayReport(scope=scope)
        log.info("replay run %d scoped to %s", self.replay_generation, scope or "every trace")

    def set_mode(self, mode: str, *, source: str) -> bool:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == self.mode:
            return False
        log.info("mode %s -> %s (%s)", self.mode, mode, source)
        self.mode = mode
        self.mode_epoch += 1
        self.counters["mode_switches"] += 1
        if mode == "replay":  # entering replay starts a run: every recording is unused again
            self.begin_replay(self.replay_scope)
        return True
