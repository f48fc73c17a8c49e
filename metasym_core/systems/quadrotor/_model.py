"""The quadrotor model: the "hector" dynamics, its stored state, and Crocoddyl trajectory optimisation.

Each system scales the nominal hector quadrotor (example-robot-data; 1.477 kg,
Ixx = Iyy = 0.01152, Izz = 0.0218 kg m², read from its URDF) and the rotor
constants of Crocoddyl's quadrotor example (arm 0.1525 m, cf = 6.6e-5,
cm = 1e-6, so a reaction-torque coefficient cm/cf = 0.01515 m per newton).
Parameters are four dimensionless scale factors (METHOD §6):

- ``mass_scale``    multiplies the mass,
- ``inertia_scale`` multiplies the whole rotational inertia matrix,
- ``arm_scale``     multiplies the rotor arm (distance of each rotor from the body centre),
- ``torque_scale``  multiplies the torque constant cm/cf.

Train draws each U[0.8, 1.2], OOD each U[1.2, 1.5]; `physical_params` gives the
absolute values. The option `fixed` (e.g. ``["mass"]``) draws the named factors at
their nominal 1 in every split (they stay valid parameters of `simulate`): a model
trained so has never seen them vary, and cannot infer a change of them from context.

Stored 12-D state (q first, then p, METHOD §1), all in float64:

- ``x[0:6]`` = ``pinocchio.log6(M)`` of the body pose M = (R, p) in the world
  frame, linear part first, angular part second. Note the linear part is
  ``V(ω)⁻¹ p``, not the position p itself (they agree when the body is level);
  `pose_of` / `poses` / `position_of` recover M and p.
- ``x[6:12]`` = body twist in the body frame (Pinocchio's free-flyer velocity):
  linear velocity v, then angular velocity ω.

Controls are the four rotor thrusts in newtons, each in [0, MAX_THRUST]; rotors
1..4 sit on +x, +y, -x, -y and spin CCW, CW, CCW, CW.

Each flight (`Quadrotor.simulate`) is a BoxFDDP trajectory optimisation from a
random start (position in the box, yaw in ±π/2, roll/pitch in ±0.2 rad, small
random twist) to a random goal pose at rest, with a barrier keeping the body in
the box (default x, y in [-2, 2] m, z in [0.5, 3] m). Observed states are the
clean ones plus N(0, noise_std²) sensor noise.

Dynamics: `DifferentialActionModelFreeFwdDynamics` (articulated-body algorithm
on a free-flyer) with `ActuationModelFloatingBaseThrusters`, integrated by
Crocoddyl's semi-implicit Euler (`IntegratedActionModelEuler`: v' = v + a·dt,
q' = q ⊕ v'·dt). The discrete model *is* the ground truth: the dataset rollout,
`step` and the flight simulator all use it, so they agree to round-off. Euler
was chosen over RK4 for speed (4× fewer dynamics calls); at dt = 0.02 s the
model stays smooth and well-behaved for the attitude rates reached here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from metasym_core.errors import MetaSymError

__all__ = ["ARM", "BOX_MARGIN", "CF", "CM", "CONTROL_NAMES", "DEFAULT_BOX", "GRAVITY", "MAX_ITER", "MAX_THRUST",
           "MAX_TILT", "MAX_YAW", "OCP_WEIGHTS", "OOD_RANGE", "PARAM_NAMES", "SOURCES", "START_RATE_STD",
           "START_SPEED_STD", "STATE_NAMES", "TAIL_NODES", "TORQUE_COEFF", "TRAIN_RANGE", "Dynamics", "box_array",
           "check_scales", "dynamics", "from_stored", "ocp_costs", "physical_params", "pose_of", "pose_terms", "poses",
           "position_of", "positions_and_quaternions",
           "random_pose", "set_reference", "solve_point_to_point", "step", "step_model", "to_stored",
           "tracking_models"]

# Nominal rotor constants (Crocoddyl's quadrotor example; METHOD §6).
ARM = 0.1525
CF = 6.6e-5
CM = 1e-6
TORQUE_COEFF = CM / CF
# Chosen per-rotor thrust limit [N]. Crocoddyl's example uses 5 N, but then a
# 1.5x mass (OOD) needs 5.4 N per rotor just to hover; 8 N keeps thrust/weight
# >= 1.45 over the whole OOD range.
MAX_THRUST = 8.0
GRAVITY = 9.81

PARAM_NAMES: tuple[str, ...] = ("mass_scale", "inertia_scale", "arm_scale", "torque_scale")
TRAIN_RANGE = (0.8, 1.2)
OOD_RANGE = (1.2, 1.5)
DEFAULT_BOX: tuple[tuple[float, float], ...] = ((-2.0, 2.0), (-2.0, 2.0), (0.5, 3.0))

# Random start / goal draws (chosen). Yaw is kept in ±π/2 so that rotation angles
# stay well below π, where log6 jumps (the cut locus of the log map).
BOX_MARGIN = 0.25  # start and goal positions keep this distance [m] from the box faces
MAX_YAW = math.pi / 2
MAX_TILT = 0.2  # initial roll and pitch [rad]
START_SPEED_STD = 0.2  # initial linear body velocity, per axis [m/s]
START_RATE_STD = 0.2  # initial angular body velocity, per axis [rad/s]

MAX_ITER = 200  # BoxFDDP iterations per flight (typically 10-40 are used)
# The OCP runs this many nodes past the stored samples: a terminal cost makes the
# last few controls of any horizon jerk the body to rest (rates up to ~1 rad/s
# flipped in 3 steps); those nodes are optimised but not stored.
TAIL_NODES = 10
# Where flights come from: "ocp" = optimal point-to-point flights (the paper's
# data), "flight" = closed-loop MPC waypoint flights as flown by the ROS simulator.
SOURCES = ("ocp", "flight")

STATE_NAMES = ["log_rho_x", "log_rho_y", "log_rho_z", "log_theta_x", "log_theta_y", "log_theta_z",
               "v_x", "v_y", "v_z", "w_x", "w_y", "w_z"]
CONTROL_NAMES = ["thrust_1", "thrust_2", "thrust_3", "thrust_4"]


# -- model construction --------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _hector():
    """The nominal hector Pinocchio model, loaded once per process."""
    import example_robot_data

    return example_robot_data.load("hector").model


def check_scales(params: Mapping[str, float]) -> tuple[float, float, float, float]:
    """Scale factors as a hashable tuple; names must match and values be positive and finite."""
    if not isinstance(params, Mapping):
        raise MetaSymError(f"quadrotor params must be a dict with keys {list(PARAM_NAMES)}, got {params!r}")
    missing = [k for k in PARAM_NAMES if k not in params]
    unknown = [k for k in params if k not in PARAM_NAMES]
    if missing or unknown:
        raise MetaSymError(f"quadrotor parameters: missing {missing}, unknown {unknown}; expected "
                           f"{list(PARAM_NAMES)}")
    values = tuple(float(params[k]) for k in PARAM_NAMES)
    for k, v in zip(PARAM_NAMES, values, strict=True):
        if not (math.isfinite(v) and v > 0):
            raise MetaSymError(f"quadrotor parameter {k}={v!r} must be a positive finite scale factor")
    return values


def physical_params(params: Mapping[str, float]) -> dict[str, float]:
    """Absolute values behind the scale factors: mass [kg], inertia [kg m²], arm [m], torque coeff [m]."""
    ms, js, as_, ts = check_scales(params)
    inertia = _hector().inertias[1]
    J = np.asarray(inertia.inertia)
    return {"mass": inertia.mass * ms, "ixx": J[0, 0] * js, "iyy": J[1, 1] * js, "izz": J[2, 2] * js,
            "arm": ARM * as_, "torque_coeff": TORQUE_COEFF * ts, "max_thrust": MAX_THRUST}


class Dynamics:
    """Crocoddyl objects of one physical system; keeps the Pinocchio model alive."""

    def __init__(self, scales: tuple[float, float, float, float]):
        import crocoddyl
        import pinocchio as pin

        ms, js, as_, ts = scales
        base = _hector()
        self.model = pin.Model(base)
        nominal = base.inertias[1]
        self.model.inertias[1] = pin.Inertia(nominal.mass * ms, nominal.lever, nominal.inertia * js)
        self.mass = nominal.mass * ms
        self.state = crocoddyl.StateMultibody(self.model)
        arm = ARM * as_
        ctorque = TORQUE_COEFF * ts
        ccw, cw = crocoddyl.ThrusterType.CCW, crocoddyl.ThrusterType.CW
        layout = [((arm, 0.0, 0.0), ccw), ((0.0, arm, 0.0), cw),
                  ((-arm, 0.0, 0.0), ccw), ((0.0, -arm, 0.0), cw)]
        # Limits go through the constructor: the Python `max_thrust` attribute of
        # crocoddyl.Thruster is bound to min_thrust (reads 0.1 for limits 0.1..5).
        thrusters = [crocoddyl.Thruster(pin.SE3(np.eye(3), np.array(pos)), ctorque, kind, 0.0, MAX_THRUST)
                     for pos, kind in layout]
        self.actuation = crocoddyl.ActuationModelFloatingBaseThrusters(self.state, thrusters)
        self.frame_id = self.model.getFrameId("base_link")
        self.hover = np.full(4, self.mass * GRAVITY / 4.0)

    def action_model(self, costs, dt: float):
        """Euler-integrated free forward dynamics with `costs` (thrust bounds from the thrusters)."""
        import crocoddyl

        dam = crocoddyl.DifferentialActionModelFreeFwdDynamics(self.state, self.actuation, costs)
        return crocoddyl.IntegratedActionModelEuler(dam, dt)

    def empty_costs(self):
        """A cost-free sum: the pure dynamics for `step` and the flight plant."""
        import crocoddyl

        return crocoddyl.CostModelSum(self.state, 4)


@functools.lru_cache(maxsize=64)
def dynamics(scales: tuple[float, float, float, float]) -> Dynamics:
    """The (cached) Crocoddyl objects for scale factors `scales`, checked once for a sane binary."""
    dyn = Dynamics(scales)
    _check_binary_compatibility(dyn)
    return dyn


@functools.lru_cache(maxsize=64)
def step_model(scales: tuple[float, float, float, float], dt: float):
    """Cost-free integrated model and its data for `step` (cached per system and dt; not thread-safe)."""
    dyn = dynamics(scales)
    model = dyn.action_model(dyn.empty_costs(), dt)
    return dyn, model, model.createData()


def _check_binary_compatibility(dyn: Dynamics) -> None:
    """Free fall must give -g: a crocoddyl wheel built against another libpinocchio ABI returns garbage."""
    model = dyn.action_model(dyn.empty_costs(), 0.01)
    data = model.differential.createData()
    x = np.concatenate([np.array([0, 0, 1.0, 0, 0, 0, 1.0]), np.zeros(6)])
    model.differential.calc(data, x, np.zeros(4))
    acc = np.asarray(data.xout)
    expected = np.array([0, 0, -GRAVITY, 0, 0, 0])
    if not np.allclose(acc, expected, atol=1e-9):
        raise MetaSymError(f"crocoddyl/pinocchio mismatch: free fall gives acceleration "
                           f"{acc.round(3).tolist()}, expected [0, 0, -9.81, 0, 0, 0]; install the pin "
                           "version crocoddyl was built against (crocoddyl 3.2.1 needs pin 4.0.0)")


# -- state conversion ----------------------------------------------------------------


def to_stored(x13: np.ndarray) -> np.ndarray:
    """Crocoddyl state [xyz, quat(xyzw), twist] (13) -> stored [log6(pose), twist] (12)."""
    import pinocchio as pin

    x13 = np.asarray(x13, dtype=np.float64)
    return np.concatenate([pin.log6(pin.XYZQUATToSE3(x13[:7])).vector, x13[7:13]])


def from_stored(x12: np.ndarray) -> np.ndarray:
    """Stored [log6(pose), twist] (12) -> Crocoddyl state [xyz, quat(xyzw), twist] (13)."""
    import pinocchio as pin

    x12 = np.asarray(x12, dtype=np.float64)
    return np.concatenate([pin.SE3ToXYZQUAT(pin.exp6(pin.Motion(x12[:6]))), x12[6:12]])


def pose_of(x12: np.ndarray):
    """The pinocchio.SE3 body pose of a stored state."""
    import pinocchio as pin

    return pin.exp6(pin.Motion(np.asarray(x12, dtype=np.float64)[:6]))


def position_of(states: np.ndarray) -> np.ndarray:
    """World positions [..., 3] of stored states [..., 12]."""
    return poses(states)[0]


_SMALL_ANGLE = 1e-6  # below this rotation angle `poses` uses the series of its coefficients


def _skew(w: np.ndarray) -> np.ndarray:
    z = np.zeros(w.shape[:-1])
    return np.stack([np.stack([z, -w[..., 2], w[..., 1]], -1),
                     np.stack([w[..., 2], z, -w[..., 0]], -1),
                     np.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def _exp_coefficients(theta2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sin θ/θ, (1 − cos θ)/θ², (θ − sin θ)/θ³) of rotation angles squared θ² (series near θ = 0)."""
    theta = np.sqrt(theta2)
    small = theta < _SMALL_ANGLE
    safe = np.where(small, 1.0, theta)
    sin, cos = np.sin(safe), np.cos(safe)
    a = np.where(small, 1.0 - theta2 / 6.0, sin / safe)
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - cos) / safe ** 2)
    c = np.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - sin) / safe ** 3)
    return a, b, c


