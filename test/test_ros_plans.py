"""Control plans and live parameters over real DDS.

- The simulator's MPC plan reaches the predictor, whose predictions say they used it and carry
  the controls they were rolled out under; bad plans are dropped and counted, never crash it.
- Every node parameter is read-only or live: `set_parameters` (what `ros2 param set` calls)
  changes a live one at once, refuses a bad value with its reason, and refuses read-only ones.
"""

import math
import time

import numpy as np
import pytest
from _ros_env import ros_context, wait_for  # isolates DDS before any rclpy use

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

DEADLINE_S = 20.0


def _f64(values):
    from metasym_ros.common import f64

    return f64(values)


def test_predictions_follow_the_simulator_mpc_plan():
    from metasym_ros.msg import Prediction, SystemState

    from metasym_ros import qos
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    H = 12
    with ros_context() as (_, make, thread):
        make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "change_time": -1.0})
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": H})
        probe = make("probe")
        states, preds = {}, []
        probe.create_subscription(SystemState, qos.STATE_TOPIC,
                                  lambda m: states.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m),
                                  qos.STATE_QOS)
        probe.create_subscription(Prediction, qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        thread.start()
        wait_for(lambda: sum(p.control_source == "plan" for p in preds) >= 20, "predictions under the MPC plan",
                 DEADLINE_S)
        assert pred.live.plans.accepted > 0 and pred.live.plans.dropped == 0
        checked = 0
        for p in list(preds):
            assert p.control_source in ("plan", "held") and p.control_dim == 4 and len(p.controls) == H * 4
            state = states.get((p.header.stamp.sec, p.header.stamp.nanosec))
            if p.control_source != "plan" or state is None:
                continue
            controls = np.asarray(p.controls).reshape(H, 4)
            # entry 0 takes the state to the first predicted one: the control the state carries
            np.testing.assert_allclose(controls[0], np.asarray(state.control), atol=1e-12)
            assert p.plan_step <= state.step and np.all((controls >= 0) & (controls <= 100))
            checked += 1
        assert checked >= 10


def test_bad_plans_are_dropped_counted_and_predictions_go_on():
    from metasym_ros.msg import ControlPlan, Prediction, SystemState

    from metasym_ros import qos
    from metasym_ros.predictor_node import PredictorNode

    H, m = 6, 4
    with ros_context() as (_, make, thread):
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": H, "plan_max_age_s": 0.5})
        probe = make("probe")
        preds = []
        probe.create_subscription(Prediction, qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        state_pub = probe.create_publisher(SystemState, qos.STATE_TOPIC, qos.STATE_QOS)
        plan_pub = probe.create_publisher(ControlPlan, qos.PLAN_TOPIC, qos.PLAN_QOS)
        thread.start()
        wait_for(lambda: state_pub.get_subscription_count() > 0 and plan_pub.get_subscription_count() > 0,
                 "predictor discovery", DEADLINE_S)
        rng = np.random.default_rng(0)
        step = [0]

        def now() -> float:
            return probe.get_clock().now().nanoseconds * 1e-9

        def stamp(msg, t: float) -> None:
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)

        def send_state() -> tuple[int, float]:
            msg = SystemState(system="quadrotor", dt=0.02, step=step[0])
            t = now()
            stamp(msg, t)
            msg.state, msg.control = _f64(rng.normal(scale=0.1, size=12)), _f64(np.full(m, 3.6))
            state_pub.publish(msg)
            step[0] += 1
            return step[0] - 1, t

        def plan(start: int, t: float, controls, system="quadrotor", horizon=None, dt=0.05):
            msg = ControlPlan(system=system, step=start, dt=dt, control_dim=m)
            flat = np.asarray(controls, dtype=np.float64).ravel()
            msg.horizon = horizon if horizon is not None else flat.size // m
            stamp(msg, t)
            msg.controls = _f64(flat)
            return msg

        end = time.monotonic() + DEADLINE_S
        while len(preds) < 3:  # the first rollout pays the warm-up: keep streaming
            assert time.monotonic() < end, "timed out waiting for the first predictions"
            send_state()
            time.sleep(0.02)
        assert all(p.control_source == "held" for p in preds)  # no plan yet: the last control held

        good = np.full((10, m), 3.0)
        bad = {"system": plan(step[0], now(), good, system="spring_mesh"),
               "dimension": plan(step[0], now(), good, horizon=7),
               "nonfinite": plan(step[0], now(), np.where(good > 0, math.nan, 0.0)),
               "bad_dt": plan(step[0], now(), good, dt=0.0),
               "future": plan(step[0], now() + 30.0, good)}
        for msg in bad.values():
            plan_pub.publish(msg)
        wait_for(lambda: all(pred.live.plans.rejected[r] >= 1 for r in bad), lambda: f"bad plans counted: "
                 f"{dict(pred.live.plans.rejected)}", DEADLINE_S)
        assert pred.live.plans.accepted == 0

        # a good plan from the next state: predictions from that state on roll out under it
        base, t = step[0], now()
        plan_pub.publish(plan(base, t, good))
        wait_for(lambda: pred.live.plans.accepted == 1, "the good plan", DEADLINE_S)
        n = len(preds)
        end = time.monotonic() + DEADLINE_S
        while not any(p.control_source == "plan" for p in preds[n:]):
            assert time.monotonic() < end, "timed out waiting for a prediction under the plan"
            send_state()
            time.sleep(0.02)
        used = next(p for p in preds[n:] if p.control_source == "plan")
        assert used.plan_step == base
        controls = np.asarray(used.controls).reshape(H, m)
        np.testing.assert_allclose(controls[1:], 3.0)  # the plan; entry 0 is the state's own control
        np.testing.assert_allclose(controls[0], 3.6)
        # once the plan is older than plan_max_age_s the predictor holds the last control again
        time.sleep(0.6)
        n = len(preds)
        end = time.monotonic() + DEADLINE_S
        while not any(p.control_source == "held" for p in preds[n:]):
            assert time.monotonic() < end, "timed out waiting for a prediction after the plan went stale"
            send_state()
            time.sleep(0.02)
        assert pred.live.dropped_total >= len(bad)


def _set(probe, node_name: str, **values):
    """Set parameters through the node's parameter service, as `ros2 param set` does; the results."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = probe.create_client(SetParameters, f"{node_name}/set_parameters")
    wait_for(client.service_is_ready, f"{node_name}/set_parameters", DEADLINE_S)
    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    response = client.call(request, timeout_sec=DEADLINE_S)
    assert response is not None
    return response.results


def test_live_parameters_take_effect_and_bad_values_are_refused(tmp_path):
    from metasym_ros.learner_node import LearnerNode
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    with ros_context() as (ns, make, thread):
        sim = make(SimulatorNode, {"system": "quadrotor", "change_time": -1.0})
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": 8})
        learner = make(LearnerNode, {"system": "quadrotor", "checkpoint": "pretrained", "window": 50,
                                     "adapt_params": "value_bias", "params_dir": str(tmp_path)})
        probe = make("probe")
        thread.start()
        # read-only: refused, with the reason
        for node, name, value in (("predictor", "system", "quantum"), ("predictor", "checkpoint", "x.pt"),
                                  ("simulator", "seed", 3), ("learner", "params_dir", "/tmp")):
            (result,) = _set(probe, f"{ns}/{node}", **{name: value})
            assert not result.successful and "read-only" in result.reason, (name, result.reason)
        # live: at once
        (r1, r2, r3) = _set(probe, f"{ns}/predictor", horizon=5, max_rate_hz=20.0, plan_max_age_s=0.25)
        assert r1.successful and r2.successful and r3.successful
        assert pred.live.predictor.horizon == 5 and pred.live.max_rate_hz == pytest.approx(20.0)
        assert pred.live.plans.max_age_s == 0.25
        (r,) = _set(probe, f"{ns}/simulator", rate_hz=50.0)
        assert r.successful and sim._timer.timer_period_ns == 20_000_000
        results = _set(probe, f"{ns}/learner", lr=3.0, window=60, adapt_params="all", min_gain=0.1)
        assert all(r.successful for r in results), [r.reason for r in results]
        core = learner.live.learner
        assert (core.lr, core.buffer.capacity, core.params, core.min_gain) == (3.0, 60, "all", 0.1)
        # bad values: refused with a reason that names the parameter, nothing changes
        for node, name, value, words in (("predictor", "horizon", 0, "horizon"),
                                         ("predictor", "max_rate_hz", -1.0, "positive"),
                                         ("simulator", "rate_hz", 0.0, "rate_hz"),
                                         ("simulator", "change_param", "colour", "colour"),
                                         ("learner", "window", 3, "window"),
                                         ("learner", "adapt_params", "nonsense", "adapt_params"),
                                         ("learner", "min_gain", 1.5, "min_gain")):
            (result,) = _set(probe, f"{ns}/{node}", **{name: value})
            assert not result.successful and words in result.reason, (name, result.reason)
        assert pred.live.predictor.horizon == 5 and core.buffer.capacity == 60 and core.params == "all"
        assert sim.rate_hz == 50.0 and sim.change_param == "mass"
