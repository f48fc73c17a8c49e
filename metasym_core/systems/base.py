"""The one API every physical system family implements.

A family (spring mesh, open quantum system, quadrotor) samples physical
parameters for a split ("train" or the out-of-distribution "ood") and simulates
one trajectory per parameter draw. `metasym_core.systems.dataset` turns many
such trajectories into a stored dataset, so every family must follow this
contract exactly; the helpers below (`check_split`, `check_steps`,
`check_params`, uniform `sample_params`) are optional conveniences.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from metasym_core.errors import MetaSymError

SPLITS: tuple[str, ...] = ("train", "ood")


@dataclass
class Trajectory:
    """One simulated system: observed states in (q, p) layout plus diagnostics.

    `times` [T] float64 starts at 0 and strictly increases (steps may differ);
    `states` [T, D] float64 is what models see; `controls` [T, m] float64 with
    u_t acting on [t_t, t_{t+1}) (m may be 0); `extras` holds diagnostics only
    (e.g. clean states, hidden expectations), never model input.
    """

    params: dict[str, float]
    times: np.ndarray
    states: np.ndarray
    controls: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class SystemFamily(abc.ABC):
    """A family of physical systems with sampled parameters (see module doc)."""

    name: str
    state_dim: int
    control_dim: int
    state_names: list[str]
    control_names: list[str]
    units: dict[str, str]
    version: str
    default_systems: dict[str, int]
    default_steps: int

    @abc.abstractmethod
    def param_ranges(self, split: str) -> dict[str, tuple[float, float]]:
        """Closed range [lo, hi] of every physical parameter for `split`."""

    def sample_params(self, split: str, rng: np.random.Generator) -> dict[str, float]:
        """Draw each parameter uniformly from its range (override for other laws)."""
        ranges = self.param_ranges(split)
        return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranges.items()}

    @abc.abstractmethod
    def simulate(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        """Simulate one system with `params` for `steps` stored frames."""

    def options(self) -> dict:
        """Constructor options (recorded in dataset metadata)."""
        return {}

    @classmethod
    def noise_free_states(cls, ds) -> np.ndarray:
        """The noise-free expectation of every observed frame of dataset `ds`, `[N, T, D]` like `ds.states`.

        Why: a model trained on noisy next frames fits their noise too. The noise of a frame is independent of
        the frames before it, so the expectation given the past is the same target with far less variance
        (`training.noise_free_targets`). Default: the `clean_states` extra, which families that add sensor
        noise store, else the states themselves (a family without measurement noise). Families whose
        observation is noisy in another way override this (the quantum record)."""
        clean = ds.extras.get("clean_states", ds.states)
        if clean.shape != ds.states.shape:
            raise MetaSymError(f"{ds.family} dataset: its clean_states {list(clean.shape)} do not match its states "
                               f"{list(ds.states.shape)} (coordinates dropped from one of them?)")
        return clean

    # -- optional validation helpers -------------------------------------------------

    def check_split(self, split: str) -> str:
        """Return `split` or raise MetaSymError naming the valid splits."""
        if split not in SPLITS:
            raise MetaSymError(f"unknown split {split!r} for {self.name}; "
                               f"expected one of {', '.join(SPLITS)}")
        return split

    def check_steps(self, steps: int) -> int:
        """Return `steps` as int or raise MetaSymError if it is not a positive integer."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
            raise MetaSymError(f"steps must be a positive integer, got {steps!r}")
        return int(steps)

    def check_params(self, params: dict[str, float], split: str | None = None) -> dict[str, float]:
        """Check names and ranges of `params`; return them as floats.

        With `split` the range is that split's; without, the hull of all splits
        (simulate() does not know the split a draw came from).
        """
        ranges = {s: self.param_ranges(s) for s in (SPLITS if split is None else (self.check_split(split),))}
        names = list(next(iter(ranges.values())))
        missing = [k for k in names if k not in params]
        unknown = [k for k in params if k not in names]
        if missing or unknown:
            raise MetaSymError(f"{self.name} parameters: missing {missing}, unknown {unknown}; "
                               f"expected {names}")
        out = {}
        for k in names:
            lo = min(r[k][0] for r in ranges.values())
            hi = max(r[k][1] for r in ranges.values())
            value = float(params[k])
            if not lo <= value <= hi:
                where = f"the {split} range" if split else "all ranges"
                raise MetaSymError(f"{self.name} parameter {k}={value:g} is outside {where} [{lo:g}, {hi:g}]")
            out[k] = value
        return out
