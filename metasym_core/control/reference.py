"""Time-parameterised references: where the vehicle should be at time t, whatever it does.

A tracking error is only a yardstick against a reference that does not move with the vehicle
(the simulator's waypoint carrot chases it, so it is not one). `FigureEight` is the lemniscate of
Gerono that Neural-Fly and Neural-MPC style benchmarks fly: x = a·sin(ωt), y = b·sin(2ωt)/2 at a
fixed altitude and heading, starting at its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metasym_core.errors import MetaSymError


@dataclass(frozen=True)
class FigureEight:
    """A figure-8 of half-width `a` [m] (x) and half-height `b` [m] (y) flown once every `period_s`,
    at `altitude` [m] around `center` (x, y), heading 0; time 0 is `start_s` into the lap."""

    a: float = 1.5
    b: float = 1.5
    period_s: float = 8.0
    altitude: float = 1.75
    center: tuple[float, float] = (0.0, 0.0)
    start_s: float = 0.0

    def __post_init__(self):
        for name in ("a", "b", "period_s", "altitude"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise MetaSymError(f"figure-8 {name} must be positive, got {value!r}")

    def position(self, t) -> np.ndarray:
        """Reference positions [..., 3] at times `t` [s] (an array or a number)."""
        t = np.asarray(t, dtype=np.float64) + self.start_s
        w = 2.0 * math.pi / self.period_s
        x = self.center[0] + self.a * np.sin(w * t)
        y = self.center[1] + 0.5 * self.b * np.sin(2.0 * w * t)
        return np.stack([x, y, np.full_like(t, self.altitude)], axis=-1)

    def velocity(self, t) -> np.ndarray:
        """Reference velocities [..., 3] at times `t`."""
        t = np.asarray(t, dtype=np.float64) + self.start_s
        w = 2.0 * math.pi / self.period_s
        return np.stack([self.a * w * np.cos(w * t), self.b * w * np.cos(2.0 * w * t), np.zeros_like(t)], axis=-1)

    @property
    def peak_speed(self) -> float:
        """The largest speed along the reference [m/s] (sampled finely)."""
        t = np.linspace(0.0, self.period_s, 2001)
        return float(np.linalg.norm(self.velocity(t), axis=-1).max())
