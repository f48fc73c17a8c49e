"""Warnings at most once per period and key: what ROS's `throttle_duration_sec` does, without ROS.

A flood of bad messages must not become a flood of log lines ("dropped, counted and logged
once"). The online services log through this, so the same throttling holds in a node, in a
script and in a test, and each kind of problem (its key) is throttled on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Throttled:
    """`emit(text)` at most once every `every_s` seconds per key; with `count`, the number of lines silenced
    meanwhile rides along (progress lines do without)."""

    def __init__(self, emit: Callable[[str], None], every_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, count: bool = True):
        self.emit, self.every_s, self.clock, self.count = emit, float(every_s), clock, count
        self._last: dict[str, float] = {}
        self._silenced: dict[str, int] = {}

    def __call__(self, key: str, text: str) -> bool:
        """Log `text` unless `key` was logged less than `every_s` ago; true when it was logged."""
        now = self.clock()
        if now - self._last.get(key, -math.inf) < self.every_s:
            self._silenced[key] = self._silenced.get(key, 0) + 1
            return False
        silenced = self._silenced.pop(key, 0)
        self._last[key] = now
        self.emit(text + (f" (+{silenced} like it since the last)" if silenced and self.count else ""))
        return True
