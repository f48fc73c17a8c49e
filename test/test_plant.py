"""The simulator as a plant for an external controller (no DDS): plans with one period of delay, hold,
timeout and geofence to the failsafe hover, resume, bad plans; the quadrotor stream under it, lock-stepped."""

import math

import numpy as np
import pytest

from metasym_core.errors import MetaSymError
from metasym_core.online.plant import FENCE_SETTLE_S, MODE_EXTERNAL, MODE_FAILSAFE, MODE_HOLD, ExternalPlant
from metasym_core.online.streams import make_stream
from metasym_core.systems import quadrotor as quad

DT = 0.02
M = 4
BOX = np.array(quad.DEFAULT_BOX)


def _plant(timeout=0.2):
    logs = {"info": [], "warn": []}
    plant = ExternalPlant("quadrotor", DT, np.zeros(M), np.full(M, quad.MAX_THRUST), timeout,
                          info=logs["info"].append, warn=logs["warn"].append)
    return plant, logs


def _send(plant, step, controls, dt=DT, now=None, system="quadrotor", horizon=None, stamp=None):
    controls = np.asarray(controls, dtype=np.float64)
    rows = horizon if horizon is not None else controls.size // M
    return plant.on_plan(system, step, step * DT if stamp is None else stamp, dt, controls.ravel(), rows, M,
                         now=step * DT if now is None else now)


def _ramp(n, start=1.0):
    """n controls, entry k all rotors start + k (each entry tells which it is)."""
    return np.repeat((start + np.arange(n))[:, None], M, axis=1)


def test_each_step_applies_the_plan_entry_one_period_after_the_state_it_starts_from():
    plant, logs = _plant()
    u, mode = plant.control(0)
    assert u is None and mode == MODE_FAILSAFE and plant.reason == "no plan yet"  # before the first plan
    assert _send(plant, 0, _ramp(5)) is None  # from state 0: [0] is what state 0 already applies
    for step in range(1, 5):
        u, mode = plant.control(step)
        assert mode == MODE_EXTERNAL
        np.testing.assert_array_equal(u, np.full(M, 1.0 + step))  # entry `step` of the plan of state 0
    assert _send(plant, 4, _ramp(5, start=7.0)) is None  # a newer plan replaces it from its next entry on
    np.testing.assert_array_equal(plant.control(5)[0], np.full(M, 8.0))
    # a plan of another control period: its entry covering the step's time (zero-order hold)
    assert _send(plant, 5, _ramp(4), dt=0.05) is None
    got = [plant.control(step)[0][0] for step in (6, 7, 8, 9)]  # 0.02, 0.04, 0.06, 0.08 s after its start
    assert got == [1.0, 1.0, 2.0, 2.0]
    assert plant.steps[MODE_EXTERNAL] == 9 and plant.failsafes == 1
    assert logs["info"] == [line for line in logs["info"] if "plant mode" in line] and len(logs["info"]) == 2


def test_past_its_end_the_plan_holds_then_a_stale_one_hands_over_to_the_failsafe_until_plans_return():
    plant, logs = _plant(timeout=0.2)  # 10 steps
    plant.control(0)
    _send(plant, 0, _ramp(3))
    modes = [plant.control(step) for step in range(1, 13)]
    assert [m for _, m in modes[:2]] == [MODE_EXTERNAL] * 2
    assert [m for _, m in modes[2:10]] == [MODE_HOLD] * 8  # steps 3-10: the last control, held
    assert all(np.array_equal(u, np.full(M, 3.0)) for u, _ in modes[2:10])
    assert [m for _, m in modes[10:]] == [MODE_FAILSAFE] * 2 and modes[10][0] is None  # 0.22 s > 0.2 s
    assert "timeout" in plant.reason
    _send(plant, 12, _ramp(3, start=5.0))  # the controller is back
    u, mode = plant.control(13)
    assert mode == MODE_EXTERNAL and u[0] == 6.0  # (the same change as at step 1, 0.24 s ago: not logged)
    changes = [line.split(":")[0] for line in logs["info"]]
    assert changes == ["plant mode start -> failsafe at step 0", "plant mode failsafe -> external at step 1",
                       "plant mode external -> hold at step 3", "plant mode hold -> failsafe at step 11"]
    # one line per change; the same change within a second of plant time again rides along with the next
    assert plant.control(30)[1] == MODE_FAILSAFE  # stale again (logged: another change)
    plant.control(70)
    _send(plant, 70, _ramp(3))
    plant.control(71)
    last = logs["info"][-1]
    assert last.startswith("plant mode failsafe -> external at step 71") and "(+1 like it" in last
    plant.control_timeout_s = 1.0  # live: the same plan is fresh for longer now
    assert plant.control(110)[1] == MODE_HOLD
    report = plant.report()
    assert report["mode"] == MODE_HOLD and report["failsafes"] == 3 and report["plans"] == 3


