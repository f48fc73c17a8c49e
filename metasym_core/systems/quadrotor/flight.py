"""Closed-loop quadrotor flight for the ROS simulator node.

`FlightSimulator` flies a hector quadrotor (scaled as in `_model`) through
random waypoints inside a box. A receding-horizon Crocoddyl MPC computes the
rotor thrusts on the *true* model, so after `set_param` (e.g. mass x1.3) the
controller knows the new system and keeps flying; the plant is integrated with
the same Euler action model as `quadrotor.step`, at the simulator's `dt`.

MPC (chosen): 20 nodes of 0.05 s (1 s look-ahead), the costs of
`quadrotor.ocp_costs` with `MPC_WEIGHTS`, BoxFDDP re-solved at every step (up to
10 iterations, warm-started from the previous thrusts rolled out from the
current state). It tracks a timed path (`PathSegment`): straight minimum-jerk
segments from rest to rest through the waypoints, the heading turning alongside;
every node tracks the path at its own time, so successive solves plan the same
flight and the plan the simulator publishes is what the vehicle then does. A
waypoint counts as reached when the vehicle comes within 0.3 m of it.

With `control_noise` > 0 the applied thrusts carry a smooth random perturbation
(AR(1), that standard deviation in N): exploration data for models that a sampling controller
will drive beyond the MPC's gentle manoeuvres. This runs at roughly 1,000-1,500 steps per CPU second, so 100 Hz is
faster than real time with a wide margin and `resolve_every` stays 1.

As a plant for another controller (`advance(control)`, the ROS simulator's `controller: external`)
the thrusts come from outside, clipped to the rotor limits, and the MPC rests. `hold()` is the
failsafe: the same MPC, its goal the position where it was called (clipped into the box), level
at the current heading and at rest: hover in place, as PX4 does when offboard control is lost.
`breach()` is the geofence that calls for it: the vehicle within `FENCE_INSET` of the box's faces or
heading there within `FENCE_LOOKAHEAD_S`, tilted past `FENCE_TILT` or spinning faster than `FENCE_RATE`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import metasym_core.systems.quadrotor._model as quad
from metasym_core.control.reference import minimum_jerk
from metasym_core.errors import MetaSymError

# Scale factors the simulator accepts (at start and in `set_param`, by bare name
# or params key): wide enough for every train/OOD system, narrow enough that
# hover needs at most 77 % of the rotor limit.
SET_PARAM_RANGE = (0.5, 1.7)
_ALIASES = {name.removesuffix("_scale"): name for name in quad.PARAM_NAMES}

# The flights' revision: a change of how the simulator flies changes it, and with it the file names of
# cached flight datasets (`config.data_tag`). 2: the timed path (1: a carrot ahead of the vehicle).
FLIGHT_REVISION = 2

# Chosen MPC settings: 20 nodes of 0.05 s = 1 s look-ahead.
MPC_NODE_DT = 0.05
# The waypoint path: each segment lasts the longest of these bounds (peak speed along it, peak yaw rate, floor).
# (A carrot a fixed distance ahead, which the path replaced, re-planned a deceleration that never came: the
# plan's thrusts 0.6 s ahead differed from those then applied by 0.52 N² MSE, the path's by 0.017;
# docs/decisions.md, "The simulator's MPC tracks a timed path".)
PATH_PEAK_SPEED = 1.6  # [m/s]
PATH_PEAK_YAW_RATE = 1.0  # [rad/s]
PATH_MIN_S = 0.5  # [s]
# The failsafe (`hold`) chases a target at most this far [m] from the current position (its hold point is
# close; out of the box it may not be) ...
CARROT = 1.0
CARROT_YAW = 0.5  # ... and at most this far [rad] in yaw from the current heading
EXCITATION_CORRELATION = 0.9  # step-to-step correlation of the `control_noise` perturbation (AR(1))
# The geofence of an externally controlled flight (`breach`): at 3 m/s towards a face it calls for the
# failsafe 1.5 m before it, where full thrust stops the vehicle in ~0.4 m; the tilt and rate limits leave
# the failsafe MPC an attitude it recovers from (two rotors at full thrust and two off flip the vehicle:
# caught at 1 rad of tilt it overturns and falls ~2 m, caught at 4 rad/s it loses a few cm).
FENCE_LOOKAHEAD_S = 0.5
# [m] the fence lies this far inside each face of the box: a controller can throw the vehicle about before
# the failsafe has it (random thrusts through a 0.5 s look-ahead fence on the faces overshot them by up to
# 0.12 m), so the fence keeps most of that overshoot inside the box.
FENCE_INSET = 0.2  # less than quad.BOX_MARGIN: a vehicle that hovers where the failsafe put it is clear of it
FENCE_TILT = 1.0  # [rad] from level
FENCE_RATE = 4.0  # [rad/s] body rate
MPC_WEIGHTS: dict[str, float] = {
    "running_pose": 1.0,
    "state_reg": 0.3,
    "thrust_reg": 0.1,
    "box": 1e3,
    "terminal_pose": 10.0,
    "terminal_twist": 10.0,
}


@dataclass(frozen=True)
class PathSegment:
    """One leg of the waypoint path: from `start` (x, y, z) at heading `yaw0` and rest, at time `t0` [s], to
    `goal` (the waypoint, 13-D Crocoddyl state) at heading `yaw1` (unwrapped: the shorter turn) and rest,
    `duration` s later, on a straight line with a minimum-jerk profile in position and heading."""

    t0: float
    duration: float
    start: np.ndarray
    goal: np.ndarray
    yaw0: float
    yaw1: float

    @classmethod
    def towards(cls, t0: float, start: np.ndarray, yaw0: float, goal: np.ndarray) -> PathSegment:
        """The segment from (`start`, `yaw0`) at `t0` to the waypoint `goal`, as long as the bounds above ask."""

        yaw1 = yaw0 + math.remainder(_yaw(_rotation(goal)) - yaw0, 2 * math.pi)
        length = float(np.linalg.norm(goal[:3] - start))
        # a minimum-jerk move's peak rate is 1.875 x its mean
        duration = max(1.875 * length / PATH_PEAK_SPEED, 1.875 * abs(yaw1 - yaw0) / PATH_PEAK_YAW_RATE, PATH_MIN_S)
        return cls(float(t0), duration, np.array(start[:3], dtype=np.float64), goal, float(yaw0), yaw1)

    @property
    def end(self) -> float:
        return self.t0 + self.duration

    def state(self, t: float) -> np.ndarray:
        """The reference at time `t` as a 13-D Crocoddyl state: position, level attitude at the path's heading,
        and the path's velocity and yaw rate in the body frame (as Pinocchio's free flyer keeps them)."""
        import pinocchio as pin

        done, rate = (float(v) for v in minimum_jerk(t - self.t0, self.duration))
        delta = self.goal[:3] - self.start
        rotation = pin.rpy.rpyToMatrix(0.0, 0.0, self.yaw0 + done * (self.yaw1 - self.yaw0))
        out = np.zeros(13)
        out[:3] = self.start + done * delta
        out[3:7] = pin.SE3ToXYZQUAT(pin.SE3(rotation, np.zeros(3)))[3:7]
        out[7:10] = rotation.T @ (rate * delta)
        out[12] = rate * (self.yaw1 - self.yaw0)
        return out


class FlightSimulator:
    """Waypoint flight under receding-horizon Crocoddyl MPC on the true model (module doc).

    `advance()` returns the sample (t_k, x_k, u_k) — stored 12-D state at t_k and
    the thrusts applied on [t_k, t_k + dt) — then moves the plant to t_k + dt, so
    successive samples follow the `Trajectory` convention. With `noise_std` > 0
    the returned state carries Gaussian sensor noise (the controller sees the
    clean state). The MPC re-solves every `resolve_every` steps and, in between,
    applies its plan's thrusts for the elapsed time.
    """

    def __init__(self, params: Mapping[str, float], dt: float = 0.01, seed: int = 0, horizon: int = 20,
                 box: Sequence[Sequence[float]] = quad.DEFAULT_BOX, noise_std: float = 0.0,
                 resolve_every: int = 1, max_iter: int = 10, waypoint_tolerance: float = 0.3,
                 control_noise: float = 0.0):
        self._params = dict(zip(quad.PARAM_NAMES, quad.check_scales(params), strict=True))
        for key, value in self._params.items():
            _check_scale(key, value)
        self.dt = _positive("dt", dt)
        self.horizon = _int_at_least("horizon", horizon, 2)
        self.resolve_every = _int_at_least("resolve_every", resolve_every, 1)
        self.max_iter = _int_at_least("max_iter", max_iter, 1)
        self.noise_std = float(noise_std)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise MetaSymError(f"noise_std must be >= 0 and finite, got {noise_std!r}")
        self.waypoint_tolerance = _positive("waypoint_tolerance", waypoint_tolerance)
        self.control_noise = float(control_noise)
        if not (math.isfinite(self.control_noise) and self.control_noise >= 0):
            raise MetaSymError(f"control_noise must be >= 0 and finite, got {control_noise!r}")
        self.box = quad.box_array(box)
        # Separate streams, so the flight (start, waypoints) depends on neither noise.
        flight_seq, noise_seq, excite_seq = np.random.SeedSequence(seed).spawn(3)
        self._rng = np.random.default_rng(flight_seq)
        self._noise_rng = np.random.default_rng(noise_seq)
        self._excite_rng = np.random.default_rng(excite_seq)
        self._excite = np.zeros(4)
        start = quad.random_pose(self._rng, self.box, 0.0)
        self._x = np.concatenate([start, np.zeros(6)])
        self.waypoint = self._new_waypoint()
        self._path = [PathSegment.towards(0.0, start[:3], _yaw(_rotation(start)), self.waypoint)]
        self._reached = False  # whether the vehicle came within `waypoint_tolerance` of the current waypoint
        self.t = 0.0
        self._k = 0
        self.waypoints_reached = 0
        self._hold: np.ndarray | None = None  # the failsafe's position while it holds, else None
        self._warm: list | None = None  # the next solve's warm start, if not the last solution
        self._build_mpc(warm_us=None)

    # -- public API ------------------------------------------------------------------

    @property
    def params(self) -> dict[str, float]:
        """Current scale factors (keys as in `quadrotor.PARAM_NAMES`)."""
        return dict(self._params)

    @property
    def state(self) -> np.ndarray:
        """Current clean stored 12-D state."""
        return quad.to_stored(self._x)

    @property
    def plan(self) -> tuple[int, float, np.ndarray]:
        """The MPC's current plan: (step of the state it was solved from, node duration [s], thrusts
        [horizon, 4] clipped to the rotor limits). `advance` applies node ``int(elapsed / dt_node)`` of it
        (zero-order hold), so a prediction under this plan sees the controls the simulator will apply
        until the next re-solve."""
        return self._plan_step, MPC_NODE_DT, np.clip(np.array(self._solver.us), 0.0, quad.MAX_THRUST)

    def set_param(self, name: str, scale: float) -> None:
        """Set a physical parameter's scale factor (relative to nominal hector) mid-flight.

        `name` is "mass", "inertia", "arm" or "torque" (or the params key, e.g.
        "mass_scale"); both the plant and the MPC switch to the new system.
        """
        key = _ALIASES.get(name, name)
        if key not in quad.PARAM_NAMES:
            raise MetaSymError(f"unknown quadrotor parameter {name!r}; expected one of "
                               f"{', '.join(_ALIASES)}")
        self._params[key] = _check_scale(name, scale)
        self._build_mpc(warm_us=list(self._solver.us))

    @property
    def holding(self) -> bool:
        """Whether the failsafe holds a position (`hold`)."""
        return self._hold is not None

    def hold(self) -> None:
        """The failsafe: from now on `advance()` hovers at the current position (clipped into the box,
        `quad.BOX_MARGIN` inside its faces), level and at rest, under the MPC; its next solve starts from hover
        thrusts (its last one may be long past). `advance(control)` ends it."""
        self._hold = np.clip(self._x[:3], self.box[:, 0] + quad.BOX_MARGIN, self.box[:, 1] - quad.BOX_MARGIN)
        self._warm = [self._hover.copy() for _ in range(self.horizon)]

    def breach(self) -> str | None:
        """The geofence (module doc): why the vehicle must not fly on under another controller, or None."""

        rotation = _rotation(self._x)
        p = self._x[:3]
        low, high = self.box[:, 0] + FENCE_INSET, self.box[:, 1] - FENCE_INSET
        if np.any(p < low) or np.any(p > high):
            return "at the fence"
        ahead = p + FENCE_LOOKAHEAD_S * (rotation @ self._x[7:10])
        if np.any(ahead < low) or np.any(ahead > high):
            return "heading for the fence"
        if rotation[2, 2] < math.cos(FENCE_TILT):
            return "tilted"
        if np.linalg.norm(self._x[10:13]) > FENCE_RATE:
            return "spinning"
        return None

    def advance(self, control: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """Control and integrate one step of `dt`; return (t_k, state12_k, thrusts_k). With `control`: those
        thrusts (clipped to the rotor limits) instead of the MPC's; that ends a `hold`."""
        if control is None:
            u = self._mpc_control()
        else:
            self._hold = None
            u = np.clip(np.asarray(control, dtype=np.float64), 0.0, quad.MAX_THRUST)
        t, x12 = self.t, quad.to_stored(self._x)
        self._plant.calc(self._plant_data, self._x, u)
        self._x = np.array(self._plant_data.xnext)
        if not np.all(np.isfinite(self._x)):
            raise MetaSymError(f"quadrotor flight diverged at t={self.t:.2f} s")
        self._k += 1
        self.t = self._k * self.dt
        if self.noise_std > 0:
            x12 = x12 + self._noise_rng.normal(0.0, self.noise_std, 12)
        return t, x12, u

    # -- internals -------------------------------------------------------------------

    def _mpc_control(self) -> np.ndarray:
        """The MPC's thrusts for this step (waypoint flight, or the `hold`), clipped to the rotor limits."""
        if self._hold is None:
            while self._path[0].end < self.t:  # that leg is flown: on to the next waypoint
                if len(self._path) == 1:
                    self._extend_path()
                self._path.pop(0)
            if self.waypoint is not self._path[0].goal:
                self.waypoint, self._reached = self._path[0].goal, False
            if not self._reached and np.linalg.norm(self._x[:3] - self.waypoint[:3]) < self.waypoint_tolerance:
                self._reached = True
                self.waypoints_reached += 1
        phase = 0 if self._hold is not None else self._k % self.resolve_every  # the failsafe solves every step
        if phase == 0:
            self._set_references()
            self._solve()
            self._plan_step = self._k
        node = min(int(phase * self.dt / MPC_NODE_DT), self.horizon - 1)
        u = np.asarray(self._solver.us[node])
        if self.control_noise > 0:  # exploration: a smooth random perturbation of every rotor's thrust
            a = EXCITATION_CORRELATION
            self._excite = a * self._excite + math.sqrt(1 - a * a) * self._excite_rng.normal(0.0, self.control_noise, 4)
            u = u + self._excite
        return np.clip(u, 0.0, quad.MAX_THRUST)

    def _new_waypoint(self) -> np.ndarray:
        return np.concatenate([quad.random_pose(self._rng, self.box, 0.0), np.zeros(6)])

    def _extend_path(self) -> None:
        """Append the leg from the last waypoint to a new one (drawn in order, so the flight does not depend on
        how far ahead the MPC looks)."""
        last = self._path[-1]
        self._path.append(PathSegment.towards(last.end, last.goal[:3], last.yaw1, self._new_waypoint()))

    def _path_state(self, t: float) -> np.ndarray:
        """The path's reference at time `t` (`PathSegment.state`); past the last leg's end, of the next legs."""
        while self._path[-1].end < t:
            self._extend_path()
        return next(leg for leg in self._path if t <= leg.end).state(t)

    def _build_mpc(self, warm_us: list | None) -> None:
        """(Re)build plant and MPC for the current parameters; warm-start from `warm_us` thrusts."""
        import crocoddyl

        scales = quad.check_scales(self._params)
        dyn, self._plant, self._plant_data = quad.step_model(scales, self.dt)
        self._mpc_models = quad.tracking_models(dyn, self.box, self.horizon, MPC_NODE_DT, MPC_WEIGHTS)
        self._hover = np.asarray(dyn.hover, dtype=np.float64)
        problem = crocoddyl.ShootingProblem(self._x.copy(), self._mpc_models[:-1], self._mpc_models[-1])
        problem.nthreads = 1  # OpenMP over all cores is far slower for a problem this small
        self._solver = crocoddyl.SolverBoxFDDP(problem)
        self._set_references()
        if warm_us is None:  # cold start: hover thrusts, infeasible state guess
            self._solver.solve([self._x.copy()] * (self.horizon + 1), [dyn.hover] * self.horizon, 50, False)
        else:
            self._solver.solve(problem.rollout(warm_us), warm_us, 50, True)
        self._plan_step = self._k  # solved from the current state

    def _set_references(self) -> None:
        """Every node's reference for a solve from now: the path at the node's time, or while the failsafe holds,
        its target (`_hold_target`, approached as `_carrot` says) at every node."""
        if self._hold is not None:
            goal = self._carrot(self._hold_target())
            for model in self._mpc_models:
                quad.set_reference(model, goal)
        else:
            for node, model in enumerate(self._mpc_models):
                quad.set_reference(model, self._path_state(self.t + node * MPC_NODE_DT))

    def _hold_target(self) -> np.ndarray:
        """Where the failsafe flies: the hold position level at the current heading and at rest (a heading to
        return to would not stop a yaw spin: its direction flips each half turn)."""
        import pinocchio as pin

        yaw = _yaw(_rotation(self._x))
        goal = np.zeros(13)
        goal[:3] = self._hold
        goal[3:7] = pin.SE3ToXYZQUAT(pin.SE3(pin.rpy.rpyToMatrix(0.0, 0.0, yaw), np.zeros(3)))[3:7]
        return goal

    def _carrot(self, target: np.ndarray) -> np.ndarray:
        """The failsafe's MPC target: `target`, or a point at most CARROT m / CARROT_YAW rad towards it.

        Chasing a nearby target keeps the recovery gentle; without the yaw limit a
        heavy, weak-yaw drone saturates its rotors on a large yaw change and
        loses attitude control.
        """
        import pinocchio as pin

        goal = target.copy()
        delta = goal[:3] - self._x[:3]
        dist = float(np.linalg.norm(delta))
        if dist > CARROT:
            goal[:3] = self._x[:3] + delta * (CARROT / dist)
        yaw_now = _yaw(_rotation(self._x))
        yaw_goal = _yaw(_rotation(goal))
        turn = math.remainder(yaw_goal - yaw_now, 2 * math.pi)
        if abs(turn) > CARROT_YAW:
            yaw = yaw_now + math.copysign(CARROT_YAW, turn)
            goal[3:7] = pin.SE3ToXYZQUAT(pin.SE3(pin.rpy.rpyToMatrix(0.0, 0.0, yaw), np.zeros(3)))[3:7]
        return goal

    def _solve(self) -> None:
        # Warm start from the previous thrusts rolled out from the current state:
        # a feasible guess. (BoxFDDP told isFeasible=False stalls at a converged
        # warm start: its stopping test reads ~1.5 and the line search fails.)
        problem = self._solver.problem
        problem.x0 = self._x.copy()
        us, self._warm = (list(self._solver.us) if self._warm is None else self._warm), None
        self._solver.solve(problem.rollout(us), us, self.max_iter, True)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise MetaSymError(f"{name} must be positive and finite, got {value!r}")
    return value


def _int_at_least(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise MetaSymError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _rotation(xyzquat: np.ndarray) -> np.ndarray:
    """Rotation matrix of a pose given as x, y, z and quaternion (the first 7 entries)."""
    import pinocchio as pin

    return pin.XYZQUATToSE3(np.asarray(xyzquat[:7], dtype=np.float64)).rotation


def _yaw(rotation: np.ndarray) -> float:
    """Heading of a rotation matrix (z-y-x Euler yaw)."""
    return math.atan2(rotation[1, 0], rotation[0, 0])


def _check_scale(name: str, scale: float) -> float:
    value = float(scale)
    lo, hi = SET_PARAM_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise MetaSymError(f"flight simulator scale for {name!r} must be in [{lo:g}, {hi:g}], got {scale!r}")
    return value
