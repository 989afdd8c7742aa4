"""State shared by every listener of one sidecar process: the mode and the counters."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

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

    def set_mode(self, mode: str, *, source: str) -> bool:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == self.mode:
            return False
        log.info("mode %s -> %s (%s)", self.mode, mode, source)
        self.mode = mode
        self.mode_epoch += 1
        self.counters["mode_switches"] += 1
        return True
