"""`learner` node: online few-shot adaptation of the streamed system.

Parameters (declared up front, validated; see `ros: learner:` in config/<system>.yaml):
  system        quadrotor | spring_mesh | quantum (read only)
  checkpoint    meta-trained model; empty = untrained model from the config (warning)
  device        auto (cuda if present) | cpu | cuda[:N]
  window        most recent samples used per adaptation
  inner_steps, lr, holdout   the adaptation (default: the config's `training:` values)
  period_s      adapt at least this often [s]; <= 0: only when the error rises
  error_rise    adapt early when the realised error exceeds this factor × its baseline
  min_interval_s, min_gain   no more often than this; accept only this relative gain
  params_dir    where accepted parameter files go (empty: a fresh temporary folder)
  max_age_s     states older than this are stale and dropped
  threads       torch CPU threads of the adaptation (default 1: small models, latency-bound)

Topics (QoS in metasym_ros.qos):
  sub ``metasym/state`` (SystemState): buffered (the same validation as the predictor)
  sub ``metasym/metrics`` (PredictionMetrics): the predictor's realised error, the trigger
  pub ``metasym/adaptation`` (AdaptationStatus, transient local): every attempt; an
      accepted one names the file of the new local parameters (version + 1)
Service ``~/adapt_now`` (std_srvs/Trigger): adapt at once on the buffered window.

Adaptations run on a worker thread, never on the executor thread, so the node
keeps buffering states while one runs; `metasym_core.online.learner` holds the
policy (trigger, validate against φ₀ and the parameters in force, version).
"""

from __future__ import annotations

import math
import tempfile
import threading

import numpy as np
import torch
from rclpy.node import Node
from std_srvs.srv import Trigger

from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt
from metasym_core.online.learner import AdaptationOutcome, OnlineLearner
from metasym_core.online.predictor import load_model
from metasym_core.online.streams import STREAMS
from metasym_ros.common import declare, run_node, stamp_seconds
from metasym_ros.msg import AdaptationStatus, PredictionMetrics, SystemState
from metasym_ros.qos import ADAPTATION_QOS, ADAPTATION_TOPIC, METRICS_QOS, METRICS_TOPIC, STATE_QOS, STATE_TOPIC

WARN_EVERY_S = 2.0


