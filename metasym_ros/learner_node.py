"""`learner` node: online few-shot adaptation of the streamed system, and meta-training on request.

An adapter: parameters in, calls to `metasym_core.online.live_learner.LiveLearner` (adaptation)
and `metasym_core.train.runs.BackgroundTraining` (meta-training), messages out. Its topics,
services and parameters are documented in docs/nodes.md; each parameter's description is also
what `ros2 param describe /learner <name>` prints.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from rclpy.node import Node
from std_srvs.srv import Trigger

from metasym_core.checkpoint import resolve_checkpoint
from metasym_core.online.learner import AdaptationOutcome, learner_parameters
from metasym_core.online.live_learner import LiveLearner
from metasym_core.online.local_params import to_entries
from metasym_core.online.predictor import load_model
from metasym_core.online.streams import STREAMS
from metasym_core.train.runs import BackgroundTraining
from metasym_ros.common import at_least, declare, f64, log_model, one_of, positive, run_node, stamp_seconds
from metasym_ros.msg import AdaptationStatus, LocalParameter, ModelCheckpoint, PredictionMetrics, SystemState
from metasym_ros.qos import (
    ADAPTATION_QOS,
    ADAPTATION_TOPIC,
    METRICS_QOS,
    METRICS_TOPIC,
    MODEL_QOS,
    MODEL_TOPIC,
    STATE_QOS,
    STATE_TOPIC,
)

# How long shutdown waits for a training to stop at its next outer step and save last.pt: with the 2 s it may then
# wait for an adaptation (LiveLearner.stop), inside the node's teardown limit (start.TEARDOWN_LIMIT_S) and so a
# launcher's grace (a training that misses it resumes from the last.pt of its previous checkpoint interval)
STOP_WAIT_S = 5.0


class LearnerNode(Node):
    """Buffer states, adapt φ off the executor thread, publish every attempt; meta-train on request."""

    def __init__(self, **kwargs) -> None:
        super().__init__("learner", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              check=one_of(STREAMS))
        checkpoint = resolve_checkpoint(declare(self, "checkpoint", "pretrained", "Meta-trained model; pretrained "
                                                "= the bundled model; empty = meta-train first (train_at_start), "
                                                "else none: no adaptations"), self.system)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]")
        train_at_start = declare(self, "train_at_start", True, "Meta-train (or reuse/resume a run of train_dir) "
                                 "at start when checkpoint is empty or missing")
        train_data = declare(self, "train_data", "", "Training dataset .npz (empty: generate the family's "
                             "default into train_dir/data)")
        val_data = declare(self, "val_data", "", "Validation dataset .npz (empty: generate the family's default "
                           "OOD set into train_dir/data)")
        train_dir = declare(self, "train_dir", "", "Folder of the training runs (empty: runs/learner/<system>)")
        train_steps = declare(self, "train_steps", 0, "Most outer steps of one training (0: the config's whole "
                              "schedule)", check=at_least(0))
        params_dir = declare(self, "params_dir", "", "Folder to also write accepted parameters to (empty: none; "
                             "they travel in the AdaptationStatus messages)")
        threads = declare(self, "threads", 1, "torch CPU threads of meta-training (0 = torch default; "
                          "adaptations run with torch's default)")
        max_age_s = declare(self, "max_age_s", 1.0, "States older than this [s] are stale and dropped",
                            apply=lambda value: self.live.set_max_age(value), check=positive)
        train_first = train_at_start and not (checkpoint and os.path.isfile(checkpoint))
        model, cfg, warning = load_model(self.system, "" if train_first else checkpoint, device)
        if not train_first:
            log_model(self, self.system, checkpoint, model, warning)
        settings = {}  # the adaptation's settings (OnlineLearner.configure), all live
        for name, key, default, text in learner_parameters(cfg.get("training") or {}):
            settings[key] = declare(self, name, default, text, apply=self._configure(key), check=self._check(key))
        log = self.get_logger()
        self.trainer = BackgroundTraining(self.system, cfg, train_dir or os.path.join("runs", "learner", self.system),
                                          self._use_model, train_data=train_data, val_data=val_data,
                                          max_steps=train_steps, device=device, threads=threads, info=self._info,
                                          error=log.error)
        self.live = LiveLearner(model, self.system, settings, self._publish, params_root=params_dir or None,
                                max_age_s=max_age_s, device=device, model_path="" if train_first else checkpoint,
                                paused=train_first or not checkpoint, info=log.info, debug=log.debug,
                                warn=log.warning)
        self._pub = self.create_publisher(AdaptationStatus, ADAPTATION_TOPIC, ADAPTATION_QOS)
        self._model_pub = self.create_publisher(ModelCheckpoint, MODEL_TOPIC, MODEL_QOS)
        self._subs = [self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS),
                      self.create_subscription(PredictionMetrics, METRICS_TOPIC, self._on_metrics, METRICS_QOS)]
        self._srvs = [self.create_service(Trigger, "~/adapt_now", self._on_adapt_now),
                      self.create_service(Trigger, "~/train", self._on_train)]
        self._timer = self.create_timer(0.1, lambda: self.live.tick(self._now()))
        self.live.start()
        log.info(f"learning {self.system} with {checkpoint or 'an untrained model'}: window {settings['window']}, "
                 f"K={settings['inner_steps']}, lr {settings['lr']}, φ {settings['params']}, period "
                 f"{settings['period_s']} s, error rise ×{settings['error_rise']}, bias test "
                 f"{settings['bias_threshold'] or 'off'}")
        if train_first:
            self.trainer.start(at_start=True)
        elif not checkpoint:
            log.warning("no trained model and train_at_start false: no adaptations (call ~/train to train one)")

    def _configure(self, key: str):
        return lambda value: self.live.configure(key, value)

    def _check(self, key: str):
        def check(value) -> None:
            if hasattr(self, "live"):  # at start the learner's constructor checks them all
                self.live.check(key, value)
        return check

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _info(self, text: str) -> None:
        """Log `text`; after shutdown (SIGINT) straight to stderr, as /rosout is gone by then."""
        if self.context.ok():
            self.get_logger().info(text)
        else:
            print(f"[INFO] [{self.get_name()}]: {text}", file=sys.stderr, flush=True)

    # -- messages in -----------------------------------------------------------------------------
    def _on_state(self, msg: SystemState) -> None:
        self.live.on_state(msg.system, stamp_seconds(msg.header.stamp), np.frombuffer(msg.state, dtype=np.float64),
                           np.frombuffer(msg.control, dtype=np.float64), msg.dt, now=self._now())

    def _on_metrics(self, msg: PredictionMetrics) -> None:
        self.live.on_metrics(msg.system, msg.model_mse, msg.realised_mse)

    def _on_adapt_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.live.request()
        return response

    def _on_train(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.trainer.start(at_start=False)
        return response

    # -- messages out ----------------------------------------------------------------------------
    def _publish(self, outcome: AdaptationOutcome, model_tag: str) -> None:
        """Every adaptation attempt; an accepted one carries its parameters (called on the worker thread)."""
        msg = AdaptationStatus(system=self.system, version=outcome.version, loss_before=outcome.loss_before,
                               loss_after=outcome.loss_after, latency_ms=outcome.latency_ms,
                               accepted=outcome.accepted, reason=outcome.reason, params_path=outcome.params_path,
                               model_tag=model_tag)
        if outcome.params is not None:  # the tensors travel in the message: no shared filesystem needed
            msg.params = [LocalParameter(name=name, shape=shape, values=f64(values))
                          for name, shape, values in to_entries(outcome.params)]
        msg.header.stamp = self.get_clock().now().to_msg()
        self._send(self._pub, msg)

    def _use_model(self, checkpoint: Path) -> None:
        """A finished training's model: in use here at once, then announced to the predictors as its bytes."""
        tag, data = self.live.use_model(checkpoint)
        msg = ModelCheckpoint(system=self.system, tag=tag, path=self.live.model_path, data=data,
                              sha256=hashlib.sha256(data).hexdigest())
        msg.header.stamp = self.get_clock().now().to_msg()
        if self._send(self._model_pub, msg):
            self.get_logger().info(f"using model {self.live.model_path} ({tag}); published on {MODEL_TOPIC}")

    def _send(self, publisher, msg) -> bool:
        try:
            publisher.publish(msg)
            return True
        except Exception:  # noqa: BLE001 - shut down (SIGINT) meanwhile: nothing to publish to
            if self.context.ok():
                raise
            return False

    def destroy_node(self) -> None:
        if hasattr(self, "live"):  # else the constructor failed (a bad parameter): nothing started
            if not self.trainer.stop(STOP_WAIT_S):
                self.get_logger().warning(f"meta-training did not stop within {STOP_WAIT_S:g} s")
            if not self.live.stop():
                self.get_logger().info("stopping with an adaptation still running: it publishes nothing")
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-learner`."""
    return run_node(LearnerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
