"""A lock-stepped closed loop: a controller flies the quadrotor plant along a reference.

Closed-loop time advances one control period per step whatever the controller's solve took
(each solve is timed and reported), so every figure is reproducible and free of scheduling
noise. The plant is the simulator's: the Crocoddyl action model integrated at `dt`, thrusts
clipped to the rotor limits. A physical parameter may change at a set time; the controller is
told only if it asks to be (`tell`: the oracle). A flight that leaves the box (with a margin)
or goes below the floor has crashed and ends there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metasym_core.control.reference import FigureEight
from metasym_core.errors import MetaSymError
from metasym_core.systems import quadrotor as quad

CRASH_MARGIN = 0.5  # [m] beyond the box faces


@dataclass
class ClosedLoopFlight:
    """What one closed-loop flight did."""

    times: np.ndarray  # [N] s
    positions: np.ndarray  # [N, 3] actual
    reference: np.ndarray  # [N, 3]
    controls: np.ndarray  # [N, 4]
    solve_ms: np.ndarray  # [N] controller time per period
    crashed: bool
    change_time: float | None

    @property
    def errors(self) -> np.ndarray:
        """Position error [m] per step."""
        return np.linalg.norm(self.positions - self.reference, axis=1)

    def rmse(self, start: float = 0.0, end: float = np.inf) -> float:
        """Position RMSE [m] over start <= t < end."""
        mask = (self.times >= start) & (self.times < end)
        return float(np.sqrt(np.mean(self.errors[mask] ** 2))) if mask.any() else float("nan")

    def altitude_error(self, start: float = 0.0) -> float:
        """Mean altitude error [m] (actual − reference; negative = below) from `start` on."""
        mask = self.times >= start
        return float(np.mean(self.positions[mask, 2] - self.reference[mask, 2])) if mask.any() else float("nan")


@dataclass
class Change:
    """A parameter change of the plant at `time` [s] (scale factor on the nominal value)."""

    param: str = "mass"
    scale: float = 1.3
    time: float = 10.0
    tell: bool = False  # also tell the controller (`set_param`): the oracle


def fly(controller, reference: FigureEight, seconds: float, dt: float = 0.02, change: Change | None = None,
        box=quad.DEFAULT_BOX) -> ClosedLoopFlight:
    """Fly `controller` for `seconds`: its `control(t, x)` gets the Crocoddyl state (13-D), or the stored
    state (12-D) if it has `observe(t, x12, u)`, which then gets each applied transition; its `solve_ms`
    lists the time of each call."""
    params = {k: 1.0 for k in quad.PARAM_NAMES}
    _, plant, data = quad.step_model(quad.check_scales(params), dt)
    bounds = quad.box_array(box)
    x13 = np.concatenate([reference.position(0.0), [0.0, 0.0, 0.0, 1.0], np.zeros(6)])
    steps = int(round(seconds / dt))
    wants_stored = hasattr(controller, "observe")  # MetaSym controllers take stored 12-D states
    times, pos, ref, us, solve = [], [], [], [], []
    crashed = False
    for k in range(steps):
        t = k * dt
        if change is not None and k == int(round(change.time / dt)):
            key = f"{change.param}_scale"
            if key not in params:
                raise MetaSymError(f"unknown quadrotor parameter {change.param!r}")
            params[key] = change.scale
            _, plant, data = quad.step_model(quad.check_scales(params), dt)
            if change.tell:
                controller.set_param(change.param, change.scale)
        x12 = quad.to_stored(x13) if wants_stored else None
        u = controller.control(t, x12 if wants_stored else x13)
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, quad.MAX_THRUST)
        times.append(t)
        pos.append(x13[:3].copy())
        ref.append(reference.position(t))
        us.append(u)
        solve.append(controller.solve_ms[-1])
        if wants_stored:
            controller.observe(t, x12, u)
        plant.calc(data, x13, u)
        x13 = np.array(data.xnext)
        p = x13[:3]
        if (not np.all(np.isfinite(x13)) or np.any(p < bounds[:, 0] - CRASH_MARGIN)
                or np.any(p > bounds[:, 1] + CRASH_MARGIN) or p[2] < 0.0):
            crashed = True
            break
    return ClosedLoopFlight(np.array(times), np.array(pos), np.array(ref), np.array(us), np.array(solve), crashed,
                            change.time if change else None)