class LearnerNode(Node):
    """Buffer states, adapt φ off the executor thread, publish accepted versions."""

    def __init__(self, **kwargs) -> None:
        super().__init__("learner", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              read_only=True)
        checkpoint = declare(self, "checkpoint", "", "Meta-trained model; empty = untrained (warning)",
                             read_only=True)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]", read_only=True)
        if self.system not in STREAMS:
            raise MetaSymError(f"parameter system must be one of {', '.join(STREAMS)}, got {self.system!r}")
        model, cfg, warning = load_model(self.system, checkpoint, device)
        if warning:
            self.get_logger().warning(warning)
        training = cfg.get("training") or {}
        window = declare(self, "window", 200, "Most recent samples used per adaptation", read_only=True)
        inner_steps = declare(self, "inner_steps", int(training.get("inner_steps", 10)), "Adaptation SGD steps K")
        lr = declare(self, "lr", float(training.get("inner_lr", 0.1)), "Adaptation SGD rate")
        holdout = declare(self, "holdout", 0.25, "Tail fraction of the window that scores an adaptation")
        period_s = declare(self, "period_s", 5.0, "Adapt at least this often [s]; <= 0: only on error rise")
        error_rise = declare(self, "error_rise", 2.0, "Adapt early when the realised error rises by this factor")
        min_interval_s = declare(self, "min_interval_s", 0.5, "Never adapt more often than this [s]")
        min_gain = declare(self, "min_gain", 0.01, "Accept only this relative held-out improvement")
        params_dir = declare(self, "params_dir", "", "Folder of accepted parameter files (empty: temporary)",
                             read_only=True)
        self.max_age_s = declare(self, "max_age_s", 1.0, "States older than this [s] are stale and dropped")
        threads = declare(self, "threads", 1, "torch CPU threads of the adaptation (0 = torch default)",
                          read_only=True)
        if not (math.isfinite(self.max_age_s) and self.max_age_s > 0):
            raise MetaSymError(f"parameter max_age_s must be positive, got {self.max_age_s!r}")
        if threads > 0:
            torch.set_num_threads(threads)
        self._tmp = None if params_dir else tempfile.TemporaryDirectory(prefix="metasym_learner_")
        self.learner = OnlineLearner(model, self.system, params_dir or self._tmp.name, window=window,
                                     inner_steps=inner_steps, lr=lr, holdout=holdout, period_s=period_s,
                                     error_rise=error_rise, min_interval_s=min_interval_s, min_gain=min_gain)
        self.outcomes: list[AdaptationOutcome] = []
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._force = False
        self._worker: threading.Thread | None = None

        self._pub = self.create_publisher(AdaptationStatus, ADAPTATION_TOPIC, ADAPTATION_QOS)
        self._state_sub = self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS)
        self._metrics_sub = self.create_subscription(PredictionMetrics, METRICS_TOPIC, self._on_metrics,
                                                     METRICS_QOS)
        self._srv = self.create_service(Trigger, "~/adapt_now", self._on_adapt_now)
        self._timer = self.create_timer(0.1, self._tick)
        # The first adaptation pays ~1 s of lazy initialisation (CPU the predictor needs too): pay it
        # now, before the window fills, not at the first (possibly post-change) adaptation.
        self._busy.set()
        self._worker = threading.Thread(target=self._warm_up, name="metasym-learner", daemon=True)
        self._worker.start()
        self.get_logger().info(f"learning {self.system}: window {window}, K={inner_steps}, lr {lr}, "
                               f"period {period_s} s, error rise ×{error_rise}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: SystemState) -> None:
        if msg.system != self.system:
            return
        state = np.frombuffer(msg.state, dtype=np.float64)
        control = np.frombuffer(msg.control, dtype=np.float64)
        with self._lock:
            reason = self.learner.push(stamp_seconds(msg.header.stamp), state, control, msg.dt, now=self._now())
        if reason is not None:
            self.get_logger().warning(f"dropped state ({reason}); {self.learner.buffer.dropped} so far",
                                      throttle_duration_sec=WARN_EVERY_S)

    def _on_metrics(self, msg: PredictionMetrics) -> None:
        if msg.system == self.system:
            with self._lock:
                self.learner.observe_error(msg.realised_mse)

    def _on_adapt_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            full = self.learner.buffer.full
            self._force = full
        response.success = full
        response.message = ("adaptation scheduled" if full else
                            f"not enough samples yet ({len(self.learner.buffer)}/{self.learner.buffer.capacity})")
        return response

    def _tick(self) -> None:
        """Start an adaptation on the worker thread when one is due and none is running."""
        if self._busy.is_set():
            return
        now = self._now()
        with self._lock:
            due = (self._force and self.learner.buffer.full) or self.learner.should_adapt(now)
            self._force = False
        if due:
            self._busy.set()
            self._worker = threading.Thread(target=self._adapt, args=(now,), name="metasym-learner", daemon=True)
            self._worker.start()

    def _warm_up(self) -> None:
        """One throw-away adaptation on a synthetic window (nothing is published or versioned)."""
        model, n = self.learner.model, self.learner.buffer.capacity
        p = next(model.parameters())
        try:
            adapt(model, torch.zeros(n, model.state_dim, dtype=p.dtype, device=p.device),
                  torch.zeros(n, model.control_dim, dtype=p.dtype, device=p.device),
                  torch.full((n,), 0.02, dtype=p.dtype, device=p.device), self.learner.inner_steps,
                  self.learner.lr, self.learner.holdout)
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"warm-up adaptation failed: {exc}")
        finally:
            self._busy.clear()

    def _adapt(self, now: float) -> None:
        try:
            with self._lock:  # snapshot the buffer; the adaptation itself runs without the lock
                arrays = self.learner.buffer.arrays()
            outcome = self.learner.adapt_window(*arrays, now=now)
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"adaptation failed: {exc}", throttle_duration_sec=WARN_EVERY_S)
            self._busy.clear()
            return
        self.outcomes.append(outcome)
        msg = AdaptationStatus(system=self.system, version=outcome.version, loss_before=outcome.loss_before,
                               loss_after=outcome.loss_after, latency_ms=outcome.latency_ms,
                               accepted=outcome.accepted, reason=outcome.reason, params_path=outcome.params_path)
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self._pub.publish(msg)
        except Exception:  # noqa: BLE001 - shut down (SIGINT) while adapting: nothing to publish to
            return
        finally:
            self._busy.clear()
        text = (f"adaptation v{outcome.version} {outcome.reason}: held-out loss {outcome.loss_before:.4g} -> "
                f"{outcome.loss_after:.4g} in {outcome.latency_ms:.0f} ms")
        if outcome.accepted:  # one severity per call site: rclpy refuses to change it between calls
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def destroy_node(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()
        if self._tmp is not None:
            self._tmp.cleanup()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-learner`."""
    return run_node(LearnerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
