"""The simulator as a plant for an external controller: plans in, each step's control out, and a failsafe.

One period of actuation delay, the normal digital-control pattern: a controller that receives state n
publishes a plan starting at n (`ControlPlan`, `metasym_core.online.plan`) whose ``controls[0]`` is the
control the plant already applies from n (that state's ``control``) and whose later entries are newly
optimised. When the plant produces state n + 1 it applies the newest plan's entry for step n + 1, and that
state's ``control`` carries it: the field keeps its meaning everywhere ("applied from this state to the
next"), so predictor and learner need no change.

`ExternalPlant.control(step, breach)` answers the control for a step and the plant's mode:

- ``external``: the entry of the newest plan that starts at or before the step, clipped to the actuator limits;
- ``hold``: the step lies past that plan's end: its last control, the one applied last, is held;
- ``failsafe`` (the control is None: the plant's own controller flies, e.g. the quadrotor's MPC hovering where
  the failsafe began, as PX4 does when offboard control is lost): before the first plan; when the newest plan
  is older than `control_timeout_s`; and when the system's geofence is breached (the quadrotor's box), then
  for `FENCE_SETTLE_S` more, so that a controller that flew the vehicle out is not handed it back at the
  fence. Fresh plans end it.

Staleness is measured in plant time, steps since the plan's start × dt, not in wall time: it is the time the
vehicle flies on an old plan, which is what endangers it (the simulator may run faster or slower than real
time, `rate_hz` · dt); it is deterministic; and a plant that stalls (the simulator's timer late on a loaded
machine) does not count its own stall against the controller. On a real vehicle plant time is wall time.

Bad plans (another system, wrong length, NaN/Inf, dt <= 0, a stamp from the future, older than the newest
kept, or starting at a state the plant has not produced yet: "ahead") are dropped, counted per reason and
logged at most every `WARN_EVERY_S` per reason; nothing raises.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np

from metasym_core.errors import MetaSymError
from metasym_core.online.plan import REASONS, ControlPlan, PlanFollower
from metasym_core.online.throttle import Throttled

MODE_EXTERNAL, MODE_HOLD, MODE_FAILSAFE = "external", "hold", "failsafe"
MODES: tuple[str, ...] = (MODE_EXTERNAL, MODE_HOLD, MODE_FAILSAFE)
#: Rejection reasons of `ExternalPlant.on_plan`: the plan follower's, and a plan from a state not produced yet.
PLANT_REASONS: tuple[str, ...] = (*REASONS, "ahead")
FENCE_SETTLE_S = 1.0  # [s] of plant time the failsafe keeps flying after the last geofence breach
WARN_EVERY_S = 2.0
MODE_LOG_EVERY_S = 1.0  # [s of plant time] between two lines of the same mode change (a flapping controller)


def check_timeout(value: float) -> float:
    """A valid `control_timeout_s` (positive, finite) as float; ValueError otherwise."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be positive, got {value!r}")
    return value


