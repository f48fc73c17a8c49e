"""The closed loop over real DDS: the simulator as a plant (`controller: external`) and the controller node.

- A test publisher's plans fly the plant; bad plans are dropped and counted; late plans leave it in the
  failsafe, hovering where it began, in the box; fresh plans give the controller the vehicle back.
- The controller node (a subprocess) flies the plant, and killed mid-flight leaves it hovering.
Assertions count simulated steps (the states' `step`), never wall time.
"""

import math
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from _ros_env import ros_context, wait_for  # isolates DDS before any rclpy use

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

DEADLINE_S = 30.0
M = 4


def _position(msg):
    from metasym_core.systems import quadrotor as quad

    return quad.position_of(np.asarray(msg.state))


def _in_box(msg, margin=0.1) -> bool:
    from metasym_core.systems import quadrotor as quad

    box, p = np.array(quad.DEFAULT_BOX), _position(msg)
    return bool(np.all(p >= box[:, 0] - margin) and np.all(p <= box[:, 1] + margin))


def _plan(step, stamp, controls, system="quadrotor", dt=0.02, horizon=None):
    from metasym_ros.msg import ControlPlan

    from metasym_ros.common import f64

    controls = np.asarray(controls, dtype=np.float64)
    msg = ControlPlan(system=system, step=step, dt=dt, control_dim=M,
                      horizon=controls.size // M if horizon is None else horizon)
    msg.header.stamp = stamp
    msg.controls = f64(controls.ravel())
    return msg


def _at_rest(window) -> bool:
    """The states of `window` hover: within 5 cm of one another, slower than 0.1 m/s."""
    return (max(float(np.linalg.norm(_position(s) - _position(window[0]))) for s in window) < 0.05
            and max(float(np.linalg.norm(np.asarray(s.state)[6:9])) for s in window) < 0.1)


def _hovering(states, since: int, steps: int = 100) -> None:
    """The `steps` states from step `since` on (the failsafe began in steady flight) stay in the box, within
    0.15 m of the first, and end at rest."""
    flown = [s for s in states if s.step >= since][:steps]
    assert len(flown) == steps
    assert all(_in_box(s, margin=0.0) for s in flown)
    drift = max(float(np.linalg.norm(_position(s) - _position(flown[0]))) for s in flown)
    assert drift < 0.15, drift
    assert _at_rest(flown[steps // 2:])


@pytest.mark.slow
def test_the_plant_flies_plans_drops_bad_ones_and_hovers_when_they_come_late():
    from metasym_ros.msg import ControlPlan, SystemState
    from rclpy.parameter import Parameter

    from metasym_core.online.plant import MODE_EXTERNAL, MODE_FAILSAFE
    from metasym_ros import qos
    from metasym_ros.simulator_node import SimulatorNode

    with ros_context() as (_, make, thread):
        sim = make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "seed": 1, "change_time": -1.0,
                                   "controller": "external"})
        probe = make("probe")
        states, answer = [], {"lag": 0}
        plan_pub = probe.create_publisher(ControlPlan, qos.PLAN_TOPIC, qos.PLAN_QOS)

        def on_state(msg):  # a controller: keep the thrusts the plant applies, answered `lag` steps late
            states.append(msg)
            lag = answer["lag"]
            if lag is not None and msg.step >= lag:
                plan_pub.publish(_plan(msg.step - lag, msg.header.stamp, [msg.control] * 30))

        probe.create_subscription(SystemState, qos.STATE_TOPIC, on_state, qos.STATE_QOS)
        thread.start()
        plant = sim.plant
        wait_for(lambda: plant.steps[MODE_EXTERNAL] >= 50, "external control", DEADLINE_S)
        assert plant.steps[MODE_FAILSAFE] >= 1  # it hovered until the first plan
        assert plant.dropped == 0
        # bad plans: dropped and counted, the answering controller keeps the vehicle
        last = states[-1]
        future = type(last.header.stamp)(sec=last.header.stamp.sec + 60)
        bad = {"system": _plan(last.step, last.header.stamp, np.full((5, M), 3.6), system="spring_mesh"),
               "dimension": _plan(last.step, last.header.stamp, np.full((5, M), 3.6), horizon=7),
               "nonfinite": _plan(last.step, last.header.stamp, np.full((5, M), math.nan)),
               "bad_dt": _plan(last.step, last.header.stamp, np.full((5, M), 3.6), dt=0.0),
               "future": _plan(last.step, future, np.full((5, M), 3.6)),
               "ahead": _plan(last.step + 10_000, last.header.stamp, np.full((5, M), 3.6))}
        for reason, msg in bad.items():  # one at a time: a burst would overrun the topic's keep-last 5
            plan_pub.publish(msg)
            wait_for(lambda r=reason: plant.plans.rejected[r] == 1,
                     lambda: f"bad plans counted: {dict(plant.plans.rejected)}", DEADLINE_S)
        # late plans: answered 15 steps (0.3 s) late, past control_timeout_s (0.2 s): the failsafe hovers
        answer["lag"] = 15
        wait_for(lambda: plant.mode == MODE_FAILSAFE, "the failsafe", DEADLINE_S)
        assert "timeout" in plant.reason
        since = states[-1].step
        wait_for(lambda: states[-1].step >= since + 100, "2 s of simulated hover", DEADLINE_S)
        assert plant.mode == MODE_FAILSAFE
        _hovering(states, since)
        # control_timeout_s is live: 0.4 s lets the late plans fly again
        assert sim.set_parameters([Parameter("control_timeout_s", value=0.4)])[0].successful
        assert not sim.set_parameters([Parameter("control_timeout_s", value=0.0)])[0].successful
        wait_for(lambda: plant.mode == MODE_EXTERNAL, "external control of the late plans", DEADLINE_S)
        failsafes = plant.failsafes
        answer["lag"] = 0
        n = len(states)
        wait_for(lambda: len(states) >= n + 50, "more states", DEADLINE_S)
        assert plant.failsafes == failsafes and plant.mode == MODE_EXTERNAL
        assert all(_in_box(s) and _position(s)[2] > 0 for s in states)


@pytest.mark.slow
def test_the_controller_node_flies_the_plant_and_a_killed_one_leaves_it_hovering():
    from metasym_ros.msg import ControlPlan, SystemState

    from metasym_core.online.plant import MODE_EXTERNAL, MODE_FAILSAFE
    from metasym_ros import qos
    from metasym_ros.simulator_node import SimulatorNode

    with ros_context() as (ns, make, thread), tempfile.TemporaryFile("w+") as log:
        sim = make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "seed": 0, "change_time": -1.0,
                                   "controller": "external"})
        probe = make("probe")
        states, plans = [], []
        probe.create_subscription(SystemState, qos.STATE_TOPIC, states.append, qos.STATE_QOS)
        probe.create_subscription(ControlPlan, qos.PLAN_TOPIC, plans.append, qos.PLAN_QOS)
        thread.start()
        cmd = [sys.executable, "-m", "metasym_ros.start", "metasym_ros.controller_node", "--ros-args",
               "-r", f"__ns:={ns}", "-p", "checkpoint:=pretrained", "-p", "device:=cpu", "-p", "samples:=64",
               "-p", "horizon:=15"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            plant = sim.plant
            # 3 s of simulated flight on its plans (the bundled model flies MPPI badly: the geofence takes over
            # often, so only some of those steps are the controller's)
            wait_for(lambda: (plant.plans.accepted >= 150 and plant.steps[MODE_EXTERNAL] >= 10)
                     or proc.poll() is not None, lambda: f"the controller node flying the plant: {plant.report()}", 60)
            assert proc.poll() is None, "controller exited early"
            assert plant.dropped == 0
            by_step = {s.step: s for s in states}
            for plan in plans[-20:]:  # each plan starts at a state, with the control that state applies
                if plan.step in by_step:
                    np.testing.assert_array_equal(np.asarray(plan.controls)[:M], by_step[plan.step].control)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            # the failsafe, for the timeout (once a geofence breach the last plans flew into has settled)
            wait_for(lambda: plant.mode == MODE_FAILSAFE and "timeout" in plant.reason, "the failsafe", DEADLINE_S)
            external, since = plant.steps[MODE_EXTERNAL], states[-1].step
            # it may be on its way back to where the failsafe began (a breach at speed): at rest within 6 s
            wait_for(lambda: _at_rest(states[-25:]) or states[-1].step > since + 300, "a hover", DEADLINE_S)
            assert _at_rest(states[-25:]), [_position(s) for s in states[-25::6]]
            assert plant.mode == MODE_FAILSAFE and plant.steps[MODE_EXTERNAL] == external
            assert all(_in_box(s) and _position(s)[2] > 0 for s in states), \
                (np.min([_position(s) for s in states], 0), np.max([_position(s) for s in states], 0))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            print(log.read()[-3000:])


def test_nodes_refuse_a_closed_loop_they_cannot_fly():
    from rclpy.parameter import Parameter

    from metasym_core.errors import MetaSymError
    from metasym_ros.controller_node import ControllerNode
    from metasym_ros.simulator_node import SimulatorNode

    with ros_context() as (_, make, _thread):
        sim = make(SimulatorNode, {"system": "quadrotor", "change_time": -1.0})  # controller mpc: no plant
        assert sim.plant is None and sim.set_parameters([Parameter("control_timeout_s", value=0.5)])[0].successful
        with pytest.raises(MetaSymError, match="no external control"):
            make(SimulatorNode, {"system": "spring_mesh", "change_param": "k", "controller": "external"})
        with pytest.raises(MetaSymError, match="controller"):
            make(SimulatorNode, {"system": "quadrotor", "controller": "mppi"})
        with pytest.raises(MetaSymError, match="system"):
            make(ControllerNode, {"system": "spring_mesh"})
        with pytest.raises(MetaSymError, match="samples"):
            make(ControllerNode, {"system": "quadrotor", "samples": 1})
