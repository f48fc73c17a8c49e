"""Closed-loop control pieces: SE(3) poses of stored states, references, MPPI, the Crocoddyl tracker, the loop."""

import numpy as np
import pytest

from metasym_core.control.closed_loop import Change, fly
from metasym_core.control.cost import TrackingWeights, tracking_cost
from metasym_core.control.crocoddyl_mpc import CrocoddylTracker
from metasym_core.control.mppi import MPPI, MPPIConfig
from metasym_core.control.reference import Approach, FigureEight
from metasym_core.errors import MetaSymError
from metasym_core.systems import quadrotor as quad

NOMINAL = {k: 1.0 for k in quad.PARAM_NAMES}


def test_vectorised_poses_match_pinocchio_to_round_off():
    import pinocchio as pin

    rng = np.random.default_rng(0)
    states = rng.normal(size=(40, 12)) * 0.8
    states[0, 3:6] = 1e-9  # the small-angle series
    p, R = quad.poses(states.reshape(4, 10, 12))
    xyz, quats = quad.positions_and_quaternions(states.reshape(4, 10, 12))
    assert xyz.shape == (4, 10, 3) and quats.shape == (4, 10, 4)
    for i in range(40):
        want = quad.pose_of(states[i])
        np.testing.assert_allclose(p.reshape(40, 3)[i], want.translation, atol=1e-12)
        np.testing.assert_allclose(R.reshape(40, 3, 3)[i], want.rotation, atol=1e-12)
        q = quats.reshape(40, 4)[i]
        q_pin = pin.SE3ToXYZQUAT(want)[3:7]  # x, y, z, w; a quaternion and its negative are one rotation
        np.testing.assert_allclose(q * np.sign(q @ q_pin), q_pin, atol=1e-12)


def test_pose_terms_are_the_poses_without_matrices():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(5, 8, 12)) * 0.8
    states[0, 0, 3:6] = 1e-9  # the small-angle series
    p, R = quad.poses(states)
    q, v_world, tilt = quad.pose_terms(states)
    np.testing.assert_allclose(np.stack(q, -1), p, atol=1e-13)
    np.testing.assert_allclose(np.stack(v_world, -1), np.einsum("...ij,...j->...i", R, states[..., 6:9]), atol=1e-13)
    np.testing.assert_allclose(tilt, 3.0 - np.trace(R, axis1=-2, axis2=-1), atol=1e-13)


def test_figure_eight_starts_at_its_centre_and_its_velocity_is_the_derivative():
    ref = FigureEight(a=1.5, b=1.0, period_s=8.0, altitude=1.5)
    np.testing.assert_allclose(ref.position(0.0), [0.0, 0.0, 1.5])
    t = np.linspace(0, 8, 33)
    numeric = (ref.position(t + 1e-6) - ref.position(t - 1e-6)) / 2e-6
    np.testing.assert_allclose(ref.velocity(t), numeric, atol=1e-6)
    np.testing.assert_allclose(ref.position(8.0), ref.position(0.0), atol=1e-12)
    with pytest.raises(MetaSymError, match="period_s"):
        FigureEight(period_s=0.0)


def test_tracking_cost_ranks_the_state_on_the_reference_first():
    ref = FigureEight()
    on = np.zeros((1, 3, 12))
    on[0, :, :3] = ref.position(0.02 * np.arange(1, 4))  # level: log6 linear part = position
    on[0, :, 6:9] = ref.velocity(0.02 * np.arange(1, 4))
    off = on.copy()
    off[0, :, 2] -= 0.3
    hover = np.full((2, 3, 4), 3.6)
    costs = tracking_cost(np.concatenate([on, off]), hover, ref, 0.0, 0.02, 3.6, TrackingWeights())
    assert costs[0] < 1e-9 < costs[1]
    below = on.copy()
    below[0, :, 2] = 0.0  # under the floor: a crash costs more than any tracking error
    assert tracking_cost(below, hover[:1], ref, 0.0, 0.02, 3.6)[0] > 1e4


