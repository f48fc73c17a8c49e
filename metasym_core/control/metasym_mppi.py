"""MPPI on MetaSym rollouts, adapting online: the controller the product exists to feed.

Each control period (`control(t, x12)`) it rolls K candidate thrust sequences out on the model
from its context window (the last `context` states and the controls applied), the first
candidate control applied from the current state on, scores them with `tracking_cost` and
applies the MPPI average's first control. With a learner (`OnlineLearner`), every applied
transition is buffered, the change tests tick every `tick_s` and an accepted adaptation reaches
the rollouts `adapt_delay_s` later in closed-loop time: a learner node running beside the
controller takes about that long (150-200 ms on a 2-core AMD EPYC, `metasym bench train`). A
fixed delay, not the measured one, keeps the closed loop reproducible.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from metasym_core.control.cost import TrackingWeights, tracking_cost
from metasym_core.control.mppi import MPPI, MPPIConfig
from metasym_core.control.reference import FigureEight
from metasym_core.models.metasym import MetaSym
from metasym_core.online.learner import OnlineLearner
from metasym_core.online.predictor import OnlinePredictor
from metasym_core.systems import quadrotor as quad


class MetaSymMPPI:
    """`control(t, x12)` → thrusts [4]; `observe(t, x12, u)` is called by the loop after each applied control."""

    def __init__(self, model: MetaSym, reference: FigureEight, dt: float, config: MPPIConfig | None = None,
                 learner_settings: dict | None = None, seed: int = 0, weights: TrackingWeights | None = None,
                 tick_s: float = 0.1, adapt_delay_s: float = 0.2,
                 delay: bool = False):
        config = config or MPPIConfig()
        self.model, self.reference, self.dt, self.weights = model, reference, dt, weights or TrackingWeights()
        self.predictor = OnlinePredictor(model, config.horizon)
        dyn, _, _ = quad.step_model(quad.check_scales({k: 1.0 for k in quad.PARAM_NAMES}), dt)
        self.hover = float(dyn.hover[0])  # nominal thrust per rotor: the thrust cost's centre
        self.mppi = MPPI(config, np.zeros(model.control_dim), np.full(model.control_dim, quad.MAX_THRUST),
                         np.full(model.control_dim, self.hover), seed=seed)
        # (state, control applied from it) of the last context - 1 steps; the current state completes the context
        self.history: deque = deque(maxlen=model.context - 1)
        self.learner = (OnlineLearner(model, "quadrotor", None, **learner_settings)
                        if learner_settings is not None else None)
        self.tick = max(1, int(round(tick_s / dt)))
        self.adapt_delay_s = float(adapt_delay_s)
        self.delay = bool(delay)  # one period of actuation delay (see `control`)
        self._k = 0
        self._pending: list[tuple[float, dict, int]] = []  # (closed-loop time it takes effect, params, version)
        self.solve_ms: list[float] = []
        self.adaptations: list[tuple[float, bool, int]] = []  # (t, accepted, version)

    def _rollout(self, x12: np.ndarray):
        """The candidates' rollout from the context window ending at the current state `x12`."""
        states = np.asarray([s for s, _ in self.history] + [x12])
        past = np.asarray([u for _, u in self.history]).reshape(len(self.history), self.model.control_dim)
        return lambda candidates: self.predictor.rollout_candidates(states, past, candidates, self.dt)

    def _apply_adaptations(self, t: float) -> None:
        while self._pending and self._pending[0][0] <= t:  # adaptations that have finished by now
            _, params, version = self._pending.pop(0)
            self.predictor.set_local(params, version)

    def plan(self, t: float, x12: np.ndarray, applied: np.ndarray | None = None) -> np.ndarray:
        """One control period from the state `x12` at time `t`: the new plan [H, m] starting at that state.

        With `applied` (the control the plant applies from `x12` on, decided in an earlier period:
        a plant that cannot wait for this solve), plan[0] is that control and only plan[1:] is
        optimised; `applied` [d, m] fixes the first d controls (a solve that takes d - 1 periods: the
        plant flies the previous plan meanwhile). Without it, plan[0] is optimised too (the plant
        waits for it). The plan then
        shifts one period on, so the next call starts from plan[1]."""
        self._apply_adaptations(t)
        start = time.perf_counter()
        if len(self.history) < 1:  # no context yet: the initial plan (hover)
            plan = self.mppi.plan.copy()
            if applied is not None:
                fixed = np.asarray(applied, dtype=np.float64).reshape(-1, plan.shape[1])[: len(plan)]
                plan[: len(fixed)] = np.clip(fixed, self.mppi.low, self.mppi.high)
        else:
            plan = self.mppi.solve(self._rollout(x12), lambda s, c: tracking_cost(
                s, c, self.reference, t, self.dt, self.hover, self.weights), first=applied).copy()
        self.solve_ms.append(1e3 * (time.perf_counter() - start))
        self.mppi.shift()
        return plan

    def control(self, t: float, x12: np.ndarray) -> np.ndarray:
        """The control to apply from `x12` now: the plan's first (`delay` off), or the control decided
        one period ago while this period's plan is solved (`delay` on, as in the ROS graph)."""
        applied = self.mppi.plan[0].copy() if self.delay else None
        return self.plan(t, x12, applied)[0].copy()

    def observe(self, t: float, x12: np.ndarray, u: np.ndarray) -> None:
        """The transition applied at time t: state `x12` and the control applied from it."""
        self.history.append((np.asarray(x12, dtype=np.float64), np.asarray(u, dtype=np.float64)))
        if self.learner is None:
            return
        self.learner.push(t, x12, u, self.dt)
        self._k += 1
        if self._k % self.tick == 0:
            self.learner.watch()
            if self.learner.should_adapt(t):
                outcome = self.learner.adapt_now(t)
                self.adaptations.append((t, outcome.accepted, outcome.version))
                if outcome.accepted:
                    self._pending.append((t + self.adapt_delay_s, outcome.params, outcome.version))


class NominalMPPI(MetaSymMPPI):
    """The same MPPI on the quadrotor's nominal rigid-body step alone (`systems.quadrotor.torch_step` at
    nominal parameters, never told of a change, no learning): the baseline that says what the learned model
    adds to known physics. `model` only sizes the context (its weights are not used)."""

    def __init__(self, model: MetaSym, reference: FigureEight, dt: float, config: MPPIConfig | None = None,
                 seed: int = 0, weights: TrackingWeights | None = None):
        super().__init__(model, reference, dt, config, None, seed=seed, weights=weights)

    def _rollout(self, x12: np.ndarray):
        import torch

        from metasym_core.systems.quadrotor.torch_step import step

        def rollout(candidates: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                u = torch.as_tensor(candidates, dtype=torch.float64)
                x = torch.as_tensor(x12, dtype=torch.float64).expand(u.shape[0], -1)
                h = torch.full((u.shape[0], 1), self.dt, dtype=torch.float64)
                out = []
                for k in range(u.shape[1]):
                    x = step(x, u[:, k], h)
                    out.append(x)
                return torch.stack(out, dim=1).numpy()

        return rollout
