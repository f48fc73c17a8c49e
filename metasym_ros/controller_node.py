"""`controller` node: MPPI on the MetaSym model flies the simulator (its `controller: external`), live.

An adapter: parameters in, `metasym_core.control.live_controller.LiveController` calls, ControlPlan
messages out. For each state it plans from the newest one (never a queue of them) with one period of
actuation delay: the plan starts at that state, and its ``controls[0]`` is the state's own ``control``
(what the plant already applies from it). Accepted adaptations of the learner and models it meta-trained
are applied as the predictor applies them. Topics, parameters and QoS: docs/nodes.md; each parameter's
description is also what `ros2 param describe /controller <name>` prints.
"""

from __future__ import annotations

import dataclasses

from rclpy.node import Node

from metasym_core.checkpoint import resolve_checkpoint
from metasym_core.control.live_controller import SYSTEMS, LiveController
from metasym_core.control.mppi import MPPIConfig
from metasym_core.control.reference import FigureEight
from metasym_core.online.plan import ControlPlan as Plan
from metasym_core.online.predictor import load_model
from metasym_ros.common import (
    adaptation_of,
    at_least,
    declare,
    declare_realtime_priority,
    log_model,
    model_update_of,
    one_of,
    plan_message,
    positive,
    run_node,
    state_fields,
)
from metasym_ros.msg import AdaptationStatus, ControlPlan, ModelCheckpoint, SystemState
from metasym_ros.qos import (
    ADAPTATION_QOS,
    ADAPTATION_TOPIC,
    MODEL_QOS,
    MODEL_TOPIC,
    PLAN_QOS,
    PLAN_TOPIC,
    STATE_QOS,
    STATE_TOPIC,
)
from metasym_ros.realtime import go_real_time

# The figure-8 reference's parameters: name -> (FigureEight field, description).
REFERENCE = {
    "reference_a": ("a", "Figure-8 half-width along x [m]"),
    "reference_b": ("b", "Figure-8 height along y [m] (it spans ±b/2)"),
    "reference_period_s": ("period_s", "Figure-8 lap time [s of simulated time]"),
    "reference_altitude": ("altitude", "Figure-8 altitude [m]"),
}


class ControllerNode(Node):
    """SystemState → ControlPlan (MPPI on MetaSym rollouts), plus the learner's adaptations and models."""

    def __init__(self, **kwargs) -> None:
        super().__init__("controller", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System flown: " + " | ".join(SYSTEMS),
                              check=one_of(SYSTEMS))
        checkpoint = resolve_checkpoint(declare(self, "checkpoint", "", "Model checkpoint; pretrained = the "
                                                "bundled model; empty = untrained model (warning)"), self.system)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]")
        threads = declare(self, "threads", 1, "torch CPU threads of the solves (0 = torch default)",
                          check=at_least(0))
        realtime_priority = declare_realtime_priority(self)
        seed = declare(self, "seed", 0, "Seed of the MPPI sampling")
        samples = declare(self, "samples", 512, "MPPI candidate sequences K per solve", check=at_least(2))
        horizon = declare(self, "horizon", 20, "MPPI horizon H [steps of the states' dt]", check=at_least(1))
        # live parameters: each takes effect from the next solve (`ros2 param set`), a bad value is refused
        noise_std = declare(self, "noise_std", 0.6, "MPPI sampling noise per thrust [N]", check=positive,
                            apply=lambda value: self.live.configure(noise_std=value))
        temperature = declare(self, "temperature", 0.1, "MPPI temperature λ (relative to the spread of the "
                              "costs)", check=positive, apply=lambda value: self.live.configure(temperature=value))
        default = FigureEight()
        reference = FigureEight(**{field: declare(self, name, float(getattr(default, field)), text, check=positive,
                                                  apply=self._set_reference(field))
                                   for name, (field, text) in REFERENCE.items()})
        report_period = declare(self, "report_period_s", 5.0, "Period of the solve-time report in the log [s]",
                                check=positive,
                                apply=lambda value: setattr(self._timer, "timer_period_ns", int(value * 1e9)))

        model, _, warning = load_model(self.system, checkpoint, device)
        log = self.get_logger()
        log_model(self, self.system, checkpoint, model, warning)
        config = MPPIConfig(samples=samples, horizon=horizon, noise_std=noise_std, temperature=temperature)
        self.live = LiveController(model, self.system, self._publish, reference=reference, config=config,
                                   threads=threads, seed=seed, device=device, model_path=checkpoint,
                                   info=log.info, warn=log.warning)
        self._pub = self.create_publisher(ControlPlan, PLAN_TOPIC, PLAN_QOS)
        self._subs = [self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS),
                      self.create_subscription(AdaptationStatus, ADAPTATION_TOPIC, self._on_adaptation,
                                               ADAPTATION_QOS),
                      self.create_subscription(ModelCheckpoint, MODEL_TOPIC, self._on_model, MODEL_QOS)]
        self._timer = self.create_timer(report_period, self._report)
        self.live.start()
        go_real_time(realtime_priority, log)
        log.info(f"controlling {self.system} with {checkpoint or 'an untrained model'} (context {model.context}): "
                 f"MPPI K={samples}, H={horizon}, noise {noise_std:g} N, λ {temperature:g}; figure-8 "
                 f"{2 * reference.a:g} x {reference.b:g} m at {reference.altitude:g} m, lap {reference.period_s:g} s")

    def _set_reference(self, field: str):
        """`apply` of one reference parameter: the figure-8 with that field changed, from the next solve."""
        return lambda value: self.live.configure(reference=dataclasses.replace(self.live.reference,
                                                                                **{field: float(value)}))

    # -- messages in -----------------------------------------------------------------------------
    def _on_state(self, msg: SystemState) -> None:
        self.live.on_state(*state_fields(msg), token=msg.header)

    def _on_adaptation(self, msg: AdaptationStatus) -> None:
        if msg.accepted:
            self.live.on_adaptation(msg.system, adaptation_of(msg))

    def _on_model(self, msg: ModelCheckpoint) -> None:
        self.live.on_model(msg.system, model_update_of(msg))

    # -- messages out ----------------------------------------------------------------------------
    def _publish(self, header, plan: Plan) -> None:
        """One plan (called by LiveController on its worker thread), stamped with the state it starts from."""
        out = plan_message(plan)
        out.header = header
        try:
            self._pub.publish(out)
        except Exception:  # noqa: BLE001 - context shut down (SIGINT) while solving: stop quietly
            if self.context.ok():
                raise

    def _report(self) -> None:
        r = self.live.report()
        self.get_logger().info(f"tracking error {r['tracking_rmse_m']:.3f} m RMSE; "
                               f"{r['solves']} solves, {r['solve_ms_p50']:.1f}/{r['solve_ms_p99']:.1f} ms p50/p99; "
                               f"{r['plans']} plans, {r['skipped']} states skipped (newest only), {r['dropped']} "
                               f"dropped, {r['new_contexts']} new contexts; local parameters v{r['version']}")

    def destroy_node(self) -> None:
        if hasattr(self, "live"):  # else the constructor failed (a bad parameter): nothing started
            self.live.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-controller`."""
    return run_node(ControllerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
