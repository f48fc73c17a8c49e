"""`simulator` node: streams a simulated system as SystemState messages.

An adapter: parameters in, `metasym_core.online` streams and plant, messages out. Its parameters
(declared up front, validated; `ros: simulator:` in config/<system>.yaml; `realtime_priority`: a
robot's state source runs real-time, docs/decisions.md, "The latency tail was the state source") are
documented in docs/nodes.md, with each description what `ros2 param describe /simulator <name>` prints.

Publishes ``metasym/state`` (QoS: metasym_ros.qos.STATE_QOS) and, for a system flown by a
controller (controller mpc: the quadrotor's Crocoddyl MPC), that controller's plan on
``metasym/control_plan`` (ControlPlan, QoS PLAN_QOS) before each state: the plan the state's
control comes from, with the state's stamp and step. With controller external it subscribes to
that topic instead and applies the plans with one period of delay (`metasym_core.online.plant`:
modes external / hold / failsafe, each change logged once, counters every 5 s). Header stamps come
from the node clock at publish time; `dt` and `step` carry the simulated time, so
simulated time runs at rate_hz·dt times wall time. Service ``~/change_parameter``
(ChangeParameter) changes a parameter at any time.
"""

from __future__ import annotations

import math

from rclpy.node import Node

from metasym_core.errors import MetaSymError
from metasym_core.online.plant import ExternalPlant, check_timeout
from metasym_core.online.streams import STREAMS, make_stream
from metasym_ros.common import (
    at_least,
    declare,
    declare_realtime_priority,
    f64,
    one_of,
    plan_fields,
    plan_message,
    positive,
    run_node,
    seconds_stamp,
    stamp_seconds,
)
from metasym_ros.msg import ControlPlan, SystemState
from metasym_ros.qos import PLAN_QOS, PLAN_TOPIC, STATE_QOS, STATE_TOPIC
from metasym_ros.realtime import go_real_time
from metasym_ros.srv import ChangeParameter

CONTROLLERS = ("mpc", "external")
REPORT_PERIOD_S = 5.0  # [s] between the plant's counters in the log (controller external)


def _rate(value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 10_000):
        raise ValueError(f"must be in (0, 10000], got {value!r}")


