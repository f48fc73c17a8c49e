"""Crocoddyl MPC tracking a time-parameterised reference: the model-based baselines of the closed loop.

The same optimal-control problem as the simulator's MPC (`systems.quadrotor.ocp_costs`,
`systems.quadrotor.flight.MPC_WEIGHTS`, BoxFDDP warm-started every period, 20 nodes of 0.05 s), but
each node pulls towards the reference at its own time (`quad.tracking_models`), as the simulator's
MPC tracks its waypoint path. Built on given
physical parameters: the nominal ones (a user without learning: never told of a change) or
the true ones (`set_param`: the oracle).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from metasym_core.control.reference import FigureEight
from metasym_core.systems import quadrotor as quad
from metasym_core.systems.quadrotor.flight import MPC_NODE_DT, MPC_WEIGHTS


class CrocoddylTracker:
    """`control(t, x13)` → thrusts [4] for the current Crocoddyl state (13-D) at time t."""

    def __init__(self, params: Mapping[str, float], reference: FigureEight, dt: float, horizon: int = 20,
                 max_iter: int = 10, box=quad.DEFAULT_BOX):
        self.params = dict(params)
        self.reference, self.dt, self.horizon, self.max_iter = reference, dt, horizon, max_iter
        self.box = quad.box_array(box)
        self._solver = None
        self.solve_ms: list[float] = []
        self._build(warm_us=None, x13=None)

    def set_param(self, name: str, scale: float) -> None:
        """Tell the MPC of a parameter change (the oracle); rebuilt warm-started from its plan."""
        key = name if name.endswith("_scale") else f"{name}_scale"
        self.params[key] = float(scale)
        self._build(warm_us=list(self._solver.us), x13=np.array(self._solver.problem.x0))

    def _build(self, warm_us, x13) -> None:
        import crocoddyl

        dyn, _, _ = quad.step_model(quad.check_scales(self.params), self.dt)
        self._models = quad.tracking_models(dyn, self.box, self.horizon, MPC_NODE_DT, MPC_WEIGHTS)
        x0 = x13 if x13 is not None else np.concatenate([self.reference.position(0.0), [0, 0, 0, 1], np.zeros(6)])
        problem = crocoddyl.ShootingProblem(x0.copy(), self._models[:-1], self._models[-1])
        problem.nthreads = 1
        self._solver = crocoddyl.SolverBoxFDDP(problem)
        self._hover = dyn.hover
        self._warm = warm_us  # None: the first solve starts cold, from hover

    def _set_references(self, t: float) -> None:
        for j, model in enumerate(self._models):
            goal = np.zeros(13)
            goal[:3] = self.reference.position(t + j * MPC_NODE_DT)
            goal[6] = 1.0
            quad.set_reference(model, goal)

    def control(self, t: float, x13: np.ndarray) -> np.ndarray:
        """Re-solve from `x13` at time `t` (warm-started) and return the first thrusts, clipped."""
        start = time.perf_counter()
        self._set_references(t)
        problem = self._solver.problem
        problem.x0 = np.asarray(x13, dtype=np.float64).copy()
        if self._warm is None:
            self._solver.solve([problem.x0] * (self.horizon + 1), [self._hover] * self.horizon, 50, False)
        else:
            self._solver.solve(problem.rollout(self._warm), self._warm, self.max_iter, True)
        self._warm = list(self._solver.us)
        self.solve_ms.append(1e3 * (time.perf_counter() - start))
        return np.clip(np.asarray(self._solver.us[0]), 0.0, quad.MAX_THRUST)