def test_bad_plans_are_dropped_counted_and_logged_once_and_never_applied():
    plant, logs = _plant()
    plant.control(0)
    for _ in range(2):  # the second of each kind is counted, not logged again (throttled)
        assert _send(plant, 0, _ramp(5), system="spring_mesh") == "system"
        assert _send(plant, 0, _ramp(5), horizon=4) == "dimension"
        assert _send(plant, 0, np.full((5, M), math.nan)) == "nonfinite"
        assert _send(plant, 0, _ramp(5), dt=0.0) == "bad_dt"
        assert _send(plant, 0, _ramp(5), stamp=30.0, now=0.0) == "future"
        assert _send(plant, 1, _ramp(5)) == "ahead"  # from a state not produced yet
        assert _send(plant, 0, np.zeros((0, M))) == "empty"
    assert plant.dropped == 14 and plant.plans.accepted == 0 and len(logs["warn"]) == 7
    assert plant.control(1) == (None, MODE_FAILSAFE)
    assert _send(plant, 1, _ramp(5)) is None
    assert _send(plant, 0, _ramp(5)) == "out_of_order"  # older than the newest kept
    # a plan outside the actuator limits is clipped, and counted
    _send(plant, 1, [[-1.0, 3.0, 99.0, 4.0]] * 3)
    u, mode = plant.control(2)
    np.testing.assert_array_equal(u, [0.0, 3.0, quad.MAX_THRUST, 4.0])
    assert mode == MODE_EXTERNAL and plant.clipped == 1
    with pytest.raises(ValueError, match="positive"):
        plant.control_timeout_s = -1.0


def test_a_geofence_breach_takes_over_and_settles_before_the_controller_gets_the_vehicle_back():
    plant, _ = _plant()
    settle = round(FENCE_SETTLE_S / DT)
    plant.control(0)
    for step in range(1, 200):
        _send(plant, step - 1, _ramp(3))  # a controller that never fails to answer
        breach = "heading out of the box" if step == 10 else None
        u, mode = plant.control(step, breach)
        want = MODE_FAILSAFE if 10 <= step < 10 + settle else MODE_EXTERNAL
        assert mode == want, step
        assert (u is None) == (want == MODE_FAILSAFE)
    assert plant.failsafes == 2 and plant.steps[MODE_FAILSAFE] == settle + 1


def _position(state):
    return quad.position_of(state)


def _in_box(position, margin=0.0):
    return bool(np.all(position >= BOX[:, 0] - margin) and np.all(position <= BOX[:, 1] + margin))


def test_the_quadrotor_plant_flies_plans_then_hovers_in_place_when_they_stop_and_resumes():
    """Lock-stepped: a controller that plans to keep the current thrusts answers every state for 1 s, then stops
    (the failsafe hovers where it began for 3 s of simulated time), then answers again."""
    stream = make_stream("quadrotor", dt=DT, seed=2)
    plant, _ = _plant()
    samples, modes = [], []
    answering = lambda k: k < 50 or k >= 250  # noqa: E731
    for k in range(300):
        u, mode = plant.control(stream.step, stream.breach())
        sample = stream.advance_under(u)
        samples.append(sample)
        modes.append(mode)
        if u is not None:
            np.testing.assert_array_equal(sample.control, u)  # the state carries the control it applies
        if answering(k):
            plan = np.repeat(sample.control[None], 10, axis=0)  # [0]: the applied one; then: keep it
            plan[1:] += 0.01 * np.sin(k)
            assert _send(plant, sample.step, plan, now=sample.t) is None
            if k > 0 and modes[-1] == MODE_EXTERNAL:
                np.testing.assert_allclose(sample.control, samples[-2].control + 0.01 * np.sin(k - 1))
    assert modes[0] == MODE_FAILSAFE and set(modes[1:51]) == {MODE_EXTERNAL}
    timeout = 50 + round(0.2 / DT)  # plans from state 49 on; stale after 10 steps
    assert modes[timeout] == MODE_FAILSAFE and set(modes[timeout:251]) == {MODE_FAILSAFE}
    begin = _position(samples[timeout].state)
    drift = [np.linalg.norm(_position(s.state) - begin) for s in samples[timeout:251]]
    assert max(drift) < 0.1, max(drift)  # hover in place
    speed = np.linalg.norm(samples[250].state[6:9])
    assert speed < 0.05, speed
    assert set(modes[251:]) == {MODE_EXTERNAL}  # fresh plans: external control again
    assert all(_in_box(_position(s.state)) for s in samples)


@pytest.mark.parametrize("controls", ["zero", "full", "random", "spin", "flip"])
def test_the_geofence_keeps_the_quadrotor_in_the_box_whatever_the_controller_sends(controls):
    """A controller answering every state with zero, full, random, yaw-spinning (two opposite rotors at full
    thrust) or flipping (one rotor at full) thrusts: the plant clips them, and its geofence hands the vehicle
    to the failsafe before it leaves the box (5 s of simulated time)."""
    rng = np.random.default_rng(0)
    stream = make_stream("quadrotor", dt=DT, seed=1)
    plant, _ = _plant()
    for _ in range(250):
        u, _ = plant.control(stream.step, stream.breach())
        sample = stream.advance_under(u)
        assert _in_box(_position(sample.state), margin=0.05), _position(sample.state)
        plan = {"zero": np.zeros((10, M)), "full": np.full((10, M), 20.0),
                "random": rng.uniform(-2.0, 10.0, (10, M)), "spin": np.tile([8.0, 0.0, 8.0, 0.0], (10, 1)),
                "flip": np.tile([8.0, 0.0, 0.0, 0.0], (10, 1))}[controls]
        plan[0] = sample.control
        _send(plant, sample.step, plan, now=sample.t)
    assert plant.failsafes >= 2 and plant.steps[MODE_EXTERNAL] > 0
    assert (plant.clipped > 0) == (controls in ("full", "random"))


def test_streams_without_controls_refuse_external_control():
    stream = make_stream("spring_mesh", seed=0)
    assert stream.control_limits is None and stream.breach() is None
    with pytest.raises(MetaSymError, match="no external control"):
        stream.advance_under(None)
    with pytest.raises(MetaSymError, match="limits"):
        ExternalPlant("quadrotor", DT, np.ones(M), np.zeros(M))
