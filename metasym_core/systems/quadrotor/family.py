"""The quadrotor family (`Quadrotor`): datasets of randomised hector quadrotors, from optimal
point-to-point flights (the paper's) or closed-loop MPC waypoint flights (`flight.py`); the model,
state layout and parameters are described in `_model.py`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SystemFamily, Trajectory
from metasym_core.systems.quadrotor._model import (
    CONTROL_NAMES,
    DEFAULT_BOX,
    MAX_TILT,
    OOD_RANGE,
    PARAM_NAMES,
    SOURCES,
    START_RATE_STD,
    START_SPEED_STD,
    STATE_NAMES,
    TAIL_NODES,
    TRAIN_RANGE,
    box_array,
    physical_params,
    random_pose,
    solve_point_to_point,
    to_stored,
)
from metasym_core.systems.quadrotor.flight import FlightSimulator


class Quadrotor(SystemFamily):
    """Flights of randomised hector quadrotors (module doc).

    `source="ocp"` (default, the paper's data): optimal point-to-point flights;
    `source="flight"`: closed-loop MPC waypoint flights (`_simulate_flight`), the
    data of the ROS flight demo's model.
    """

    name = "quadrotor"
    state_dim = 12
    control_dim = 4
    state_names = STATE_NAMES
    control_names = CONTROL_NAMES
    units = {**{n: "m" for n in STATE_NAMES[:3]}, **{n: "rad" for n in STATE_NAMES[3:6]},
             **{n: "m/s" for n in STATE_NAMES[6:9]}, **{n: "rad/s" for n in STATE_NAMES[9:]},
             **{n: "N" for n in CONTROL_NAMES}, **{n: "1" for n in PARAM_NAMES}, "time": "s"}
    version = "1"
    # Paper: 30 train, 10 OOD systems. Steps chosen: 200 at dt 0.02 = 4 s per flight.
    default_systems = {"train": 30, "ood": 10}
    default_steps = 200

    def __init__(self, noise_std: float = 0.01, dt: float = 0.02,
                 box: Sequence[Sequence[float]] = DEFAULT_BOX, source: str = "ocp", fixed: Sequence[str] = (),
                 control_noise: float = 0.0):
        if isinstance(fixed, str) or not all(isinstance(k, str) for k in fixed):
            raise MetaSymError(f"quadrotor fixed must be a list of parameter names, got {fixed!r}")
        names = [k.removesuffix("_scale") for k in PARAM_NAMES]
        wrong = [k for k in fixed if k not in PARAM_NAMES and k not in names]
        if wrong:
            raise MetaSymError(f"quadrotor fixed: unknown parameters {wrong}; expected some of {names}")
        self.fixed = tuple(k if k in PARAM_NAMES else PARAM_NAMES[names.index(k)] for k in fixed)
        if source not in SOURCES:
            raise MetaSymError(f"quadrotor source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.source = source
        self.control_noise = float(control_noise)
        if not (math.isfinite(self.control_noise) and self.control_noise >= 0):
            raise MetaSymError(f"quadrotor control_noise must be >= 0 and finite, got {control_noise!r}")
        if self.control_noise and source != "flight":
            raise MetaSymError("quadrotor control_noise perturbs the MPC flights: it needs source flight")
        noise_std = float(noise_std)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise MetaSymError(f"quadrotor noise_std must be >= 0 and finite, got {noise_std!r}")
        dt = float(dt)
        if not (math.isfinite(dt) and 0 < dt <= 0.1):
            raise MetaSymError(f"quadrotor dt must be in (0, 0.1] s, got {dt!r}")
        self.noise_std = noise_std
        self.dt = dt
        self.box = box_array(box)

    def options(self) -> dict:
        out = {"noise_std": self.noise_std, "dt": self.dt, "box": self.box.tolist(), "source": self.source}
        if self.fixed:  # only when set: datasets made before the option keep their options (and cache names)
            out["fixed"] = [k.removesuffix("_scale") for k in self.fixed]
        if self.control_noise:
            out["control_noise"] = self.control_noise
        return out

    def param_ranges(self, split: str) -> dict[str, tuple[float, float]]:
        lo_hi = TRAIN_RANGE if self.check_split(split) == "train" else OOD_RANGE
        return {k: lo_hi for k in PARAM_NAMES}

    def sample_params(self, split: str, rng: np.random.Generator) -> dict[str, float]:
        """Uniform draws from the split's ranges; the `fixed` factors at their nominal 1."""
        params = super().sample_params(split, rng)
        return {k: 1.0 if k in self.fixed else v for k, v in params.items()}

    def simulate(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        """Optimal flight from a random start to a random goal at rest, `steps` samples at `dt`.

        The OCP has `steps + TAIL_NODES` nodes (goal pose and zero twist at its
        terminal node); the first `steps` states and optimal controls are stored,
        and the state after the last stored control (t = steps·dt) is kept in
        extras["final_state"]. The goal is reached only if the flight is long
        enough (about 2.5 s or more for the default box); shorter requests still
        return the optimal attempt. Extras (diagnostics): clean_states [T, 12],
        final_state [12], goal_state [12], physical_params [mass, ixx, iyy, izz,
        arm, torque_coeff], solver [converged (0/1), iterations, cost].
        """
        params = self.check_params(params)
        steps = self.check_steps(steps)
        if self.source == "flight":
            return self._simulate_flight(params, steps, rng)
        start = random_pose(rng, self.box, MAX_TILT)
        twist0 = np.concatenate([rng.normal(0.0, START_SPEED_STD, 3), rng.normal(0.0, START_RATE_STD, 3)])
        goal = np.concatenate([random_pose(rng, self.box, 0.0), np.zeros(6)])
        x0 = np.concatenate([start, twist0])
        xs, us, info = solve_point_to_point(params, x0, goal, steps + TAIL_NODES, self.dt, self.box)
        clean = np.array([to_stored(x) for x in xs])
        return self._trajectory(params, clean[:steps + 1], us[:steps], to_stored(goal),
                                np.array([info["converged"], info["iterations"], info["cost"]]), rng)

    def _trajectory(self, params: dict[str, float], clean: np.ndarray, controls: np.ndarray, goal: np.ndarray,
                    solver: np.ndarray, rng: np.random.Generator) -> Trajectory:
        """Observed (noisy) states of `clean [T+1, 12]` under `controls [T, 4]`, with the diagnostics."""
        steps = len(controls)
        states = clean[:steps].copy()
        if self.noise_std > 0:
            states += rng.normal(0.0, self.noise_std, states.shape)
        phys = physical_params(params)
        return Trajectory(
            params=params,
            times=np.arange(steps, dtype=np.float64) * self.dt,
            states=states,
            controls=controls,
            extras={
                "clean_states": clean[:steps],
                "final_state": clean[steps],
                "goal_state": goal,
                "physical_params": np.array([phys[k] for k in ("mass", "ixx", "iyy", "izz", "arm",
                                                               "torque_coeff")]),
                "solver": solver,
            },
        )

    def _simulate_flight(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        """Closed-loop MPC waypoint flight (`flight.FlightSimulator`), `steps` samples at `dt`.

        The flights the ROS simulator node flies: the model then learns the
        manoeuvres it will be asked to predict (aggressive re-planning, rotor
        saturation), which the smooth optimal point-to-point flights never show.
        Extras as in `simulate`, except goal_state (the last waypoint) and solver
        ([waypoints reached, 0, 0]).
        """

        sim = FlightSimulator(params, dt=self.dt, seed=int(rng.integers(2**31)), box=self.box,
                              control_noise=self.control_noise)
        clean = np.empty((steps + 1, 12))
        controls = np.empty((steps, 4))
        for k in range(steps):
            _, clean[k], controls[k] = sim.advance()
        clean[steps] = sim.state
        return self._trajectory(params, clean, controls, to_stored(sim.waypoint),
                                np.array([float(sim.waypoints_reached), 0.0, 0.0]), rng)