@pytest.mark.parametrize("delayed", [False, True])
def test_mppi_steers_a_double_integrator_to_its_target(delayed):
    """x'' = u, u in [-1, 1]: MPPI with the exact whole-horizon rollout drives x from 0 to 1, also when
    each period's control was decided one period earlier (`first`: an actuation delay)."""
    dt, H = 0.05, 20
    mppi = MPPI(MPPIConfig(samples=256, horizon=H, noise_std=0.5, temperature=0.2), [-1.0], [1.0], [0.0], seed=0)
    x = np.zeros(2)

    def rollout(cands):
        pos, vel = np.full(len(cands), x[0]), np.full(len(cands), x[1])
        out = np.empty(cands.shape[:2] + (2,))
        for h in range(H):
            vel = vel + dt * cands[:, h, 0]
            pos = pos + dt * vel
            out[:, h] = np.stack([pos, vel], -1)
        return out

    def cost(states, cands):
        return np.sum((states[..., 0] - 1.0) ** 2 + 0.1 * states[..., 1] ** 2, axis=1)

    for _ in range(120):
        applied = mppi.plan[0].copy() if delayed else None
        u = mppi.solve(rollout, cost, first=applied)[0, 0]
        if delayed:
            assert u == applied[0]  # the decided control stays; only the later steps are optimised
        assert -1.0 <= u <= 1.0
        x = np.array([x[0] + dt * (x[1] + dt * u), x[1] + dt * u])
        mppi.shift()
    assert abs(x[0] - 1.0) < 0.05 and abs(x[1]) < 0.1
    assert mppi.last_costs.shape == (256,)
    with pytest.raises(MetaSymError, match="NaN"):
        mppi.solve(lambda c: np.full(c.shape[:2] + (2,), np.nan), cost)


def test_nominal_mpc_sinks_after_the_mass_change_and_the_oracle_does_not():
    ref = FigureEight()
    change = {"param": "mass", "scale": 1.3, "time": 2.0}
    nominal = fly(CrocoddylTracker(NOMINAL, ref, 0.02), ref, 6.0, change=Change(**change))
    oracle = fly(CrocoddylTracker(NOMINAL, ref, 0.02), ref, 6.0, change=Change(**change, tell=True))
    assert not nominal.crashed and not oracle.crashed and len(nominal.times) == 300
    assert nominal.altitude_error(4.0) < -0.2 and abs(oracle.altitude_error(4.0)) < 0.1  # it sinks; the oracle holds
    assert nominal.rmse(4.0) > oracle.rmse(4.0)
    assert np.all(np.isfinite(nominal.solve_ms))


def test_a_flight_that_falls_is_a_crash_and_ends_there():
    class Off:
        solve_ms: list = []

        def control(self, t, x13):
            self.solve_ms.append(0.0)
            return np.zeros(4)

    flight = fly(Off(), FigureEight(), 10.0)
    assert flight.crashed and flight.times[-1] < 2.0  # free fall from 1.75 m takes 0.6 s


def test_bench_control_reports_every_controller_beside_the_nominal_mpc(tmp_path, one_thread):
    from metasym_core.bench.control import CONTROLLERS, run_control_bench

    doc, png = tmp_path / "bench.md", tmp_path / "plots" / "control.png"
    figures = run_control_bench(seeds=1, seconds=4.5, change_at=2.2, samples=16, horizon=5, plot=str(png), doc=doc)
    for name in CONTROLLERS:
        for key in ("rmse_before_change_m", "crashes", "solve_p50_ms", "solve_p99_ms", "first_crash_s"):
            assert f"{name}_{key}" in figures
    assert figures["nominal_mpc_crashes"] == figures["oracle_mpc_crashes"] == 0
    assert figures["nominal_mpc_altitude_error_after_change_m"] < figures["oracle_mpc_altitude_error_after_change_m"]
    assert "metasym_mppi_over_nominal_after_change" in figures
    assert png.stat().st_size > 10_000 and "## Closed loop" in doc.read_text()
    with pytest.raises(MetaSymError, match="change-at"):
        run_control_bench(seeds=1, seconds=3.0, change_at=2.5, doc=doc)
    with pytest.raises(MetaSymError, match="threads"):
        run_control_bench(seeds=1, seconds=4.5, change_at=2.2, threads=0, doc=doc)


def test_a_figure_eight_started_into_its_lap_is_the_same_path_shifted_in_time():
    ref, later = FigureEight(), FigureEight(start_s=2.0)
    t = np.linspace(0.0, 8.0, 17)
    np.testing.assert_array_equal(later.position(t), ref.position(t + 2.0))
    np.testing.assert_array_equal(later.velocity(t), ref.velocity(t + 2.0))


