"""Model-predictive path integral control (MPPI) over whole-horizon rollouts.

Every control period MPPI draws K control sequences around its previous plan (time-correlated
Gaussian noise, clipped to the actuator limits), rolls all of them out in one call, scores each
by its cost and averages them with weights exp(−(S − S_min)/λ) (Williams et al., "Information
theoretic MPC", 2017). The first control is applied; the plan shifts by one step and seeds the
next period. One of the K candidates is always the previous plan itself (no noise), so a good
plan is never lost to sampling.

Written here rather than taken from `pytorch-mppi`: its dynamics contract is one step of a
Markov state, F(x, u) → x'. MetaSym's decoder reads a context window, so that contract means the
window as state and H calls per period: 742 ms for K = 512, H = 20 on an AMD EPYC core, against
26 ms for the one whole-horizon call this controller made then (9 ms since session 14; docs/decisions.md,
"Closed loop" and "The controller at 50 Hz with K = 512").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metasym_core.errors import MetaSymError

#: rollout(candidates [K, H, m]) -> predicted states [K, H, D]; candidates[:, 0] is applied now.
Rollout = Callable[[np.ndarray], np.ndarray]
#: cost(states [K, H, D], candidates [K, H, m]) -> [K]
Cost = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MPPIConfig:
    """Sampling settings. `temperature` λ is relative: the weights use (S − S_min) / (λ · spread),
    spread = the mean of S − S_min, so λ does not depend on the cost's units."""

    samples: int = 512  # K
    horizon: int = 25  # H control steps
    noise_std: float = 0.6  # per control entry, in control units
    smoothing: float = 0.8  # noise AR(1) coefficient along the horizon (0: white)
    temperature: float = 0.1

    def __post_init__(self):
        if self.samples < 2 or self.horizon < 1:
            raise MetaSymError(f"MPPI needs samples >= 2 and horizon >= 1, got {self.samples}, {self.horizon}")
        if not (self.noise_std > 0 and self.temperature > 0 and 0 <= self.smoothing < 1):
            raise MetaSymError("MPPI noise_std and temperature must be > 0 and smoothing in [0, 1)")


class MPPI:
    """MPPI over `control_dim` controls bounded by `low`/`high`, starting from the plan `initial` [m]."""

    def __init__(self, config: MPPIConfig, low: np.ndarray, high: np.ndarray, initial: np.ndarray, seed: int = 0):
        self.config = config
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.plan = np.repeat(np.clip(np.asarray(initial, dtype=np.float64), self.low, self.high)[None],
                              config.horizon, axis=0)
        self.rng = np.random.default_rng(seed)
        self.last_costs: np.ndarray | None = None

    def _noise(self) -> np.ndarray:
        K, H, m = self.config.samples, self.config.horizon, self.plan.shape[1]
        white = self.rng.normal(size=(K, H, m))
        a = self.config.smoothing
        out = np.empty_like(white)
        out[:, 0] = white[:, 0]
        scale = math.sqrt(1.0 - a * a)
        for h in range(1, H):  # stationary AR(1): each step has the same variance
            out[:, h] = a * out[:, h - 1] + scale * white[:, h]
        out[0] = 0.0  # candidate 0: the previous plan itself
        return self.config.noise_std * out

    def solve(self, rollout: Rollout, cost: Cost, first: np.ndarray | None = None) -> np.ndarray:
        """One control period: sample, roll out, weight; returns the new plan [H, m] (apply plan[0]).

        `first` [m] or [d, m], if given, are controls already decided for the first step(s) (the plant
        applies them while this solve runs: an actuation delay of one period, or of d where a solve
        takes longer than a period): every candidate starts with them and only the later steps are
        optimised."""
        candidates = np.clip(self.plan[None] + self._noise(), self.low, self.high)
        fixed = None
        if first is not None:
            fixed = np.asarray(first, dtype=np.float64).reshape(-1, self.plan.shape[1])[: self.config.horizon]
            candidates[:, : len(fixed)] = np.clip(fixed, self.low, self.high)
        states = rollout(candidates)
        costs = np.asarray(cost(states, candidates), dtype=np.float64)
        costs = np.where(np.isfinite(costs), costs, np.inf)
        best = costs.min()
        if not np.isfinite(best):
            raise MetaSymError("every MPPI candidate's cost is NaN or infinite")
        excess = costs - best
        spread = np.mean(excess[np.isfinite(excess)]) or 1.0
        weights = np.exp(-excess / (self.config.temperature * spread))
        weights /= weights.sum()
        self.plan = np.einsum("k,khm->hm", weights, candidates)
        if fixed is not None:  # exactly the decided controls (the weighted average rounds them)
            self.plan[: len(fixed)] = candidates[0, : len(fixed)]
        self.last_costs = costs
        return self.plan

    def shift(self) -> None:
        """Advance the plan by one control period (its last control repeats)."""
        self.plan = np.concatenate([self.plan[1:], self.plan[-1:]])
