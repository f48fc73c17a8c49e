"""Context window of the most recent valid samples, with the validation the
predictor needs before a sample may enter it.

A sample is (stamp [s], state [D], control [m], dt [s]). It is rejected — never
raised — when its dimension is wrong, it holds NaN/Inf, dt is not positive, its
stamp is older than `max_age_s` relative to the caller's clock (stale, checked
first), or its stamp is not after the previous accepted stamp (out of order / duplicate). Rejections are
counted per reason so that a node can report them and keep running.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from metasym_core.errors import MetaSymError

REASONS: tuple[str, ...] = ("dimension", "nonfinite", "bad_dt", "out_of_order", "stale")


@dataclass(frozen=True)
class Sample:
    """One accepted sample of the stream."""

    stamp: float
    state: np.ndarray
    control: np.ndarray
    dt: float
    step: int = 0


class ContextWindow:
    """The last `capacity` valid samples (oldest first) plus rejection counters."""

    def __init__(self, state_dim: int, control_dim: int, capacity: int, max_age_s: float = math.inf):
        for name, value, low in (("state_dim", state_dim, 1), ("control_dim", control_dim, 0),
                                 ("capacity", capacity, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise MetaSymError(f"context window {name} must be an integer >= {low}, got {value!r}")
        if not (max_age_s > 0):
            raise MetaSymError(f"context window max_age_s must be positive, got {max_age_s!r}")
        self.state_dim, self.control_dim, self.capacity = int(state_dim), int(control_dim), int(capacity)
        self.max_age_s = float(max_age_s)
        self._samples: deque[Sample] = deque(maxlen=self.capacity)
        self._last_stamp = -math.inf
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def full(self) -> bool:
        """True once `capacity` samples are held (a prediction may be made)."""
        return len(self._samples) == self.capacity

    @property
    def dropped(self) -> int:
        """Total rejected samples so far."""
        return sum(self.rejected.values())

    def check(self, stamp: float, state, control, dt: float, now: float | None = None) -> str | None:
        """The rejection reason of a sample (one of REASONS), or None if it is acceptable."""
        state = np.asarray(state, dtype=np.float64)
        control = np.asarray(control, dtype=np.float64)
        if state.shape != (self.state_dim,) or control.shape != (self.control_dim,):
            return "dimension"
        if not (np.isfinite(state).all() and np.isfinite(control).all() and math.isfinite(stamp)):
            return "nonfinite"
        if not (math.isfinite(dt) and dt > 0):
            return "bad_dt"
        if now is not None and now - stamp > self.max_age_s:
            return "stale"
        if stamp <= self._last_stamp:
            return "out_of_order"
        return None

    def push(self, stamp: float, state, control, dt: float, now: float | None = None,
             step: int = 0) -> str | None:
        """Append the sample if valid; return the rejection reason (counted) or None."""
        reason = self.check(stamp, state, control, dt, now)
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        self._samples.append(Sample(float(stamp), np.array(state, dtype=np.float64),
                                    np.array(control, dtype=np.float64), float(dt), int(step)))
        self._last_stamp = float(stamp)
        self.accepted += 1
        return None

    def last(self) -> Sample:
        """The newest accepted sample."""
        if not self._samples:
            raise MetaSymError("context window is empty")
        return self._samples[-1]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states [T, D], controls [T, m], steps [T]) of the held samples, oldest first."""
        if not self._samples:
            raise MetaSymError("context window is empty")
        samples = list(self._samples)
        states = np.stack([s.state for s in samples])
        controls = np.stack([s.control for s in samples]) if self.control_dim else np.zeros((len(samples), 0))
        steps = np.array([s.dt for s in samples])
        return states, controls, steps

    def clear(self) -> None:
        """Forget the samples (e.g. after a discontinuity); counters and the last stamp are kept."""
        self._samples.clear()
