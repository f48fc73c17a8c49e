"""A controller's planned control sequence, and the future controls a prediction rolls out under.

A model-predictive controller knows what it will do next: its plan. A prediction that holds
the last control over its horizon ignores that, and under a waypoint-chasing MPC the guess,
not the model, dominates its error. So controllers publish their plan (`ControlPlan`), and
the predictor rolls each new state out under the newest plan that covers it (`PlanFollower`).

A plan starts from one state of the stream, named by its step counter and stamp:
``controls[0]`` is applied from that state on for ``dt`` seconds, ``controls[1]`` for the
next ``dt``, and so on (zero-order hold, as the MPC's own shooting nodes apply them); past its
end the last control is held. The plan's ``dt`` need not be the stream's: the control at
stream step ``n`` is the plan entry covering the time ``(n - step) · state_dt`` after the
plan's start.

Bad plans are rejected (never raised) with a counted reason, like bad states in
`ContextWindow`: wrong dimension or system, NaN/Inf, non-positive dt, no controls, or a
stamp from the future.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

#: Rejection reasons of `PlanFollower.push`.
REASONS: tuple[str, ...] = ("system", "dimension", "empty", "nonfinite", "bad_dt", "future", "out_of_order")
#: Where a prediction's future controls came from (`Prediction.control_source`).
SOURCE_PLAN, SOURCE_HELD = "plan", "held"
#: Slack for stamps "from the future" (clocks of one host agree; across hosts they may not quite).
FUTURE_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class ControlPlan:
    """One planned control sequence (see module doc)."""

    step: int  # step counter of the state the plan starts from
    stamp: float  # stamp [s] of that state
    dt: float  # duration [s] of each control
    controls: np.ndarray  # [N, m]
    system: str = ""

    def index_at(self, offsets_s) -> np.ndarray:
        """The entries applied at `offsets_s` seconds after the plan's start (zero-order hold), unclipped:
        negative before the start, `len(controls)` or more past the end."""
        return np.floor(np.asarray(offsets_s, dtype=np.float64) / self.dt + 1e-9).astype(np.int64)

    def control_at(self, offsets_s: np.ndarray) -> np.ndarray:
        """The planned controls at `offsets_s` seconds after the plan's start, `[len, m]` (zero-order hold;
        before the start: the first control; past the end: the last)."""
        return self.controls[np.clip(self.index_at(offsets_s), 0, len(self.controls) - 1)]


class PlanFollower:
    """The newest valid plans of one controller, and the future controls of a prediction.

    `push` validates and keeps a plan; `future_controls(step, stamp, dt, horizon, last_control)`
    gives the controls applied at the `horizon` predicted states after the state `step` (see
    `MetaSym.rollout`: entry k is applied at predicted state k, i.e. from stream step
    ``step + 1 + k`` on) from the newest plan that starts at or before `step` and is at most
    `max_age_s` older than that state; without one it holds `last_control`.
    """

    def __init__(self, control_dim: int, system: str = "", max_age_s: float = 0.5, keep: int = 8):
        if isinstance(control_dim, bool) or not isinstance(control_dim, (int, np.integer)) or control_dim < 0:
            raise ValueError(f"control_dim must be an integer >= 0, got {control_dim!r}")
        self.control_dim, self.system = int(control_dim), system
        self.max_age_s = float(max_age_s)
        self._plans: deque[ControlPlan] = deque(maxlen=keep)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.used: Counter[str] = Counter()  # predictions by control source

    @property
    def max_age_s(self) -> float:
        return self._max_age_s

    @max_age_s.setter
    def max_age_s(self, value: float) -> None:
        value = float(value)
        if not (value > 0):  # NaN too
            raise ValueError(f"plan max_age_s must be positive, got {value!r}")
        self._max_age_s = value

    @property
    def dropped(self) -> int:
        """Rejected plans so far."""
        return sum(self.rejected.values())

    def check(self, plan: ControlPlan, now: float | None = None) -> str | None:
        """The rejection reason of `plan` (one of REASONS), or None if it may be used."""
        controls = np.asarray(plan.controls)
        if self.system and plan.system != self.system:
            return "system"
        if controls.ndim != 2 or controls.shape[1] != self.control_dim:
            return "dimension"
        if controls.shape[0] == 0:
            return "empty"
        if not (np.isfinite(controls).all() and math.isfinite(plan.stamp)):
            return "nonfinite"
        if not (math.isfinite(plan.dt) and plan.dt > 0):
            return "bad_dt"
        if now is not None and plan.stamp > now + FUTURE_TOLERANCE_S:
            return "future"
        if self._plans and (plan.step, plan.stamp) < (self._plans[-1].step, self._plans[-1].stamp):
            return "out_of_order"
        return None

    def push(self, plan: ControlPlan, now: float | None = None) -> str | None:
        """Keep `plan` if valid; return the rejection reason (counted) or None."""
        reason = self.check(plan, now)
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        controls = np.array(plan.controls, dtype=np.float64)
        controls.setflags(write=False)
        self._plans.append(ControlPlan(int(plan.step), float(plan.stamp), float(plan.dt), controls, plan.system))
        self.accepted += 1
        return None

    def push_flat(self, step: int, stamp: float, dt: float, controls, horizon: int, control_dim: int,
                  system: str = "", now: float | None = None) -> str | None:
        """`push` for a plan as a message carries it: `controls` flat, `horizon` × `control_dim` values
        (a length that does not match, or another control dimension, is rejected as "dimension")."""
        flat = np.asarray(controls, dtype=np.float64).ravel()
        if control_dim != self.control_dim or flat.size != horizon * control_dim:
            self.rejected["dimension"] += 1
            return "dimension"
        return self.push(ControlPlan(int(step), float(stamp), float(dt), flat.reshape(horizon, control_dim),
                                     system), now)

    def plan_for(self, step: int, stamp: float) -> ControlPlan | None:
        """The newest kept plan that starts at or before `step` and is fresh at `stamp`, or None."""
        for plan in reversed(self._plans):
            if plan.step <= step:
                return plan if stamp - plan.stamp <= self.max_age_s else None
        return None

    def future_controls(self, step: int, stamp: float, dt: float, horizon: int,
                        last_control: np.ndarray) -> tuple[np.ndarray, str, ControlPlan | None]:
        """(controls `[horizon, m]`, source, plan used) for a prediction from the state `step` at `stamp`
        whose steps last `dt` seconds (see class doc)."""
        plan = self.plan_for(step, stamp)
        if plan is None:
            controls = np.repeat(np.asarray(last_control, dtype=np.float64).reshape(1, -1), horizon, axis=0)
            source = SOURCE_HELD
        else:
            offsets = (step + 1 + np.arange(horizon) - plan.step) * float(dt)
            controls = plan.control_at(offsets)
            source = SOURCE_PLAN
        self.used[source] += 1
        return controls, source, plan

    def clear(self) -> None:
        """Forget the kept plans (counters stay)."""
        self._plans.clear()