def poses(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions [..., 3], rotations [..., 3, 3]) in the world frame of stored states [..., 12].

    The SE(3) exponential of the log6 part (v, ω) in NumPy, for many states at once (`pose_of` maps
    one through Pinocchio, and the two agree to round-off): R = exp(ω×), p = V(ω) v,
    V = I + (1 − cos θ)/θ² ω× + (θ − sin θ)/θ³ (ω×)²."""
    states = np.asarray(states, dtype=np.float64)
    v, w = states[..., 0:3], states[..., 3:6]
    a, b, c = _exp_coefficients(np.sum(w * w, axis=-1))
    W = _skew(w)
    W2 = W @ W
    eye = np.eye(3)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    p = np.einsum("...ij,...j->...i", V, v)
    return p, R


def _cross(a: tuple, b: tuple) -> tuple:
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def pose_terms(states: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    """(position, world-frame velocity R v_body, 3 − trace R) of stored states [..., 12], the vectors as
    tuples of their three components (arrays [...]): what a tracking cost reads of `poses`, without a
    3×3 matrix per state (a sampling controller scores tens of thousands of states per control period;
    this takes a fraction of `poses`' time). Rodrigues on vectors: R u = u + a ω×u + b ω×(ω×u),
    V v likewise with (b, c), and trace R = 3 − 2 b θ²."""
    x = np.moveaxis(np.asarray(states, dtype=np.float64), -1, 0).copy()  # component-major: contiguous rows
    v, w, v_body = tuple(x[0:3]), tuple(x[3:6]), tuple(x[6:9])
    theta2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
    a, b, c = _exp_coefficients(theta2)
    wv = _cross(w, v)
    wwv = _cross(w, wv)
    wu = _cross(w, v_body)
    wwu = _cross(w, wu)
    p = tuple(v[i] + b * wv[i] + c * wwv[i] for i in range(3))
    v_world = tuple(v_body[i] + a * wu[i] + b * wwu[i] for i in range(3))
    return p, v_world, 2.0 * b * theta2


def positions_and_quaternions(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions [..., 3], unit quaternions [..., 4] as x, y, z, w, the ROS order) of stored states
    [..., 12]: `poses`, with the rotations converted by SciPy."""
    from scipy.spatial.transform import Rotation

    p, R = poses(states)
    quats = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(*R.shape[:-2], 4)
    return p, quats


# -- one step of the true dynamics ---------------------------------------------------


def step(x: np.ndarray, u: np.ndarray, dt: float, params: Mapping[str, float]) -> np.ndarray:
    """Integrate the true dynamics one step of `dt` from stored state `x` (12) under thrusts `u` (4).

    Uses the same Crocoddyl action model `calc` as the dataset rollout, so a
    chain of `step`s reproduces Crocoddyl's rollout to round-off. Thrusts
    saturate at the rotor limits [0, MAX_THRUST] (as a real rotor would).
    """
    scales = check_scales(params)
    x = np.asarray(x, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    if x.shape != (12,):
        raise MetaSymError(f"quadrotor state x has shape {list(x.shape)}, expected [12]")
    if u.shape != (4,):
        raise MetaSymError(f"quadrotor control u has shape {list(u.shape)}, expected [4]")
    if not np.all(np.isfinite(x)):
        raise MetaSymError("quadrotor state x contains NaN or Inf")
    if not np.all(np.isfinite(u)):
        raise MetaSymError("quadrotor control u contains NaN or Inf")
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise MetaSymError(f"step size dt must be positive and finite, got {dt!r}")
    _, model, data = step_model(scales, dt)
    model.calc(data, from_stored(x), np.clip(u, 0.0, MAX_THRUST))
    return to_stored(data.xnext)


# -- trajectory optimisation ---------------------------------------------------------


def box_array(box) -> np.ndarray:
    """Validate a bounding box ((xlo, xhi), (ylo, yhi), (zlo, zhi)) -> array [3, 2]."""
    bad = f"quadrotor box must be ((xlo, xhi), (ylo, yhi), (zlo, zhi)), got {box!r}"
    try:
        arr = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetaSymError(bad) from exc
    if arr.shape != (3, 2) or not np.all(np.isfinite(arr)):
        raise MetaSymError(bad)
    if not np.all(arr[:, 1] - arr[:, 0] > 2 * BOX_MARGIN + 0.5):
        raise MetaSymError(f"quadrotor box {arr.tolist()} is too small: each side must exceed "
                           f"{2 * BOX_MARGIN + 0.5:g} m")
    return arr


def ocp_costs(dyn: Dynamics, goal13: np.ndarray, box: np.ndarray, terminal: bool,
              weights: Mapping[str, float]):
    """Cost sum of the point-to-point problem (running or terminal).

    Running: goal placement (pulls towards the goal), state regularisation to the
    goal state (attitude and body rates), thrusts near hover, and a quadratic
    barrier keeping the body inside `box`. Terminal: goal placement and zero twist.
    """
    import crocoddyl
    import pinocchio as pin

    state, nu = dyn.state, 4
    costs = crocoddyl.CostModelSum(state, nu)
    goal = pin.XYZQUATToSE3(goal13[:7])
    place = crocoddyl.CostModelResidual(
        state, crocoddyl.ResidualModelFramePlacement(state, dyn.frame_id, goal, nu))
    if terminal:
        twist = crocoddyl.CostModelResidual(
            state, crocoddyl.ActivationModelWeightedQuad(np.array([0.0] * 6 + [1.0] * 6)),
            crocoddyl.ResidualModelState(state, goal13, nu))
        costs.addCost("goal_pose", place, weights["terminal_pose"])
        costs.addCost("goal_twist", twist, weights["terminal_twist"])
        return costs
    xreg = crocoddyl.CostModelResidual(
        state, crocoddyl.ActivationModelWeightedQuad(np.array([0.0] * 3 + [1.0] * 3 + [0.1] * 3 + [1.0] * 3)),
        crocoddyl.ResidualModelState(state, goal13, nu))
    ureg = crocoddyl.CostModelResidual(state, crocoddyl.ResidualModelControl(state, dyn.hover))
    inside = crocoddyl.CostModelResidual(
        state, crocoddyl.ActivationModelQuadraticBarrier(crocoddyl.ActivationBounds(box[:, 0], box[:, 1])),
        crocoddyl.ResidualModelFrameTranslation(state, dyn.frame_id, np.zeros(3), nu))
    costs.addCost("goal_pose", place, weights["running_pose"])
    costs.addCost("state_reg", xreg, weights["state_reg"])
    costs.addCost("thrust_reg", ureg, weights["thrust_reg"])
    costs.addCost("box", inside, weights["box"])
    return costs


def tracking_models(dyn: Dynamics, box: np.ndarray, nodes: int, node_dt: float,
                    weights: Mapping[str, float]) -> list:
    """`nodes` running action models and the terminal one (last) of an MPC that tracks a reference in time:
    each with its own `ocp_costs`, so that `set_reference` can point each node at the reference at its own
    time (a model shared by all nodes would pull every node to one target)."""
    rest = np.zeros(13)
    rest[6] = 1.0
    return [dyn.action_model(ocp_costs(dyn, rest, box, node == nodes, weights), node_dt) for node in range(nodes + 1)]


def set_reference(model, goal13: np.ndarray) -> None:
    """Point one node's costs (`ocp_costs`) at `goal13`: its pose and its state (running) or twist (terminal)
    references."""
    import pinocchio as pin

    costs = model.differential.costs.costs
    costs["goal_pose"].cost.residual.reference = pin.XYZQUATToSE3(np.asarray(goal13[:7], dtype=np.float64))
    costs["state_reg" if "state_reg" in costs else "goal_twist"].cost.residual.reference = goal13


OCP_WEIGHTS: dict[str, float] = {
    "running_pose": 1e-2,
    "state_reg": 1e-2,
    "thrust_reg": 1e-2,
    "box": 1e3,
    "terminal_pose": 1e3,
    "terminal_twist": 1e3,
}


def solve_point_to_point(params: Mapping[str, float], x0: np.ndarray, goal13: np.ndarray, nodes: int,
                         dt: float, box: np.ndarray, weights: Mapping[str, float] = OCP_WEIGHTS,
                         max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """BoxFDDP from Crocoddyl state `x0` (13) to `goal13` in `nodes` steps of `dt`.

    Returns (xs [nodes+1, 13], us [nodes, 4], info). xs is the rollout of the
    model under the returned (bounded) thrusts, so it is exactly dynamically
    consistent whatever the solver's final gaps.
    """
    import crocoddyl

    dyn = dynamics(check_scales(params))
    running = dyn.action_model(ocp_costs(dyn, goal13, box, False, weights), dt)
    terminal = dyn.action_model(ocp_costs(dyn, goal13, box, True, weights), dt)
    problem = crocoddyl.ShootingProblem(np.asarray(x0, dtype=np.float64), [running] * nodes, terminal)
    problem.nthreads = 1  # the default (all cores, OpenMP) is 10-50x slower on a shared 2-core machine
    solver = crocoddyl.SolverBoxFDDP(problem)
    converged = solver.solve([problem.x0] * (nodes + 1), [dyn.hover] * nodes, max_iter, False)
    us = np.clip(np.array(solver.us), 0.0, MAX_THRUST)
    xs = np.array(problem.rollout(list(us)))
    info = {"converged": float(converged), "iterations": float(solver.iter), "cost": float(solver.cost)}
    return xs, us, info


# -- the family ----------------------------------------------------------------------


def random_pose(rng: np.random.Generator, box: np.ndarray, tilt: float) -> np.ndarray:
    """Random position inside `box` (with margin), yaw in ±MAX_YAW, roll/pitch in ±tilt, as xyz+quat."""
    import pinocchio as pin

    pos = rng.uniform(box[:, 0] + BOX_MARGIN, box[:, 1] - BOX_MARGIN)
    roll, pitch = rng.uniform(-tilt, tilt, 2) if tilt > 0 else (0.0, 0.0)
    yaw = rng.uniform(-MAX_YAW, MAX_YAW)
    return pin.SE3ToXYZQUAT(pin.SE3(pin.rpy.rpyToMatrix(roll, pitch, yaw), pos))
