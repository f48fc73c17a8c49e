"""Quadrotor family (Crocoddyl + Pinocchio): optimal flights, `step`, closed-loop flight."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pytest

pytest.importorskip("crocoddyl")
pytest.importorskip("example_robot_data")

from metasym_core.errors import MetaSymError  # noqa: E402
from metasym_core.systems import make_family  # noqa: E402
from metasym_core.systems import quadrotor as quad  # noqa: E402
from metasym_core.systems.quadrotor.flight import FlightSimulator  # noqa: E402

NOMINAL = dict.fromkeys(quad.PARAM_NAMES, 1.0)
# Honest end-of-flight tolerances for the last stored sample (t = (T-1)·dt); the
# terminal node one step later carries the goal cost.
GOAL_POS_TOL = 0.02  # m
GOAL_SPEED_TOL = 0.05  # m/s
GOAL_RATE_TOL = 0.1  # rad/s


@pytest.fixture(scope="module")
def family() -> quad.Quadrotor:
    return quad.Quadrotor()


@pytest.fixture(scope="module")
def flights(family):
    """Three train and two OOD flights of the default length."""
    rng = np.random.default_rng(7)
    out = []
    for split in ("train", "train", "train", "ood", "ood"):
        params = family.sample_params(split, rng)
        out.append(family.simulate(params, family.default_steps, rng))
    return out


def test_metadata_is_consistent(family):
    assert family.name == "quadrotor"
    assert len(family.state_names) == family.state_dim == 12
    assert len(family.control_names) == family.control_dim == 4
    assert all(n in family.units for n in family.state_names + family.control_names)
    assert family.default_systems == {"train": 30, "ood": 10}
    again = make_family("quadrotor", **family.options())
    assert again.options() == family.options()
    assert pickle.loads(pickle.dumps(family)).options() == family.options()  # for process pools


def test_trajectory_shapes_and_times(family, flights):
    for traj in flights:
        T = family.default_steps
        assert traj.states.shape == (T, 12) and traj.controls.shape == (T, 4)
        assert traj.states.dtype == np.float64 and traj.controls.dtype == np.float64
        assert traj.times[0] == 0.0 and np.all(np.diff(traj.times) > 0)
        np.testing.assert_allclose(np.diff(traj.times), family.dt)
        assert traj.extras["clean_states"].shape == (T, 12)
        assert traj.extras["solver"][0] == 1.0  # BoxFDDP converged


def test_flights_reach_goal_at_rest(flights):
    for traj in flights:
        last = traj.extras["clean_states"][-1]
        goal = traj.extras["goal_state"]
        pos_err = np.linalg.norm(quad.position_of(last) - quad.position_of(goal))
        assert pos_err < GOAL_POS_TOL
        assert np.linalg.norm(last[6:9]) < GOAL_SPEED_TOL
        assert np.linalg.norm(last[9:12]) < GOAL_RATE_TOL
        rot_err = np.linalg.norm(quad.pose_of(last).rotation.T @ quad.pose_of(goal).rotation - np.eye(3))
        assert rot_err < 0.02
        # and it actually flew: the start is away from the goal
        start = traj.extras["clean_states"][0]
        assert np.linalg.norm(quad.position_of(start) - quad.position_of(goal)) > 0.1


def test_flights_stay_in_box_with_bounded_thrust(family, flights):
    for traj in flights:
        pos = quad.position_of(traj.extras["clean_states"])
        assert np.all(pos >= family.box[:, 0] - 0.01) and np.all(pos <= family.box[:, 1] + 0.01)
        assert traj.controls.min() >= 0.0 and traj.controls.max() <= quad.MAX_THRUST


def test_thrust_bounds_hold_when_active():
    """A far goal in 0.8 s saturates the rotors; BoxFDDP must keep them in [0, MAX_THRUST]."""
    import pinocchio as pin

    box = np.asarray(quad.DEFAULT_BOX)
    x0 = np.concatenate([pin.SE3ToXYZQUAT(pin.SE3(np.eye(3), np.array([-1.5, -1.5, 1.0]))), np.zeros(6)])
    goal = np.concatenate([pin.SE3ToXYZQUAT(pin.SE3(np.eye(3), np.array([1.5, 1.5, 2.5]))), np.zeros(6)])
    xs, us, _ = quad.solve_point_to_point(NOMINAL, x0, goal, 40, 0.02, box)
    assert us.min() >= 0.0 and us.max() <= quad.MAX_THRUST
    assert np.isclose(us, quad.MAX_THRUST).any() and np.isclose(us, 0.0).any()  # bounds are active


def test_step_reproduces_crocoddyl_rollout(family, flights):
    for traj in flights[::2]:
        clean, us = traj.extras["clean_states"], traj.controls
        x = clean[0]
        worst = 0.0
        for k in range(len(us)):
            x = quad.step(x, us[k], family.dt, traj.params)
            target = clean[k + 1] if k + 1 < len(clean) else traj.extras["final_state"]
            worst = max(worst, float(np.abs(x - target).max()))
        assert worst < 1e-9


def test_flight_source_records_closed_loop_mpc_flights():
    family = quad.Quadrotor(source="flight", noise_std=0.01)
    assert family.options()["source"] == "flight"
    params = family.sample_params("train", np.random.default_rng(3))
    traj = family.simulate(params, 120, np.random.default_rng(4))
    clean, us = traj.extras["clean_states"], traj.controls
    assert traj.states.shape == (120, 12) and us.shape == (120, 4)
    assert np.allclose(traj.times, np.arange(120) * family.dt)
    assert 0.005 < np.std(traj.states - clean) < 0.015  # sensor noise on the observed states only
    assert us.min() >= 0.0 and us.max() <= quad.MAX_THRUST
    x = clean[0]
    for k in range(len(us)):  # the plant is the dataset's Euler model: states follow from the thrusts
        x = quad.step(x, us[k], family.dt, traj.params)
        target = clean[k + 1] if k + 1 < len(clean) else traj.extras["final_state"]
        assert np.abs(x - target).max() < 1e-9
    again = family.simulate(params, 120, np.random.default_rng(4))
    assert np.array_equal(again.states, traj.states)


def test_state_conversion_round_trip(flights):
    clean = flights[0].extras["clean_states"]
    for x12 in clean[::37]:
        np.testing.assert_allclose(quad.to_stored(quad.from_stored(x12)), x12, atol=1e-12)


def test_ood_params_lie_outside_train_ranges(family):
    rng = np.random.default_rng(0)
    train, ood = family.param_ranges("train"), family.param_ranges("ood")
    assert set(train) == set(ood) == set(quad.PARAM_NAMES)
    for _ in range(50):
        p = family.sample_params("ood", rng)
        assert all(p[k] > train[k][1] and p[k] <= ood[k][1] for k in p)
        q = family.sample_params("train", rng)
        assert all(train[k][0] <= q[k] <= train[k][1] for k in q)


def test_fixed_parameters_are_drawn_at_nominal_in_every_split(family):
    fixed = quad.Quadrotor(fixed=["mass"])
    rng = np.random.default_rng(0)
    for split in ("train", "ood"):
        draws = [fixed.sample_params(split, rng) for _ in range(20)]
        assert all(p["mass_scale"] == 1.0 for p in draws)
        assert len({p["inertia_scale"] for p in draws}) == 20  # the others still vary
    assert fixed.check_params({**NOMINAL, "mass_scale": 1.3})["mass_scale"] == 1.3  # still a valid system
    assert make_family("quadrotor", **fixed.options()).fixed == ("mass_scale",)
    assert "fixed" not in family.options()  # unchanged options (and dataset names) without it


def test_same_seed_gives_identical_trajectories(family):
    def run():
        rng = np.random.default_rng(123)
        return family.simulate(family.sample_params("train", rng), 60, rng)

    a, b = run(), run()
    assert a.params == b.params
    for name in ("times", "states", "controls"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for key in a.extras:
        np.testing.assert_array_equal(a.extras[key], b.extras[key])


def test_sensor_noise_has_the_stated_std(family, flights):
    noise = np.concatenate([t.states - t.extras["clean_states"] for t in flights])
    assert abs(noise.std() / family.noise_std - 1.0) < 0.05
    assert abs(noise.mean()) < 3 * family.noise_std / np.sqrt(noise.size)
    clean_family = quad.Quadrotor(noise_std=0.0)
    traj = clean_family.simulate(NOMINAL, 20, np.random.default_rng(1))
    np.testing.assert_array_equal(traj.states, traj.extras["clean_states"])


def test_flight_simulator_flies_and_survives_mass_change():
    sim = FlightSimulator(NOMINAL, dt=0.01, seed=3)
    box = sim.box
    samples = []
    cpu = time.process_time()
    for k in range(400):
        if k == 200:
            sim.set_param("mass", 1.3)
            assert sim.params["mass_scale"] == 1.3
        samples.append(sim.advance())
    steps_per_cpu_s = 400 / max(time.process_time() - cpu, 1e-9)
    times = np.array([s[0] for s in samples])
    states = np.array([s[1] for s in samples])
    thrusts = np.array([s[2] for s in samples])
    np.testing.assert_allclose(times, np.arange(400) * 0.01, atol=1e-12)
    pos = quad.position_of(states)
    assert np.all(pos >= box[:, 0] - 0.05) and np.all(pos <= box[:, 1] + 0.05)
    assert np.ptp(pos, axis=0).max() > 0.3  # it moves
    assert thrusts.min() >= 0.0 and thrusts.max() <= quad.MAX_THRUST
    # after the mass change the drone keeps flying: no fall, thrust rises to the new hover
    after = pos[200:, 2]
    assert after.min() > box[2, 0] - 0.05 and states[200:, 8].min() > -2.0
    hover_new = 1.3 * quad.physical_params(NOMINAL)["mass"] * quad.GRAVITY
    assert abs(thrusts[300:].sum(axis=1).mean() - hover_new) < 0.2 * hover_new
    assert steps_per_cpu_s > 100  # faster than real time at 100 Hz


def test_flight_simulator_is_reproducible_and_noise_only_touches_the_output():
    def fly(noise_std):
        sim = FlightSimulator(NOMINAL, seed=5, noise_std=noise_std)
        return np.array([sim.advance()[1] for _ in range(20)]), sim.state

    a, b, noisy = fly(0.0), fly(0.0), fly(0.01)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], noisy[1])  # same flight underneath
    assert 0.005 < np.std(noisy[0] - a[0]) < 0.015


def test_control_noise_perturbs_the_applied_thrusts_smoothly_and_reproducibly():
    """Exploration data: applied thrusts = the MPC's plus a smooth perturbation of the stated std; the flight
    without it is the one made before the option existed (its random streams are untouched)."""
    def fly(control_noise, steps=300):
        sim = FlightSimulator(NOMINAL, seed=4, control_noise=control_noise)
        states, extra = [], []
        for _ in range(steps):
            _, x, u = sim.advance()
            states.append(x)
            extra.append(u - sim.plan[2][0])  # the applied thrusts minus the MPC's (re-solved every step)
        return np.array(states), np.array(extra), sim

    calm, calm_extra, _ = fly(0.0)
    np.testing.assert_array_equal(calm_extra, 0.0)
    a, _, _ = fly(0.5)
    shaken, extra, sim = fly(0.5)
    np.testing.assert_array_equal(a, shaken)  # reproducible
    np.testing.assert_array_equal(calm[0], shaken[0])  # the same start: only the thrusts differ
    inside = np.all(np.abs(extra) < 3.0, axis=1)  # rows not clipped at a rotor limit
    e = extra[inside]
    assert 0.35 < e.std() < 0.65  # the stated 0.5 N
    lag1 = np.mean([np.corrcoef(extra[1:, i], extra[:-1, i])[0, 1] for i in range(4)])
    assert lag1 > 0.8  # smooth: AR(1) with correlation 0.9
    assert sim.waypoints_reached >= 1 and np.abs(shaken[:, 9:]).max() < 8.0  # still flies
    family = quad.Quadrotor(source="flight", control_noise=0.5)
    assert family.options()["control_noise"] == 0.5 and "control_noise" not in quad.Quadrotor().options()


def test_path_segment_runs_from_rest_to_rest_with_consistent_velocity():
    """A leg of the waypoint path: at rest at both ends, on the straight line, its body-frame velocity and yaw
    rate the derivatives of its position and heading."""
    import pinocchio as pin

    from metasym_core.systems.quadrotor.flight import PATH_PEAK_SPEED, PathSegment

    goal = np.zeros(13)
    goal[:3] = (1.5, -1.0, 2.0)
    goal[3:7] = pin.SE3ToXYZQUAT(pin.SE3(pin.rpy.rpyToMatrix(0.0, 0.0, 3.0), np.zeros(3)))[3:7]
    leg = PathSegment.towards(2.0, np.array([0.0, 0.0, 1.0]), -3.0, goal)
    assert leg.yaw1 == pytest.approx(-3.0 + (6.0 - 2 * np.pi))  # the shorter turn, through ±π
    start, end = leg.state(leg.t0), leg.state(leg.end)
    np.testing.assert_allclose(start[:3], (0.0, 0.0, 1.0), atol=1e-12)
    np.testing.assert_allclose(end[:3], goal[:3], atol=1e-12)
    np.testing.assert_allclose(np.r_[start[7:], end[7:]], 0.0, atol=1e-12)
    ts = np.linspace(leg.t0, leg.end, 41)
    speeds = []
    for t in ts[1:-1]:
        h = 1e-6
        ahead, behind, now = leg.state(t + h), leg.state(t - h), leg.state(t)
        rotation = pin.XYZQUATToSE3(now[:7]).rotation
        np.testing.assert_allclose(rotation @ now[7:10], (ahead[:3] - behind[:3]) / (2 * h), atol=1e-6)
        yaw = [np.arctan2(*pin.XYZQUATToSE3(x[:7]).rotation[[1, 0], 0]) for x in (ahead, behind)]
        assert now[12] == pytest.approx(math.remainder(yaw[0] - yaw[1], 2 * math.pi) / (2 * h), abs=1e-5)
        assert abs(rotation[2, 2] - 1.0) < 1e-12  # level
        offset = now[:3] - start[:3]
        assert np.linalg.norm(np.cross(offset, goal[:3] - start[:3])) < 1e-9  # on the line
        speeds.append(np.linalg.norm(now[7:10]))
    assert max(speeds) <= PATH_PEAK_SPEED + 1e-9


def test_the_mpc_plan_is_what_the_simulator_then_applies():
    """The simulator publishes its MPC's plan (`plan`) for predictors. Tracking a timed path, the plan from
    each state names the thrusts the simulator then applies over a prediction's 0.6 s: their mean squared
    difference is a small part of the thrusts' variance (a carrot a fixed distance ahead, the MPC's target
    before the path, re-planned a deceleration that never came: 74 % of it at 0.6 s)."""
    sim = FlightSimulator(NOMINAL, dt=0.02, seed=0)
    horizon, steps = 30, 900
    thrusts, plans = [], []
    for k in range(steps):
        if k == 400:
            sim.set_param("mass", 1.3)  # the MPC knows the new system at once: its plans stay right
        thrusts.append(sim.advance()[2])
        plans.append(sim.plan)
    thrusts = np.array(thrusts)
    mismatch = []
    for b in range(50, steps - horizon - 1):
        start, node_dt, planned = plans[b]
        offsets = (np.arange(b + 1, b + 1 + horizon) - start) * sim.dt
        nodes = np.clip(np.floor(offsets / node_dt + 1e-9).astype(int), 0, len(planned) - 1)
        mismatch.append(((planned[nodes] - thrusts[b + 1:b + 1 + horizon]) ** 2).mean(axis=1))
    mismatch = np.array(mismatch).mean(axis=0)
    variance = thrusts[50:].var(axis=0).mean()
    assert mismatch[-1] < 0.2 * variance, (mismatch[[0, 9, -1]], variance)
    assert sim.waypoints_reached >= 3


def test_flight_simulator_can_resolve_every_few_steps():
    sim = FlightSimulator(NOMINAL, seed=2, resolve_every=5)
    states = np.array([sim.advance()[1] for _ in range(150)])
    pos = quad.position_of(states)
    assert np.all(pos >= sim.box[:, 0] - 0.05) and np.all(pos <= sim.box[:, 1] + 0.05)
    assert np.abs(states[:, 9:]).max() < 6.0


@pytest.mark.parametrize("call, needle", [
    (lambda f: f.param_ranges("test"), "split"),
    (lambda f: f.sample_params("validation", np.random.default_rng(0)), "split"),
    (lambda f: f.simulate({**NOMINAL, "mass_scale": 3.0}, 10, np.random.default_rng(0)), "mass_scale"),
    (lambda f: f.simulate({"mass_scale": 1.0}, 10, np.random.default_rng(0)), "missing"),
    (lambda f: f.simulate({**NOMINAL, "drag": 1.0}, 10, np.random.default_rng(0)), "drag"),
    (lambda f: f.simulate(NOMINAL, 0, np.random.default_rng(0)), "steps"),
    (lambda f: f.simulate(NOMINAL, -5, np.random.default_rng(0)), "steps"),
    (lambda f: quad.step(np.full(12, np.nan), np.zeros(4), 0.01, NOMINAL), "NaN"),
    (lambda f: quad.step(np.zeros(12), np.array([np.nan, 0, 0, 0]), 0.01, NOMINAL), "NaN"),
    (lambda f: quad.step(np.zeros(11), np.zeros(4), 0.01, NOMINAL), "shape"),
    (lambda f: quad.step(np.zeros(12), np.zeros(4), 0.0, NOMINAL), "dt"),
    (lambda f: quad.step(np.zeros(12), np.zeros(4), 0.01, {**NOMINAL, "mass_scale": -1.0}), "mass_scale"),
    (lambda f: quad.Quadrotor(noise_std=-0.1), "noise_std"),
    (lambda f: quad.Quadrotor(dt=0.0), "dt"),
    (lambda f: quad.Quadrotor(box=((0, 1), (0, 1))), "box"),
    (lambda f: quad.Quadrotor(source="lqr"), "source"),
    (lambda f: quad.Quadrotor(fixed=["weight"]), "fixed"),
    (lambda f: quad.Quadrotor(fixed="mass"), "fixed"),
    (lambda f: quad.Quadrotor(control_noise=0.5), "source flight"),
    (lambda f: quad.Quadrotor(source="flight", control_noise=-1.0), "control_noise"),
    (lambda f: FlightSimulator(NOMINAL, control_noise=float("nan")), "control_noise"),
    (lambda f: FlightSimulator(NOMINAL, dt=-0.01), "dt"),
    (lambda f: FlightSimulator(NOMINAL, horizon=1), "horizon"),
    (lambda f: FlightSimulator({**NOMINAL, "mass_scale": 2.5}), "mass_scale"),
])
def test_bad_inputs_raise_metasym_error(family, call, needle):
    with pytest.raises(MetaSymError, match=needle) as info:
        call(family)
    assert "\n" not in str(info.value)


def test_set_param_rejects_unknown_names_and_scales():
    sim = FlightSimulator(NOMINAL, seed=0)
    with pytest.raises(MetaSymError, match="drag"):
        sim.set_param("drag", 1.1)
    with pytest.raises(MetaSymError, match="mass"):
        sim.set_param("mass", 5.0)
    with pytest.raises(MetaSymError, match="mass"):
        sim.set_param("mass", float("nan"))
    sim.set_param("arm_scale", 1.1)
    assert sim.params["arm_scale"] == 1.1


def test_the_quadrotor_modules_import_one_way():
    """`_model` imports neither `family` nor `flight`, and `flight` imports `_model` only (issue 19: the
    family module and the flight simulator used to import each other)."""
    import ast
    import inspect

    from metasym_core.systems.quadrotor import _model, family, flight

    def imported(module) -> set[str]:
        tree = ast.parse(inspect.getsource(module))
        return ({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
                | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names})

    ours = {m for m in imported(_model) | imported(flight) if m.startswith("metasym_core.systems.quadrotor")}
    assert ours == {"metasym_core.systems.quadrotor._model"}
    assert "metasym_core.systems.quadrotor.flight" in imported(family)