class SimulatorNode(Node):
    """Timer-driven publisher of one simulated system."""

    def __init__(self, **kwargs) -> None:
        super().__init__("simulator", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              check=one_of(STREAMS))
        dt = declare(self, "dt", 0.02, "Simulated time step per message [s]", check=positive)
        seed = declare(self, "seed", 0, "Random seed of the simulation")
        self.wait_for_subscribers = declare(self, "wait_for_subscribers", 0,
                                            "Start the simulated clock only once this many subscribers listen "
                                            "(0: at once)", check=at_least(0))
        # live parameters: each takes effect at once (`ros2 param set`), a bad value is refused
        self.rate_hz = declare(self, "rate_hz", 100.0, "Publish rate [Hz] (wall clock)", apply=self._set_rate,
                               check=_rate)
        self.change_param = declare(self, "change_param", "mass", "Parameter changed on schedule",
                                    apply=lambda value: setattr(self, "change_param", value),
                                    check=self._check_change_param)
        self.change_scale = declare(self, "change_scale", 1.3, "Factor on the nominal value at change_time",
                                    apply=lambda value: setattr(self, "change_scale", value), check=positive)
        self.change_time = declare(self, "change_time", 10.0,
                                   "Simulated time [s] of the scheduled change; negative = never",
                                   apply=self._set_change_time)
        self.frame_id = declare(self, "frame_id", "world", "Header frame of the states",
                                apply=lambda value: setattr(self, "frame_id", value))
        controller = declare(self, "controller", "mpc", "Who flies the system: mpc = the simulator's own controller "
                             "| external = the newest ControlPlan on metasym/control_plan, with a failsafe hover",
                             check=one_of(CONTROLLERS))
        timeout = declare(self, "control_timeout_s", 0.2, "controller external: a plan older than this [s of "
                          "simulated time] hands the vehicle to the failsafe hover", check=check_timeout,
                          apply=self._set_timeout)
        realtime_priority = declare_realtime_priority(self)

        self.stream = make_stream(self.system, dt=dt, seed=seed)
        self.plant: ExternalPlant | None = None
        if self.change_time >= 0 and self.change_param not in self.stream.param_names:
            self.stream.close()
            raise MetaSymError(f"parameter change_param must be one of {', '.join(self.stream.param_names)}, "
                               f"got {self.change_param!r}")
        if controller == "external":
            if self.stream.control_limits is None:
                self.stream.close()
                raise MetaSymError(f"parameter controller: the {self.system} simulator takes no external control; "
                                   "use mpc")
            log = self.get_logger()
            self.plant = ExternalPlant(self.system, dt, *self.stream.control_limits, timeout, info=log.info,
                                       warn=log.warning)
        self._changed = False
        self.published = 0
        self._pub = self.create_publisher(SystemState, STATE_TOPIC, STATE_QOS)
        if self.plant is None:
            self._plan_pub = self.create_publisher(ControlPlan, PLAN_TOPIC, PLAN_QOS)
        else:
            self._plan_sub = self.create_subscription(ControlPlan, PLAN_TOPIC, self._on_plan, PLAN_QOS)
            self._report_timer = self.create_timer(REPORT_PERIOD_S, self._report)
        self._srv = self.create_service(ChangeParameter, "~/change_parameter", self._on_change_parameter)
        self._timer = self.create_timer(1.0 / self.rate_hz, self._on_timer)
        self.get_logger().info(f"simulating {self.system} at {self.rate_hz:g} Hz, dt={dt:g} s, flown by "
                               + ("its own controller" if self.plant is None else
                                  f"external plans (control_timeout_s {timeout:g} s, failsafe hover)")
                               + "; change " + (f"{self.change_param} x{self.change_scale:g} at "
                                                f"t={self.change_time:g} s" if self.change_time >= 0 else "never"))
        go_real_time(realtime_priority, self.get_logger())

    def _check_change_param(self, name: str) -> None:
        stream = getattr(self, "stream", None)  # at start: checked against the stream once it exists
        if stream is not None and name not in stream.param_names:
            raise ValueError(f"must be one of {', '.join(stream.param_names)}, got {name!r}")

    def _set_rate(self, value: float) -> None:
        self.rate_hz = value
        self._timer.timer_period_ns = int(1e9 / value)

    def _set_timeout(self, value: float) -> None:
        if self.plant is not None:  # with controller mpc the value waits unused
            self.plant.control_timeout_s = value

    def _set_change_time(self, value: float) -> None:
        self.change_time, self._changed = value, False  # a new schedule: the change happens (again) then

    def _on_timer(self) -> None:
        if self.published == 0 and self._pub.get_subscription_count() < self.wait_for_subscribers:
            return  # states sent before the listeners matched would be lost to them
        try:
            if self.plant is None:
                sample = self.stream.advance()
                plan = self.stream.plan()  # the plan this sample's control came from
            else:  # the newest plan's entry for this step, or the failsafe (None)
                control, _ = self.plant.control(self.stream.step, self.stream.breach())
                sample, plan = self.stream.advance_under(control), None
        except MetaSymError as exc:  # a diverged simulation: say so, stop publishing, stay up
            self.get_logger().error(f"simulation stopped: {exc}")
            self._timer.cancel()
            return
        if not self._changed and 0 <= self.change_time <= sample.t:
            self._changed = True
            self._set(self.change_param, self.change_scale, "schedule")
        msg = SystemState(system=self.system, state_names=self.stream.state_names, dt=float(sample.dt),
                          step=sample.step, param_names=self.stream.param_names)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        msg.state = f64(sample.state)
        msg.control = f64(sample.control)
        msg.param_values = f64(self.stream.param_values)
        if plan is not None:  # first: a predictor that gets the state has its plan already
            self._plan_pub.publish(self._plan_msg(plan, sample, msg.header))
        self._pub.publish(msg)
        self.published += 1

    def _plan_msg(self, plan, sample, header) -> ControlPlan:
        """The stream's plan (steps of the stream; its stamp is the state's of `plan.step`)."""
        out = plan_message(plan)
        out.header.frame_id = header.frame_id
        # a plan solved from this sample carries its stamp; an older one (re-solved every few steps)
        # the stamp of its start, back by the simulated steps since then at this node's publish rate
        seconds_stamp(out.header.stamp, stamp_seconds(header.stamp) - (sample.step - plan.step) / self.rate_hz)
        return out

    def _on_plan(self, msg: ControlPlan) -> None:
        """An external controller's plan (controller external): kept, or dropped and counted by the plant."""
        self.plant.on_plan(*plan_fields(msg), self.get_clock().now().nanoseconds * 1e-9)

    def _report(self) -> None:
        report = self.plant.report()
        self.get_logger().info(f"plant: {report['mode']} ({report['reason']}); steps {report['steps']}, failsafe "
                               f"take-overs {report['failsafes']}, plans {report['plans']} kept / dropped "
                               f"{report['dropped']}, clipped {report['clipped']}")

    def _set(self, name: str, scale: float, why: str) -> float:
        value = self.stream.set_param(name, scale)
        self.get_logger().info(f"{why}: {self.system} {name} = {scale:g} x nominal = {value:g}")
        return value

    def _on_change_parameter(self, request: ChangeParameter.Request,
                             response: ChangeParameter.Response) -> ChangeParameter.Response:
        try:
            response.new_value = float(self._set(request.name, request.scale, "service"))
            response.success, response.message = True, "ok"
        except MetaSymError as exc:
            response.success, response.message = False, str(exc)
        return response

    def destroy_node(self) -> None:
        if hasattr(self, "stream"):
            self.stream.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-simulator`."""
    return run_node(SimulatorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
