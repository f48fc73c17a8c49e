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


def minimum_jerk(t, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(fraction done, its rate [1/s]) at times `t` [s] of a minimum-jerk move lasting `duration_s`:
    10s³ − 15s⁴ + 6s⁵ of s = t / duration clipped to [0, 1], at rest at both ends (rate, acceleration 0)."""
    s = np.clip(np.asarray(t, dtype=np.float64) / duration_s, 0.0, 1.0)
    return 10 * s**3 - 15 * s**4 + 6 * s**5, (30 * s**2 - 60 * s**3 + 30 * s**4) / duration_s


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


@dataclass(frozen=True)
class Approach:
    """`reference` preceded by an approach from `start` (x, y, z): a straight line to the reference's first
    point with a minimum-jerk profile of `duration_s` (at rest at both ends), then the reference with its
    clock speeding up from 0 to 1 over `ramp_s` (τ = t²/(2·ramp) there), so position and velocity are
    continuous throughout and the path never leaves the segment and the reference's own curve. Time 0 is the
    start of the approach.

    A controller that takes over a vehicle somewhere else than on its reference (the ROS plant hovers where
    it started until the first plan) flies this instead of chasing the reference's far-away, moving point
    at full effort, which tips a learned-model MPPI over."""

    reference: FigureEight
    start: tuple[float, float, float]
    duration_s: float
    ramp_s: float = 2.0

    @classmethod
    def towards(cls, reference: FigureEight, position, speed: float = 0.5, minimum_s: float = 1.0) -> Approach:
        """The approach from `position`, `speed` [m/s] on average along the line (at least `minimum_s` long)."""
        start = np.asarray(position, dtype=np.float64).reshape(3)
        distance = float(np.linalg.norm(reference.position(0.0) - start))
        return cls(reference, tuple(float(v) for v in start), max(minimum_s, distance / speed))

    def _parts(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        blend, rate = (v[..., None] for v in minimum_jerk(t, self.duration_s))
        after = np.maximum(t - self.duration_s, 0.0)  # time on the reference's side
        ramping = after < self.ramp_s
        tau = np.where(ramping, after**2 / (2 * self.ramp_s), after - self.ramp_s / 2)
        speed = np.where(ramping, after / self.ramp_s, 1.0)[..., None]  # dτ/dt
        return t, blend, rate, tau, speed

    def position(self, t) -> np.ndarray:
        """Positions [..., 3] at times `t` [s] since the approach began."""
        t, blend, _, tau, _ = self._parts(t)
        start, goal = np.asarray(self.start), self.reference.position(0.0)
        return np.where((t < self.duration_s)[..., None], start + blend * (goal - start), self.reference.position(tau))

    def velocity(self, t) -> np.ndarray:
        """Velocities [..., 3] at times `t`."""
        t, _, rate, tau, speed = self._parts(t)
        start, goal = np.asarray(self.start), self.reference.position(0.0)
        return np.where((t < self.duration_s)[..., None], rate * (goal - start), speed * self.reference.velocity(tau))