class ExternalPlant:
    """The control of each step of a plant flown by an external controller's plans (see module doc).

    `low`/`high` are the actuator limits (their length is the control dimension), `dt` the plant's step.
    `info` gets one line per mode change (the same change again within `MODE_LOG_EVERY_S` of plant time is
    counted into the next such line), `warn` the dropped plans (throttled per reason). Not thread-safe: call
    it from one thread (a ROS node's executor)."""

    def __init__(self, system: str, dt: float, low, high, control_timeout_s: float = 0.2,
                 info: Callable[[str], None] = lambda _text: None,
                 warn: Callable[[str], None] = lambda _text: None):
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if self.low.ndim != 1 or self.low.shape != self.high.shape or not np.all(self.low <= self.high):
            raise MetaSymError(f"plant actuator limits must be two vectors low <= high, got {low!r}, {high!r}")
        self.dt = float(dt)
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise MetaSymError(f"plant dt must be positive, got {dt!r}")
        self.system = system
        self.control_timeout_s = control_timeout_s
        self.plans = PlanFollower(len(self.low), system, max_age_s=math.inf)  # staleness: in plant time, below
        self.warn = Throttled(warn, WARN_EVERY_S)
        # `info` is called from here, not from inside Throttled: ROS loggers refuse two severities from one line
        self.info = Throttled(lambda text: info(text), MODE_LOG_EVERY_S, clock=lambda: self._step * self.dt)
        self.mode: str | None = None  # None until the first step
        self.reason = ""
        self.steps: Counter[str] = Counter()  # steps flown per mode
        self.failsafes = 0  # times the failsafe took over
        self.clipped = 0  # steps whose planned control exceeded the actuator limits
        self._step = -1  # the newest step a control was given for (the newest state produced)
        self._breach_step: int | None = None

    @property
    def control_timeout_s(self) -> float:
        """A plan older than this [s of plant time] hands the vehicle to the failsafe (live)."""
        return self._timeout

    @control_timeout_s.setter
    def control_timeout_s(self, value: float) -> None:
        self._timeout = check_timeout(value)

    @property
    def dropped(self) -> int:
        """Plans dropped so far."""
        return self.plans.dropped

    def on_plan(self, system: str, step: int, stamp: float, dt: float, controls, horizon: int, control_dim: int,
                now: float) -> str | None:
        """Keep a plan as a ControlPlan message carries it (flat controls); the rejection reason, or None."""
        if step > self._step:
            reason = "ahead"  # a plan from a state this plant has not produced: never valid, and it would
            self.plans.rejected[reason] += 1  # shut every later plan out as "out of order"
        else:
            reason = self.plans.push_flat(step, stamp, dt, controls, horizon, control_dim, system, now)
        if reason is not None:
            self.warn(f"plan-{reason}", f"dropped control plan ({reason}): system {system!r}, step {step} (plant at "
                      f"{self._step}), {np.size(controls)} values for {horizon}x{control_dim}; {self.dropped} "
                      "dropped so far")
        return reason

    def control(self, step: int, breach: str | None = None) -> tuple[np.ndarray | None, str]:
        """(control applied from state `step`, mode); the control is None in the failsafe (the plant's own
        controller flies). `breach`: the system's geofence says why it must not be flown on now, or None."""
        self._step = step
        if breach is not None:
            self._breach_step = step
        plan = self.plans.plan_for(step, 0.0)  # the newest plan starting at or before `step`
        age = (step - plan.step) * self.dt if plan is not None else math.inf
        control = None
        if breach is not None:
            mode, reason = MODE_FAILSAFE, f"geofence: {breach}"
        elif self._breach_step is not None and (step - self._breach_step) * self.dt < FENCE_SETTLE_S:
            mode, reason = MODE_FAILSAFE, self.reason  # still settling after a breach
        elif plan is None:
            mode, reason = MODE_FAILSAFE, "no plan yet"
        elif age > self.control_timeout_s + 1e-9:
            mode, reason = MODE_FAILSAFE, (f"timeout: the newest plan (step {plan.step}) is {age:.3g} s old, "
                                           f"control_timeout_s {self.control_timeout_s:g}")
        else:
            control, past_end = self._entry(plan, step)
            mode, reason = ((MODE_HOLD, f"past the end of the plan of step {plan.step}") if past_end
                            else (MODE_EXTERNAL, f"plans from step {plan.step} on"))
        self._enter(mode, reason)
        self.steps[mode] += 1
        return control, mode

    def _entry(self, plan: ControlPlan, step: int) -> tuple[np.ndarray, bool]:
        """The plan's control for `step`, clipped (counted), and whether `step` lies past its end."""
        offset = (step - plan.step) * self.dt
        planned = plan.control_at(np.array([offset]))[0]
        control = np.clip(planned, self.low, self.high)
        if not np.array_equal(control, planned):
            self.clipped += 1
        return control, bool(plan.index_at(offset) >= len(plan.controls))

    def _enter(self, mode: str, reason: str) -> None:
        """Switch to `mode` for `reason`: one line per change of mode (not of reason)."""
        if mode != self.mode:
            self.failsafes += mode == MODE_FAILSAFE
            change = f"{self.mode or 'start'} -> {mode}"
            self.info(change, f"plant mode {change} at step {self._step}: {reason}")
        self.mode, self.reason = mode, reason

    def report(self) -> dict[str, object]:
        """Mode, reason and counters: steps per mode, failsafe take-overs, plans accepted and dropped (per
        reason), clipped steps."""
        return {"mode": self.mode, "reason": self.reason, "steps": dict(self.steps), "failsafes": self.failsafes,
                "plans": self.plans.accepted, "dropped": dict(self.plans.rejected), "clipped": self.clipped}
