"""`predictor` node: multi-step predictions of the streamed system, live.

Parameters (declared up front, validated; see `ros: predictor:` in config/<system>.yaml):
  system       quadrotor | spring_mesh | quantum (read only)
  checkpoint   model file; empty = an untrained model from config/<system>.yaml (warning)
  horizon      predicted steps H (default 30)
  device       auto (cuda if present) | cpu | cuda[:N]
  max_age_s    states older than this (header stamp vs node clock) are stale and dropped
  max_rate_hz  at most this many predictions per second (flood guard)
  plan_max_age_s  a control plan whose start state is more than this older than the state predicted
               from is stale: the prediction holds the last control instead (default 0.5)
  path_rate_hz at most this many predicted paths per second (display only; 0 = none)
  metrics_period_s  period of the metrics report
  threads      torch CPU threads of the per-state prediction (default 1: latency-bound)
  batch_threads  torch CPU threads of the rollout_batch service (default 1; 0 = torch default;
               more threads pay off only on idle cores: OpenMP spin-waits when oversubscribed)
  frame_id     frame of the predicted path
  realtime_priority  SCHED_FIFO priority 1-99 of the whole node process (DDS threads, executor,
               workers: metasym_ros.realtime), 0 = normal scheduling (the default). Where it is
               refused (no CAP_SYS_NICE / rtprio limit) a warning says so and the node runs on.
               The quadrotor config sets 20: on a loaded machine it cuts the latency tail

Topics (QoS in metasym_ros.qos):
  sub ``metasym/state`` (SystemState, best effort, keep last 10)
  sub ``metasym/control_plan`` (ControlPlan): a controller's plan (metasym_core.online.plan). Each
      prediction rolls out under the newest plan that starts at or before its state and is at most
      `plan_max_age_s` older, shifted by the steps elapsed since its start, its last control held
      past its end; without one it holds the state's control. Prediction.control_source says which,
      Prediction.controls gives the controls used. Bad plans (another system, wrong length, NaN,
      dt <= 0, a stamp from the future, out of order) are dropped, counted and logged (throttled)
  sub ``metasym/adaptation`` (AdaptationStatus, reliable, transient local): an accepted
      status carries the new local parameters (metasym_core.online.local_params; an older
      learner's status names a file instead); they are checked and swapped in between two
      rollouts, so no prediction is dropped. Only parameters of the model in use count: the
      status's `model_tag` is "" for the model of `checkpoint`, else a learner-trained model's tag
  sub ``metasym/model`` (ModelCheckpoint, reliable, transient local): the bytes of a checkpoint
      the learner meta-trained, checked against their sha256 and loaded (weights_only) and
      warmed up on a loader thread, then swapped in
      between two rollouts (`model_path`, `model_swaps`); a checkpoint that does not load or
      whose state/control dimensions or context differ from the running model's is refused
      with a throttled warning (`models_refused`). The new model starts at parameter
      version 0 (its φ₀): versions count per model, and parameter files of the previous
      model are never applied to it
  pub ``metasym/prediction`` (Prediction, reliable, keep last 10): one per new state once
      the window is full; header.stamp = stamp of the newest state, times = k·dt. The state's
      callback rolls out and publishes at once when no rollout is running and `max_rate_hz`
      allows (no hand-off between threads); otherwise the state waits for a worker thread,
      which rolls out from the newest one, so states never queue behind rollouts. A state
      superseded meanwhile (states faster than rollouts, or a flood) gets no prediction and
      counts as skipped
  pub ``metasym/predicted_path`` (nav_msgs/Path, quadrotor only): predicted positions/attitudes
  pub ``metasym/metrics`` (PredictionMetrics): realised error of earlier predictions against
      the states that arrived later, the model's own error (`model_mse`: every 10 states, one
      batched rollout from the contexts H steps back under the controls that were applied),
      mean latency, dropped + skipped messages since last report
Service ``~/rollout_batch`` (RolloutBatch): context + K candidate control sequences → K
trajectories, one batched `model.rollout` call.

Bad states (wrong dimension or system, NaN/Inf, non-positive dt, stale or out-of-order
stamps) are dropped with a throttled warning and counted; the node stays up. States lost
on the way (best-effort QoS drops the excess of a flood) show as gaps in SystemState.step
and are counted as "lost"; states superseded before their rollout as "skipped".
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
from rclpy.node import Node

from metasym_core.checkpoint import resolve_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.online.plan import PlanFollower
from metasym_core.online.poses import quadrotor_poses
from metasym_core.online.predictor import OnlinePredictor, load_model, load_model_bytes
from metasym_core.online.realised import MetricsAccumulator, ModelErrorTracker, RealisedErrorTracker
from metasym_core.online.streams import STREAMS
from metasym_ros.common import at_least, declare, f64, one_of, positive, run_node, seconds_stamp, stamp_seconds
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
from metasym_ros.realtime import check_priority, set_fifo
from metasym_ros.srv import RolloutBatch

WARN_EVERY_S = 2.0  # throttle of the drop warnings
HINDCAST_EVERY = 10  # states per batched hindcast of the model error (PredictionMetrics.model_mse)


class PredictorNode(Node):
    """Context window → model rollout → Prediction, plus metrics and a batched rollout service."""

    def __init__(self, **kwargs) -> None:
        super().__init__("predictor", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              check=one_of(STREAMS))
        checkpoint = resolve_checkpoint(declare(self, "checkpoint", "", "Model checkpoint; pretrained = the "
                                                "bundled model; empty = untrained model (warning)"), self.system)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]")
        threads = declare(self, "threads", 1, "torch CPU threads of the per-state prediction (0 = torch default)")
        realtime_priority = declare(self, "realtime_priority", 0, "SCHED_FIFO priority 1-99 of this node's "
                                    "process (all its threads); 0 = normal scheduling")
        check_priority(realtime_priority)
        # live parameters: each takes effect at once (`ros2 param set`), a bad value is refused
        self.horizon = declare(self, "horizon", 30, "Predicted steps H", apply=self._set_horizon, check=at_least(1))
        self.max_age_s = declare(self, "max_age_s", 1.0, "States older than this [s] are stale and dropped",
                                 apply=self._set_max_age, check=positive)
        max_rate_hz = declare(self, "max_rate_hz", 200.0, "Most predictions per second (flood guard)",
                              apply=self._set_max_rate, check=positive)
        plan_max_age_s = declare(self, "plan_max_age_s", 0.5, "A control plan more than this [s] older than "
                                 "the state predicted from is stale (the last control is held instead)",
                                 apply=self._set_plan_max_age, check=positive)
        metrics_period = declare(self, "metrics_period_s", 1.0, "Period of the metrics report [s]",
                                 apply=self._set_metrics_period, check=positive)
        path_rate_hz = declare(self, "path_rate_hz", 10.0, "Most predicted paths per second (0 = none)",
                               apply=self._set_path_rate, check=at_least(0.0))
        self.batch_threads = declare(self, "batch_threads", 1, "torch CPU threads of the rollout_batch "
                                     "service (0 = torch default)", apply=self._set_batch_threads,
                                     check=at_least(0))
        self.frame_id = declare(self, "frame_id", "world", "Frame of the predicted path",
                                apply=lambda value: setattr(self, "frame_id", value))
        self._default_threads = torch.get_num_threads()
        self.threads = threads if threads > 0 else self._default_threads
        torch.set_num_threads(self.threads)

        model, cfg, warning = load_model(self.system, checkpoint, device)
        if warning:
            self.get_logger().warning(warning)
        self._device = device
        self.predictor = OnlinePredictor(model, self.horizon)
        self.model_path, self.model_tag, self.model_swaps, self.models_refused = checkpoint, "", 0, 0
        self._latest_status: AdaptationStatus | None = None  # newest accepted status of any model
        self._model_request: str | None = None  # newest announced checkpoint not yet loaded
        self._loading = False
        self._loader: threading.Thread | None = None
        self.window = self.predictor.make_window(self.max_age_s)
        self.plans = PlanFollower(model.control_dim, self.system, plan_max_age_s)
        self.tracker = RealisedErrorTracker()
        self.hindcasts = ModelErrorTracker(self.predictor.context, self.horizon, every=HINDCAST_EVERY)
        self.metrics = MetricsAccumulator()
        self.dropped: Counter[str] = Counter()  # node-level drops (system mismatch, lost, skipped, errors)
        self.predictions = 0
        self._min_period = 1.0 / max_rate_hz
        self._path_period = 1.0 / path_rate_hz if path_rate_hz > 0 else math.inf
        self._last_path = -math.inf
        self._reported_drops = 0
        self._last_step = -1  # highest SystemState.step seen: gaps are states lost on the way
        # A state is predicted on in its own callback when no rollout is running and the rate guard
        # allows: a hand-off to another thread costs ~0.7 ms of latency (it waits for the executor to
        # release the GIL). Otherwise it stays pending for the worker thread, which predicts from the
        # newest state, so states never queue behind slow rollouts (latency = one rollout, not a queue
        # of them). States superseded while pending are counted as "skipped".
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: SystemState | None = None
        self._busy = True  # a rollout is running (the worker's warm-up first)
        self._last_rollout = -math.inf
        self._worker = threading.Thread(target=self._predict_loop, name="metasym-predictor", daemon=True)

        self._pub = self.create_publisher(Prediction, PREDICTION_TOPIC, PREDICTION_QOS)
        self._path_pub = (self.create_publisher(Path, PATH_TOPIC, PATH_QOS) if self.system == "quadrotor"
                          else None)
        self._metrics_pub = self.create_publisher(PredictionMetrics, METRICS_TOPIC, METRICS_QOS)
        self._state_sub = self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS)
        self._plan_sub = self.create_subscription(ControlPlan, PLAN_TOPIC, self._on_plan, PLAN_QOS)
        self._adapt_sub = self.create_subscription(AdaptationStatus, ADAPTATION_TOPIC, self._on_adaptation,
                                                   ADAPTATION_QOS)
        self._model_sub = self.create_subscription(ModelCheckpoint, MODEL_TOPIC, self._on_model, MODEL_QOS)
        self._srv = self.create_service(RolloutBatch, "~/rollout_batch", self._on_rollout_batch)
        self._metrics_timer = self.create_timer(metrics_period, self._publish_metrics)
        self._worker.start()
        self.get_logger().info(f"predicting {self.system}: context {self.predictor.context}, horizon "
                               f"{self.horizon}, device {self.predictor.device}")
        if realtime_priority:  # once every thread exists; later ones (rollout pools) inherit it
            refused = set_fifo(realtime_priority)
            if refused:
                self.get_logger().warning(f"{refused}; running with normal scheduling")
            else:
                self.get_logger().info(f"real-time scheduling: SCHED_FIFO priority {realtime_priority}")

    # -- counters --------------------------------------------------------------------------------
    @property
    def dropped_total(self) -> int:
        """Every dropped or skipped message so far (window and plan rejections + node-level)."""
        return self.window.dropped + self.plans.dropped + sum(self.dropped.values())

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self.get_logger().warning(f"dropped state ({reason}): {detail}", throttle_duration_sec=WARN_EVERY_S)


    # -- live parameters (declare(..., apply=...): run after `ros2 param set` succeeded) ----------
    def _set_horizon(self, value: int) -> None:
        with self._lock:
            self.horizon = self.predictor.horizon = int(value)
            self.hindcasts = ModelErrorTracker(self.predictor.context, self.horizon, every=HINDCAST_EVERY)

    def _set_max_age(self, value: float) -> None:
        with self._lock:
            self.max_age_s = self.window.max_age_s = float(value)

    def _set_max_rate(self, value: float) -> None:
        with self._lock:
            self._min_period = 1.0 / value

    def _set_plan_max_age(self, value: float) -> None:
        with self._lock:
            self.plans.max_age_s = value

    def _set_metrics_period(self, value: float) -> None:
        self._metrics_timer.timer_period_ns = int(value * 1e9)

    def _set_path_rate(self, value: float) -> None:
        self._path_period = 1.0 / value if value > 0 else math.inf

    def _set_batch_threads(self, value: int) -> None:
        self.batch_threads = int(value)

    # -- control plans ---------------------------------------------------------------------------
    def _on_plan(self, msg: ControlPlan) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            reason = self.plans.push_flat(msg.step, stamp_seconds(msg.header.stamp), msg.dt,
                                          np.frombuffer(msg.controls, dtype=np.float64), msg.horizon,
                                          msg.control_dim, msg.system, now)
        if reason is not None:
            self.get_logger().warning(f"dropped control plan ({reason}): system {msg.system!r}, step {msg.step}, "
                                      f"{len(msg.controls)} values for {msg.horizon}x{msg.control_dim}; "
                                      f"{self.plans.dropped} dropped so far", throttle_duration_sec=WARN_EVERY_S)

    # -- states → predictions ----------------------------------------------------------------------
    def _on_state(self, msg: SystemState) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        if msg.system != self.system:
            self._drop("system", f"system {msg.system!r}, expected {self.system!r}")
            return
        if msg.step > self._last_step + 1 and self._last_step >= 0:  # gap in the simulator's counter
            self.dropped["lost"] += msg.step - self._last_step - 1
            self.get_logger().warning(f"{msg.step - self._last_step - 1} states lost before step {msg.step} "
                                      "(transport or flood)", throttle_duration_sec=WARN_EVERY_S)
        self._last_step = max(self._last_step, msg.step)
        stamp = stamp_seconds(msg.header.stamp)
        state = np.frombuffer(msg.state, dtype=np.float64)
        control = np.frombuffer(msg.control, dtype=np.float64)
        with self._lock:
            reason = self.window.push(stamp, state, control, msg.dt, now=now, step=msg.step)
        if reason is not None:
            self.get_logger().warning(
                f"dropped state ({reason}): step {msg.step}, stamp {stamp:.3f}, dim {state.size}/{control.size}; "
                f"{self.window.dropped} dropped so far", throttle_duration_sec=WARN_EVERY_S)
            return
        inline = False
        with self._lock:
            queued = self.window.full
            if queued:
                if self._pending is not None:
                    self.dropped["skipped"] += 1  # superseded before its rollout started
                self._pending = msg
                inline = not self._busy and time.monotonic() - self._last_rollout >= self._min_period
                self._busy = self._busy or inline
        if inline:
            self._predict_pending()
        elif queued:
            self._wake.set()
        # bookkeeping once the prediction is out (it does not need it): realised errors of earlier
        # predictions against this state, and the state for the model-error hindcasts
        with self._lock:
            for evaluation in self.tracker.observe(msg.step, state):
                self.metrics.add(evaluation)
            self.hindcasts.observe(msg.step, state, control, msg.dt)

    def _predict_loop(self) -> None:
        """Worker: predict from the newest pending state that the callback left (a rollout was running
        or the flood guard held it back); at most max_rate_hz rollouts per second."""
        torch.set_num_threads(self.threads)  # OpenMP thread counts are per thread: set it in this one too
        try:
            self.predictor.warm_up()  # pay the first-call cost before the first state, not on it
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"warm-up rollout failed: {exc}")
        with self._lock:
            self._busy = False
        self._wake.set()  # states that came during the warm-up
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.1):
                continue
            with self._lock:
                pause = self._min_period - (time.monotonic() - self._last_rollout)
            if pause > 0:
                time.sleep(pause)  # flood guard: newer states replace the pending one meanwhile
            with self._lock:
                self._wake.clear()
                if self._busy or self._pending is None:
                    continue  # the callback is predicting, or did
                self._busy = True
            self._predict_pending()

    def _predict_pending(self) -> None:
        """Roll out from the pending state and publish, on whichever thread claimed `_busy`."""
        try:
            with self._lock:
                msg, self._pending = self._pending, None
                if msg is None:
                    return
                arrays = self.window.arrays()
                future, source, plan = self.plans.future_controls(msg.step, stamp_seconds(msg.header.stamp),
                                                                  arrays[2][-1], self.predictor.horizon,
                                                                  arrays[1][-1])
                self._last_rollout = time.monotonic()
            try:
                result = self.predictor.predict_arrays(*arrays, future_controls=future)
            except (MetaSymError, RuntimeError) as exc:
                self._drop("error", f"rollout failed: {exc}")
                return
            try:
                self._publish_prediction(msg, result, source, plan.step if plan is not None else 0)
            except Exception:  # noqa: BLE001 - context shut down (SIGINT) while predicting: stop quietly
                if self._stop.is_set() or not self.context.ok():
                    return
                raise
            self._hindcast()
        finally:
            with self._lock:
                self._busy = False

    def _hindcast(self) -> None:
        """Score the model on the latest finished horizons under the applied controls (batched, after
        the prediction, so it never delays one)."""
        with self._lock:
            batch = self.hindcasts.due()
            predictor = self.predictor
        if batch is None:
            return
        try:
            errors = predictor.hindcast(batch)
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"model-error hindcast failed: {exc}", throttle_duration_sec=WARN_EVERY_S)
            return
        with self._lock:
            self.metrics.model_mse.extend(float(e) for e in errors)

    def _publish_prediction(self, state_msg: SystemState, result, source: str, plan_step: int) -> None:
        out = Prediction(system=self.system, horizon=result.states.shape[0], state_dim=result.states.shape[1],
                         params_version=result.version, control_source=source,
                         control_dim=result.controls.shape[1], plan_step=plan_step)
        out.header = state_msg.header
        out.times = f64(result.times)
        out.states = f64(result.states)
        out.controls = f64(result.controls)
        self._pub.publish(out)
        with self._lock:
            self.predictions += 1
            for evaluation in self.tracker.add(state_msg.step, result.states, result.version):
                self.metrics.add(evaluation)
            self.metrics.latency_ms.append(result.latency_ms)
        now = time.monotonic()
        if self._path_pub is not None and now - self._last_path >= self._path_period:
            self._last_path = now
            self._path_pub.publish(self._path(state_msg, result))

    def _path(self, state_msg: SystemState, result) -> Path:
        positions, quats = quadrotor_poses(result.states)
        base = stamp_seconds(state_msg.header.stamp)
        path = Path()
        path.header.stamp = state_msg.header.stamp
        path.header.frame_id = self.frame_id
        for (x, y, z), (qx, qy, qz, qw), t in zip(positions, quats, result.times, strict=True):
            pose = PoseStamped()
            pose.header.frame_id = self.frame_id
            seconds_stamp(pose.header.stamp, base + t)
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = float(x), float(y), float(z)
            o = pose.pose.orientation
            o.x, o.y, o.z, o.w = float(qx), float(qy), float(qz), float(qw)
            path.poses.append(pose)
        return path

    # -- metrics ---------------------------------------------------------------------------------
    def _publish_metrics(self) -> None:
        with self._lock:
            report = self.metrics.report()
        total = self.dropped_total
        msg = PredictionMetrics(system=self.system, realised_mse=report["realised_mse"],
                                realised_mse_step1=report["realised_mse_step1"], model_mse=report["model_mse"],
                                params_version=int(report["params_version"] or self.predictor.version),
                                dropped_messages=total - self._reported_drops, latency_ms=report["latency_ms"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._reported_drops = total
        self._metrics_pub.publish(msg)

    # -- adaptation ------------------------------------------------------------------------------
    def _on_adaptation(self, msg: AdaptationStatus) -> None:
        if msg.system != self.system or not msg.accepted:
            return
        with self._lock:
            self._latest_status = msg  # may belong to a model still loading: re-checked after a swap
        self._apply_status(msg)

    def _apply_status(self, msg: AdaptationStatus) -> None:
        """Swap in the local parameters of `msg` if they belong to the model in use and are newer: those in
        the message, else (an older learner) the file it names."""
        with self._lock:
            predictor, tag = self.predictor, self.model_tag
        if msg.model_tag != tag:
            return  # parameters of another model (an older one, or one not loaded yet)
        if msg.version <= predictor.version:
            return  # already in use (transient-local replay) or older
        try:
            if msg.params:
                predictor.set_local_entries([(p.name, p.shape, p.values) for p in msg.params], msg.version)
            else:
                predictor.load_local(msg.params_path, msg.version)
        except MetaSymError as exc:
            self.get_logger().warning(f"adaptation v{msg.version} not used: {exc}")
            return
        self.get_logger().info(f"using local parameters v{msg.version} "
                               f"(loss {msg.loss_before:.4g} -> {msg.loss_after:.4g})")

    # -- new models ------------------------------------------------------------------------------
    def _on_model(self, msg: ModelCheckpoint) -> None:
        """A checkpoint the learner sent: load it on the loader thread (never here)."""
        if msg.system != self.system or not msg.data or msg.tag == self.model_tag:
            return  # another system's, empty, or a transient-local replay of the model in use
        with self._lock:
            self._model_request = msg
            start, self._loading = not self._loading, True
        if start:
            self._loader = threading.Thread(target=self._load_models, name="metasym-model-loader", daemon=True)
            self._loader.start()

    def _load_models(self) -> None:
        """Loader thread: load, check and warm up the newest announced checkpoint, then swap it in."""
        torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            with self._lock:
                msg, self._model_request = self._model_request, None
                if msg is None:
                    self._loading = False
                    return
            try:
                self._swap_model(msg)
            except (MetaSymError, RuntimeError, OSError) as exc:
                self.models_refused += 1
                self.get_logger().warning(f"model {msg.tag} ({msg.path}) not used: {exc}",
                                          throttle_duration_sec=WARN_EVERY_S)
        with self._lock:
            self._loading = False

    def _swap_model(self, msg: ModelCheckpoint) -> None:
        path, tag = msg.path, msg.tag
        model, _ = load_model_bytes(self.system, msg.data, msg.sha256, self._device)
        old = self.predictor.model
        if (model.state_dim, model.control_dim, model.context) != (old.state_dim, old.control_dim, old.context):
            raise MetaSymError(f"state/control dims and context {model.state_dim}/{model.control_dim}/"
                               f"{model.context} differ from the running model's {old.state_dim}/"
                               f"{old.control_dim}/{old.context}")
        predictor = OnlinePredictor(model, self.horizon)
        predictor.warm_up()  # first-call cost here, not in the next prediction
        with self._lock:
            self.predictor, self.model_path, self.model_tag = predictor, path, tag
            self.model_swaps += 1
            status = self._latest_status
        self.get_logger().info(f"using model {path} ({tag}, swap {self.model_swaps}); local parameters "
                               "start again at v0")
        if status is not None:
            self._apply_status(status)  # its parameters arrived before the model itself

    # -- batched rollout service -----------------------------------------------------------------
    def _on_rollout_batch(self, request: RolloutBatch.Request,
                          response: RolloutBatch.Response) -> RolloutBatch.Response:
        t0 = time.perf_counter()
        predictor = self.predictor  # one model for the whole call, even if a new one is swapped in
        D, m = predictor.model.state_dim, predictor.model.control_dim
        L, K, H = request.context_len, request.candidates, request.horizon
        try:
            if (request.state_dim, request.control_dim) != (D, m):
                raise MetaSymError(f"state_dim/control_dim must be {D}/{m}, got "
                                   f"{request.state_dim}/{request.control_dim}")
            sizes = {"context_states": (len(request.context_states), L * D),
                     "context_controls": (len(request.context_controls), L * m),
                     "context_dt": (len(request.context_dt), L),
                     "candidate_controls": (len(request.candidate_controls), K * H * m)}
            for name, (got, want) in sizes.items():
                if got != want:
                    raise MetaSymError(f"{name} has {got} values, expected {want}")
            if K < 1 or H < 1 or L < 1:
                raise MetaSymError("context_len, horizon and candidates must be >= 1")
            torch.set_num_threads(self.batch_threads if self.batch_threads > 0 else self._default_threads)
            states, version = predictor.rollout_batch(
                np.frombuffer(request.context_states, dtype=np.float64).reshape(L, D),
                np.frombuffer(request.context_controls, dtype=np.float64).reshape(L, m),
                np.frombuffer(request.context_dt, dtype=np.float64),
                np.frombuffer(request.candidate_controls, dtype=np.float64).reshape(K, H, m), request.dt)
        except (MetaSymError, RuntimeError) as exc:
            torch.set_num_threads(self.threads)
            response.success, response.message = False, str(exc)
            response.latency_ms = 1e3 * (time.perf_counter() - t0)
            return response
        torch.set_num_threads(self.threads)
        response.success, response.message = True, "ok"
        response.horizon, response.state_dim, response.candidates = H, D, K
        response.states = f64(states)
        response.params_version = version
        response.latency_ms = 1e3 * (time.perf_counter() - t0)
        return response


    def destroy_node(self) -> None:
        if not hasattr(self, "_worker"):  # the constructor failed (a bad parameter): nothing started
            super().destroy_node()
            return
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        if self._loader is not None and self._loader.is_alive():
            self._loader.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-predictor`."""
    return run_node(PredictorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