def test_an_approach_leads_from_anywhere_onto_the_reference_with_continuous_position_and_velocity():
    ref = FigureEight()
    approach = Approach.towards(ref, [1.0, -1.2, 1.0], speed=0.5)
    assert approach.duration_s == pytest.approx(np.linalg.norm(ref.position(0.0) - [1.0, -1.2, 1.0]) / 0.5)
    t = np.linspace(0.0, approach.duration_s + approach.ramp_s + 4.0, 8001)
    p, v = approach.position(t), approach.velocity(t)
    np.testing.assert_allclose(p[0], [1.0, -1.2, 1.0])
    np.testing.assert_allclose(v[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.gradient(p, t, axis=0)[2:-2], v[2:-2], atol=2e-3)  # no jump anywhere
    later = approach.duration_s + approach.ramp_s + 1.0  # on the reference, its clock half a ramp behind
    np.testing.assert_allclose(approach.position(later), ref.position(1.0 + approach.ramp_s / 2), atol=1e-12)
    assert np.linalg.norm(v, axis=1).max() <= ref.peak_speed + 1e-9


def test_mppi_on_the_nominal_physics_tracks_then_sinks_when_the_vehicle_gets_heavier(one_thread):
    """`NominalMPPI`: the MPPI on the rigid-body step at nominal parameters tracks the figure-8 closely
    while the plant is nominal, and after a +30 % mass change it flies low (it was never told): what known
    physics gives without learning, the baseline of `metasym bench control`. (Seeds 0-2 of this setting:
    RMSE 0.106-0.117 m before, altitude -0.29 to -0.31 m after; the Crocoddyl tracker: 0.37 m before.)"""
    from _models import random_model

    from metasym_core.control.metasym_mppi import NominalMPPI

    ref = FigureEight()
    controller = NominalMPPI(random_model(context=4), ref, 0.02, MPPIConfig(samples=64, horizon=15), seed=0)
    flight = fly(controller, ref, 7.0, 0.02, Change("mass", 1.3, 3.5))
    assert not flight.crashed
    assert flight.rmse(1.0, 3.5) < 0.2
    assert flight.altitude_error(5.5) < -0.15


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_closed_loop_on_the_bundled_model_stays_stable_and_adaptation_lowers_the_error_after_a_change(
        one_thread):
    """Issue 16's closed-loop test, lock-stepped: MPPI (K = 64, H = 25) on `pretrained:mppi` flies the figure-8
    10 s with a +30 % mass change at 3 s, with and without the config's learner. Both stay up; without
    adaptation the vehicle flies low; adapting cuts the error after the change. The thresholds come from seeds
    0-2 of this setting (before the change 0.077-0.100 m; after it without adaptation 0.28-0.33 m, altitude
    -0.26 to -0.31 m; adapting 0.72 and 0.78 of that in seeds 0 and 1, seed 2 accepted no adaptation) and
    from `metasym bench control` (docs/benchmarks.md, "Closed loop"). Seed 0."""
    from metasym_core.control.metasym_mppi import MetaSymMPPI
    from metasym_core.online.learner import learner_settings
    from metasym_core.online.predictor import load_model

    model, cfg, _ = load_model("quadrotor", "pretrained:mppi", "cpu")
    flights, adaptations = {}, {}
    for adapt in (False, True):
        ref = FigureEight()
        controller = MetaSymMPPI(model, ref, 0.02, MPPIConfig(samples=64, horizon=25),
                                 learner_settings(cfg, checkpoint="pretrained:mppi") if adapt else None, seed=0)
        flights[adapt] = fly(controller, ref, 10.0, 0.02, Change("mass", 1.3, 3.0))
        adaptations[adapt] = sum(accepted for _, accepted, _ in controller.adaptations)
    fixed, adapting = flights[False], flights[True]
    assert not fixed.crashed and not adapting.crashed
    assert fixed.rmse(1.0, 3.0) < 0.2 and adapting.rmse(1.0, 3.0) < 0.2
    assert fixed.altitude_error(5.0) < -0.15, "without adaptation the heavier vehicle flies low"
    assert adaptations[True] >= 1
    assert adapting.rmse(5.0) <= 0.85 * fixed.rmse(5.0), (adapting.rmse(5.0), fixed.rmse(5.0))
