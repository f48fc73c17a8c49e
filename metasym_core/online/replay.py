"""The learner node's adaptation policy replayed on a recorded stream, lock-stepped: no ROS, no clock.

`replay_learner` feeds an `OnlineLearner` one sample at a time, as the learner node does, with
the node's clock standing in: sample k carries the stamp k / rate_hz (the simulator publishes
at rate_hz). Every `tick_s` it runs the node's timer callback (`watch`, then an adaptation if
`should_adapt`), and every `metrics_s` it feeds the predictor's model error
(`PredictionMetrics.model_mse`: horizon-H rollouts under the applied controls from the
contexts of the last period). Adaptations take no stream time here; in the node they run on a
worker thread while states keep arriving. So the attempt count and the time from a change to
the first accepted adaptation are those of the policy itself, free of scheduling noise (what
`metasym bench learner` measures over several seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metasym_core.models.metasym import MetaSym
from metasym_core.online.learner import OnlineLearner
from metasym_core.online.plan import SOURCE_PLAN, ControlPlan, PlanFollower
from metasym_core.online.predictor import OnlinePredictor
from metasym_core.online.realised import Hindcast


@dataclass(frozen=True)
class Flight:
    """A recorded stream: states `[N, D]`, controls `[N, m]`, step `dt` [s], the step of a parameter change,
    and the controller's plan after each sample (empty: none recorded)."""

    states: np.ndarray
    controls: np.ndarray
    dt: float
    change_step: int | None = None
    plans: tuple[ControlPlan, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One adaptation attempt of a replay."""

    t_s: float  # stream time [s] of the attempt
    accepted: bool
    version: int


def fly_quadrotor(seed: int, seconds: float, change: tuple[str, float, float] | None = None,
                  dt: float = 0.02) -> Flight:
    """The simulator node's quadrotor flight (`QuadrotorStream`); `change` = (parameter, scale, time [s])."""
    from metasym_core.online.streams import make_stream

    stream = make_stream("quadrotor", dt=dt, seed=seed)
    steps = int(round(seconds / dt))
    change_step = int(round(change[2] / dt)) if change else None
    xs, us, plans = [], [], []
    for k in range(steps):
        if change_step is not None and k == change_step:
            stream.set_param(change[0], change[1])  # as the simulator node: from this sample's control on
        sample = stream.advance()
        xs.append(sample.state)
        us.append(sample.control)
        plans.append(stream.plan())  # as the simulator node: the plan after each state it publishes
    return Flight(np.array(xs), np.array(us), dt, change_step, tuple(plans))


def replay_predictions(model: MetaSym, flight: Flight, horizon: int = 30, every: int = 5,
                       max_age_s: float = 1.0) -> dict[str, np.ndarray]:
    """The predictor's horizon-step predictions from every `every`-th full context of `flight`, lock-stepped,
    each scored as its MSE against the states that followed, under three future controls: "plan" (the
    newest recorded plan, through `PlanFollower` as the live predictor uses it), "held" (the newest control
    held, the predictor without a plan) and "applied" (the controls that were applied: the model error).
    "hold" is holding the last state; "source" says which controls "plan" used (the plan, or held when it
    did not cover the state)."""
    if len(flight.plans) != len(flight.states):
        raise ValueError("replay_predictions needs a flight recorded with its plans")
    predictor = OnlinePredictor(model, horizon)
    c, n = predictor.context, len(flight.states)
    out: dict[str, list] = {"plan": [], "held": [], "applied": [], "hold": [], "source": []}
    steps = np.full(c, flight.dt)
    for b in range(c - 1, n - horizon, every):
        follower = PlanFollower(flight.controls.shape[1], flight.plans[b].system, max_age_s)
        follower.push(flight.plans[b])
        planned, source, _ = follower.future_controls(b, b * flight.dt, flight.dt, horizon, flight.controls[b])
        truth = flight.states[b + 1:b + 1 + horizon]
        context = (flight.states[b - c + 1:b + 1], flight.controls[b - c + 1:b + 1], steps)
        for name, future in (("plan", planned), ("held", np.repeat(flight.controls[b:b + 1], horizon, axis=0)),
                             ("applied", flight.controls[b + 1:b + 1 + horizon])):
            pred = predictor.predict_arrays(*context, future_controls=future).states
            out[name].append(float(np.mean((pred - truth) ** 2)))
        out["hold"].append(float(np.mean((flight.states[b] - truth) ** 2)))
        out["source"].append(source == SOURCE_PLAN)
    return {k: np.array(v) for k, v in out.items()}


def _model_error(predictor: OnlinePredictor, flight: Flight, bases, horizon: int, local, version: int) -> float:
    """Mean MSE of horizon-step rollouts from `bases` under the applied controls: the predictor's hindcast
    (`OnlinePredictor.hindcast`) with the local parameters `local`."""
    c = predictor.context
    rows = [int(b) for b in bases if b - c + 1 >= 0 and b + horizon < len(flight.states)]
    if not rows:
        return float("nan")
    batch = Hindcast(rows, np.stack([flight.states[b - c + 1:b + 1] for b in rows]),
                     np.stack([flight.controls[b - c + 1:b + 1] for b in rows]),
                     np.full((len(rows), c + horizon), flight.dt),
                     np.stack([flight.controls[b + 1:b + 1 + horizon] for b in rows]),
                     np.stack([flight.states[b + 1:b + 1 + horizon] for b in rows]))
    predictor.set_local(local, version)
    return float(predictor.hindcast(batch).mean())


def model_errors(model: MetaSym, flight: Flight, bases, versions: list[int], params: dict,
                 horizon: int = 30) -> np.ndarray:
    """The model error (horizon-step rollout MSE under the applied controls) of a prediction from each of
    `bases` with the parameters in force then (`replay_learner`'s `versions` and `params`)."""
    predictor = OnlinePredictor(model, horizon)
    return np.array([_model_error(predictor, flight, [b], horizon, params.get(versions[int(b)]), versions[int(b)])
                     for b in bases])


def replay_learner(model: MetaSym, flight: Flight, settings: dict, rate_hz: float = 100.0, tick_s: float = 0.1,
                   metrics_s: float = 1.0, horizon: int = 30, every: int = 10,
                   versions: list[int] | None = None, params: dict | None = None) -> list[Attempt]:
    """Every adaptation attempt of an `OnlineLearner(model, **settings)` fed `flight` (module doc). With
    `versions`, append the parameter version in force at each sample (what a prediction from it would use);
    with `params`, fill version -> the accepted local parameters (see `model_errors`)."""
    tick = max(1, int(round(tick_s * rate_hz)))
    period = max(1, int(round(metrics_s * rate_hz)))
    attempts: list[Attempt] = []
    learner = OnlineLearner(model, "replay", None, **settings)  # no files: the outcomes carry the parameters
    predictor = OnlinePredictor(model, horizon)
    for k in range(len(flight.states)):
        now = k / rate_hz
        learner.push(now, flight.states[k], flight.controls[k], flight.dt)
        if k and k % period == 0:  # the predictor's metrics: horizons that ended in the last period
            last = k - 1 - horizon
            bases = list(range(max(last - period + 1, 0), last + 1, every))
            learner.observe_error(_model_error(predictor, flight, bases, horizon, learner.active,
                                               learner.version))
        if k % tick == 0:
            learner.watch()
            if learner.should_adapt(now):
                outcome = learner.adapt_now(now)
                attempts.append(Attempt(k * flight.dt, outcome.accepted, outcome.version))
                if outcome.accepted and params is not None:
                    params[outcome.version] = outcome.params
        if versions is not None:
            versions.append(learner.version)
    return attempts
