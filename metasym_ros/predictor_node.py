"""`predictor` node: multi-step predictions of the streamed system, live.

An adapter: parameters in, `metasym_core.online.live_predictor.LivePredictor` calls, messages
out. Its topics, services, parameters and QoS are documented in docs/nodes.md; each parameter's
description is also what `ros2 param describe /predictor <name>` prints.
"""

from __future__ import annotations

import math
import time

from nav_msgs.msg import Path
from rclpy.node import Node

from metasym_core.checkpoint import resolve_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.online.live_predictor import LivePredictor
from metasym_core.online.predictor import PredictionResult, load_model
from metasym_core.online.streams import STREAMS
from metasym_core.systems.quadrotor import positions_and_quaternions
from metasym_ros.common import (
    adaptation_of,
    at_least,
    declare,
    declare_realtime_priority,
    f64,
    log_model,
    model_update_of,
    one_of,
    path_message,
    plan_fields,
    positive,
    run_node,
    state_fields,
)
from metasym_ros.msg import AdaptationStatus, ControlPlan, ModelCheckpoint, Prediction, PredictionMetrics, SystemState
from metasym_ros.qos import (
    ADAPTATION_QOS,
    ADAPTATION_TOPIC,
    METRICS_QOS,
    METRICS_TOPIC,
    MODEL_QOS,
    MODEL_TOPIC,
    PATH_QOS,
    PATH_TOPIC,
    PLAN_QOS,
    PLAN_TOPIC,
    PREDICTION_QOS,
    PREDICTION_TOPIC,
    STATE_QOS,
    STATE_TOPIC,
)
from metasym_ros.realtime import go_real_time
from metasym_ros.srv import RolloutBatch


