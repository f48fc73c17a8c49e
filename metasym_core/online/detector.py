"""Telling a new system from a manoeuvre: a test on the bias of the model's next-step residuals.

A changed physical parameter, a heavier quadrotor say, is a *persistent* error of the model:
its next-step residuals (the observed increment minus the predicted one, in the model's
normalised units) acquire a bias that stays. A manoeuvre makes the residuals large too, but
they come and go. So the alarm looks at the residuals' mean over a short window
(`window` transitions), per state coordinate, in units of that coordinate's residual spread
in a reference stretch of normal operation: the first `reference` transitions the detector
sees, then followed slowly (an exponential memory of `memory` transitions) while the
statistic stays below half the threshold, so a change is not learned as normal. The alarm
fires when any coordinate's windowed mean moves more than `threshold` spreads away from its
reference mean.

After an accepted adaptation the model's residuals change, so the reference means are
learned again over the next `reference // 2` transitions (the spreads are kept); no alarm
fires meanwhile. Measured on the bundled quadrotor model (docs/decisions.md, "Change
detection", window 25, reference 100, memory 2000): over 5 × 80 s of steady flight the
statistic stayed below 4.9 spreads, while a +30 % mass change drove it to 6.3-10.4 within a
second. A +50 % inertia or −20 % rotor arm moved it by at most 4.2: below the steady-flight
noise, so this test does not see them.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from metasym_core.errors import MetaSymError


class BiasDetector:
    """Windowed residual-bias alarm (see module doc). Feed residuals in order with `update`."""

    def __init__(self, window: int = 25, threshold: float = 5.5, reference: int = 100, memory: int = 2000):
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise MetaSymError(f"bias detector window must be an integer >= 2, got {window!r}")
        if isinstance(reference, bool) or not isinstance(reference, int) or reference < 2 * window:
            raise MetaSymError(f"bias detector reference must be an integer >= 2 x window, got {reference!r}")
        if not threshold > 0:
            raise MetaSymError(f"bias detector threshold must be positive, got {threshold!r}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < reference:
            raise MetaSymError(f"bias detector memory must be an integer >= reference, got {memory!r}")
        self.window, self.threshold, self.reference, self.memory = window, float(threshold), reference, memory
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        self._ref: list[np.ndarray] = []
        self._need = reference  # transitions still to collect for the reference
        self.mean: np.ndarray | None = None
        self.spread: np.ndarray | None = None
        self.score = 0.0  # newest statistic: the largest windowed |mean - reference mean| / spread
        self.alarms = 0

    @property
    def ready(self) -> bool:
        """True once a reference is learned (alarms can fire)."""
        return self._need == 0

    def rereference(self, spreads: bool = False) -> None:
        """Learn the reference means again (after new parameters came into force), with `spreads` the spreads
        too (the reference itself was not normal operation: alarms that no adaptation could answer)."""
        if spreads:
            self.spread = None
        self._ref, self._need = [], self.reference if self.spread is None else self.reference // 2
        self._recent.clear()
        self.score = 0.0

    def update(self, residuals: np.ndarray) -> bool:
        """Feed residuals `[n, D]` (oldest first); True if the alarm fired on any of them."""
        fired = False
        for r in np.atleast_2d(np.asarray(residuals, dtype=np.float64)):
            if not np.isfinite(r).all():
                continue
            if self._need:
                self._ref.append(r)
                self._need -= 1
                if not self._need:
                    ref = np.stack(self._ref)
                    self.mean = ref.mean(0)
                    if self.spread is None:
                        self.spread = np.maximum(ref.std(0), 1e-6)
                    self._ref = []
                continue
            self._recent.append(r)
            if len(self._recent) < self.window:
                continue
            self.score = float(np.max(np.abs(np.mean(self._recent, axis=0) - self.mean) / self.spread))
            if self.score > self.threshold:
                fired = True
            elif self.score < 0.5 * self.threshold:  # normal operation: the reference follows slowly
                # (an exponential memory of `memory` transitions)
                a = 1.0 / self.memory
                dev = r - self.mean
                self.mean = self.mean + a * dev
                self.spread = np.sqrt((1 - a) * self.spread ** 2 + a * dev ** 2)
        if fired:
            self.alarms += 1
        return fired