class PredictorNode(Node):
    """SystemState (+ ControlPlan) → Prediction, plus metrics, live swaps and a batched rollout service."""

    def __init__(self, **kwargs) -> None:
        super().__init__("predictor", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              check=one_of(STREAMS))
        checkpoint = resolve_checkpoint(declare(self, "checkpoint", "pretrained", "Model checkpoint; pretrained = "
                                                "the bundled model; empty = none: no predictions until a learner "
                                                "sends a trained one"), self.system)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]")
        threads = declare(self, "threads", 1, "torch CPU threads of the per-state prediction (0 = torch default)")
        realtime_priority = declare_realtime_priority(self)
        # live parameters: each takes effect at once (`ros2 param set`), a bad value is refused
        horizon = declare(self, "horizon", 30, "Predicted steps H", check=at_least(1),
                          apply=lambda value: setattr(self.live, "horizon", value))
        max_age_s = declare(self, "max_age_s", 1.0, "States older than this [s] are stale and dropped",
                            check=positive, apply=lambda value: self.live.set_max_age(value))
        max_rate_hz = declare(self, "max_rate_hz", 200.0, "Most predictions per second (flood guard)",
                              check=positive, apply=lambda value: setattr(self.live, "max_rate_hz", value))
        plan_max_age_s = declare(self, "plan_max_age_s", 0.5, "A control plan more than this [s] older than "
                                 "the state predicted from is stale (the last control is held instead)",
                                 check=positive, apply=lambda value: self.live.set_plan_max_age(value))
        metrics_period = declare(self, "metrics_period_s", 1.0, "Period of the metrics report [s]", check=positive,
                                 apply=lambda value: setattr(self._metrics_timer, "timer_period_ns", int(value * 1e9)))
        path_rate_hz = declare(self, "path_rate_hz", 10.0, "Most predicted paths per second (0 = none)",
                               check=at_least(0.0), apply=self._set_path_rate)
        batch_threads = declare(self, "batch_threads", 1, "torch CPU threads of the rollout_batch service "
                                "(0 = torch default)", check=at_least(0),
                                apply=lambda value: setattr(self.live, "batch_threads", int(value)))
        self.frame_id = declare(self, "frame_id", "world", "Frame of the predicted path",
                                apply=lambda value: setattr(self, "frame_id", value))
        self._set_path_rate(path_rate_hz)
        self._last_path = -math.inf

        model, _, warning = load_model(self.system, checkpoint, device)
        log = self.get_logger()
        log_model(self, self.system, checkpoint, model, warning)
        self.live = LivePredictor(model, self.system, self._publish, horizon=horizon, max_age_s=max_age_s,
                                  max_rate_hz=max_rate_hz, plan_max_age_s=plan_max_age_s, threads=threads,
                                  batch_threads=batch_threads, device=device, model_path=checkpoint,
                                  trained=bool(checkpoint), info=log.info, warn=log.warning)
        self._pub = self.create_publisher(Prediction, PREDICTION_TOPIC, PREDICTION_QOS)
        self._path_pub = (self.create_publisher(Path, PATH_TOPIC, PATH_QOS) if self.system == "quadrotor"
                          else None)
        self._metrics_pub = self.create_publisher(PredictionMetrics, METRICS_TOPIC, METRICS_QOS)
        self._subs = [self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS),
                      self.create_subscription(ControlPlan, PLAN_TOPIC, self._on_plan, PLAN_QOS),
                      self.create_subscription(AdaptationStatus, ADAPTATION_TOPIC, self._on_adaptation,
                                               ADAPTATION_QOS),
                      self.create_subscription(ModelCheckpoint, MODEL_TOPIC, self._on_model, MODEL_QOS)]
        self._srv = self.create_service(RolloutBatch, "~/rollout_batch", self._on_rollout_batch)
        self._metrics_timer = self.create_timer(metrics_period, self._publish_metrics)
        self.live.start()
        log.info(f"predicting {self.system} with {checkpoint or 'no model yet (waiting for one)'}: context "
                 f"{self.live.predictor.context}, horizon {horizon}, device {self.live.predictor.device}")
        go_real_time(realtime_priority, log)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _set_path_rate(self, value: float) -> None:
        self._path_period = 1.0 / value if value > 0 else math.inf

    # -- messages in -----------------------------------------------------------------------------
    def _on_state(self, msg: SystemState) -> None:
        self.live.on_state(*state_fields(msg), now=self._now(), token=msg.header)

    def _on_plan(self, msg: ControlPlan) -> None:
        self.live.on_plan(*plan_fields(msg), self._now())

    def _on_adaptation(self, msg: AdaptationStatus) -> None:
        if msg.accepted:
            self.live.on_adaptation(msg.system, adaptation_of(msg))

    def _on_model(self, msg: ModelCheckpoint) -> None:
        self.live.on_model(msg.system, model_update_of(msg))

    def _on_rollout_batch(self, request: RolloutBatch.Request,
                          response: RolloutBatch.Response) -> RolloutBatch.Response:
        t0 = time.perf_counter()
        try:
            states, version = self.live.rollout_batch(
                request.context_len, request.candidates, request.horizon, request.state_dim, request.control_dim,
                request.context_states, request.context_controls, request.context_dt, request.candidate_controls,
                request.dt)
        except (MetaSymError, RuntimeError) as exc:
            response.success, response.message = False, str(exc)
        else:
            response.success, response.message, response.params_version = True, "ok", version
            response.candidates, response.horizon, response.state_dim = states.shape
            response.states = f64(states)
        response.latency_ms = 1e3 * (time.perf_counter() - t0)
        return response

    # -- messages out ----------------------------------------------------------------------------
    def _publish(self, header, result: PredictionResult, source: str, plan_step: int) -> None:
        """One prediction (called by LivePredictor on the thread that predicted)."""
        out = Prediction(system=self.system, horizon=result.states.shape[0], state_dim=result.states.shape[1],
                         params_version=result.version, control_source=source,
                         control_dim=result.controls.shape[1], plan_step=plan_step)
        out.header = header
        out.times, out.states, out.controls = f64(result.times), f64(result.states), f64(result.controls)
        try:
            self._pub.publish(out)
            now = time.monotonic()
            if self._path_pub is not None and now - self._last_path >= self._path_period:
                self._last_path = now
                self._path_pub.publish(path_message(header.stamp, self.frame_id,
                                                    *positions_and_quaternions(result.states), result.times))
        except Exception:  # noqa: BLE001 - context shut down (SIGINT) while predicting: stop quietly
            if self.context.ok():
                raise

    def _publish_metrics(self) -> None:
        report = self.live.report()
        msg = PredictionMetrics(system=self.system, realised_mse=report["realised_mse"],
                                realised_mse_step1=report["realised_mse_step1"], model_mse=report["model_mse"],
                                params_version=report["params_version"], dropped_messages=report["dropped"],
                                latency_ms=report["latency_ms"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._metrics_pub.publish(msg)

    def destroy_node(self) -> None:
        if hasattr(self, "live"):  # else the constructor failed (a bad parameter): nothing started
            self.live.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-predictor`."""
    return run_node(PredictorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
