"""`learner` node: offline meta-training and online few-shot adaptation of the streamed system.

Parameters (declared up front, validated; see `ros: learner:` in config/<system>.yaml):
  system        quadrotor | spring_mesh | quantum (read only)
  checkpoint    meta-trained model; empty = untrained model from the config (warning), or
                meta-train one first when `train_at_start` is true
  device        auto (cuda if present) | cpu | cuda[:N]
  window        most recent samples used per adaptation
  inner_steps, lr, holdout, horizon   the adaptation (default: the config's `training:` values;
                horizon = training.rollout_horizon, 0 = next-step loss)
  period_s      adapt at least this often [s]; <= 0: only when the error rises
  error_rise    adapt early when the realised error exceeds this factor × its baseline
  min_interval_s, min_gain   no more often than this; accept only this relative gain
  params_dir    also write accepted parameters to files here (empty, the default: no files; the
                tensors travel in AdaptationStatus.params either way)
  max_age_s     states older than this are stale and dropped
  threads       torch CPU threads of adaptation and training (default 1: small models, latency-bound)
  train_at_start  when `checkpoint` is empty or names a missing file: use the newest finished
                run of `train_dir`, else resume its interrupted newest run, else meta-train a new
                one (default false: the untrained model, as before)
  train_data, val_data  dataset .npz files (empty: train / ood datasets as the config's `data:`
                section says, else the family defaults, generated once into `<train_dir>/data/`
                and reused)
  train_dir     run folders `<train_dir>/run001`, `run002`, ... (default runs/learner/<system>)
  train_steps   most outer steps of one training (0: the config's whole schedule); training
                runs on `device`, like `metasym train --device`

Topics (QoS in metasym_ros.qos):
  sub ``metasym/state`` (SystemState): buffered (the same validation as the predictor)
  sub ``metasym/metrics`` (PredictionMetrics): the predictor's model error (`model_mse`; the
      realised error until that is measured), the trigger
  pub ``metasym/adaptation`` (AdaptationStatus, transient local): every attempt; an
      accepted one carries the new local parameters themselves (version + 1; with
      `params_dir` also their file)
  pub ``metasym/model`` (ModelCheckpoint, transient local): the bytes (with sha256, tag and
      path) of each model this node meta-trained (`<run>/final.pt`) once it is in use here
Services:
  ``~/adapt_now`` (std_srvs/Trigger): adapt at once on the buffered window.
  ``~/train`` (std_srvs/Trigger): meta-train a new run on a background thread; answers at
      once (refused while a training runs). Progress: a log line every few seconds.

Adaptations and trainings run on worker threads, never on the executor thread, so the
node keeps buffering states (and the predictor keeps predicting) meanwhile;
`metasym_core.online.learner` holds the adaptation policy (trigger, validate against φ₀
and the parameters in force, version) and `metasym_core.train.trainer` the training.
While the start-up training makes the first model, adaptation is paused. A trained model
replaces the learner's model at once; its versions start again at 0 and its statuses
carry its tag (`checkpoint.content_tag`: a hash of the checkpoint's bytes; files go to
`<params_dir>/<tag>/`), so a predictor never applies parameters of one model to another.
On shutdown (SIGINT) a training stops at the next outer step and saves `last.pt`
(`train_at_start` resumes it; or `metasym train --resume`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rclpy.node import Node
from std_srvs.srv import Trigger

from metasym_core.checkpoint import content_tag, resolve_checkpoint
from metasym_core.config import data_options, data_tag
from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt
from metasym_core.online.learner import AdaptationOutcome, OnlineLearner, learner_parameters
from metasym_core.online.local_params import to_entries
from metasym_core.online.predictor import load_model
from metasym_core.online.streams import STREAMS
from metasym_core.systems.dataset import SystemDataset, generate, load_dataset, merge, save_dataset
from metasym_core.train.trainer import Trainer
from metasym_ros.common import at_least, declare, f64, one_of, positive, run_node, stamp_seconds
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

WARN_EVERY_S = 2.0
PROGRESS_EVERY_S = 2.0  # throttle of the training progress lines
STOP_WAIT_S = 20.0  # how long shutdown waits for a training to save last.pt
_RUN = re.compile(r"run(\d+)$")


def run_folders(train_dir: str | os.PathLike) -> list[Path]:
    """The run folders `run<N>` of `train_dir`, oldest (lowest N) first."""
    root = Path(train_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and _RUN.match(p.name)]
    return sorted(runs, key=lambda p: int(_RUN.match(p.name).group(1)))


def prepare_datasets(system: str, train_data: str, val_data: str, data_dir: str | os.PathLike,
                     should_stop: Callable[[], bool] = lambda: False,
                     log: Callable[[str], None] = lambda _text: None, systems: int | None = None,
                     steps: int | None = None, family_options: dict | None = None
                     ) -> tuple[SystemDataset, SystemDataset] | None:
    """(train, val) datasets: the given files, or the family's default train (seed 0) / ood (seed 1)
    datasets generated into `data_dir` (reused when present; `systems`/`steps` override the
    family's sizes, `family_options` its options: the config's `data:` section). Generation runs
    system by system in this thread (no process pool: the caller is a ROS process) and returns
    None as soon as `should_stop()` is true."""
    out = []
    options = dict(family_options or {})
    tag = data_tag(options)
    for name, given, split, seed in (("train_data", train_data, "train", 0), ("val_data", val_data, "ood", 1)):
        path = Path(given) if given else Path(data_dir) / f"{system}{tag}_{split}.npz"
        if not path.is_file():
            if given:
                raise MetaSymError(f"parameter {name}: dataset not found: {path}")
            from metasym_core.systems import make_family

            family = make_family(system, **options)
            n = family.default_systems[split] if systems is None else systems
            parts = []
            for i in range(n):  # one shard per system: stoppable in between, the same bytes as one run
                if should_stop():
                    return None
                log(f"generating {system}/{split} data for meta-training: system {i + 1}/{n}")
                parts.append(generate(family, split, systems=n, steps=steps, seed=seed, shard=(i, n), workers=1,
                                      progress=False))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_dataset(merge(parts), path)
        ds = load_dataset(path)
        if ds.family != system:
            raise MetaSymError(f"{name} {path} holds {ds.family} systems, not {system}")
        out.append(ds)
    return out[0], out[1]


class LearnerNode(Node):
    """Buffer states, adapt φ off the executor thread, publish accepted versions; meta-train on request."""

    def __init__(self, **kwargs) -> None:
        super().__init__("learner", **kwargs)
        self.system = declare(self, "system", "quadrotor", "System family: " + " | ".join(STREAMS),
                              check=one_of(STREAMS))
        checkpoint = resolve_checkpoint(declare(self, "checkpoint", "", "Meta-trained model; pretrained = the "
                                                "bundled model; empty = untrained (warning) or meta-train "
                                                "first (train_at_start)"), self.system)
        device = declare(self, "device", "auto", "auto | cpu | cuda[:N]")
        train_at_start = declare(self, "train_at_start", False, "Meta-train (or reuse/resume a run of train_dir) "
                                 "at start when checkpoint is empty or missing")
        self.train_data = declare(self, "train_data", "", "Training dataset .npz (empty: generate the family's "
                                  "default into train_dir/data)")
        self.val_data = declare(self, "val_data", "", "Validation dataset .npz (empty: generate the family's "
                                "default OOD set into train_dir/data)")
        train_dir = declare(self, "train_dir", "", "Folder of the training runs (empty: runs/learner/<system>)")
        self.train_steps = declare(self, "train_steps", 0, "Most outer steps of one training (0: the config's "
                                   "whole schedule)", check=at_least(0))
        for name, value in (("train_data", self.train_data), ("val_data", self.val_data)):
            if value and not os.path.isfile(value):
                raise MetaSymError(f"parameter {name}: dataset not found: {value}")
        self.train_dir = Path(os.path.abspath(train_dir or os.path.join("runs", "learner", self.system)))
        train_first = train_at_start and not (checkpoint and os.path.isfile(checkpoint))
        self._device = device
        model, cfg, warning = load_model(self.system, "" if train_first else checkpoint, device)
        if warning and not train_first:
            self.get_logger().warning(warning)
        self._cfg = cfg
        training = cfg.get("training") or {}
        params_dir = declare(self, "params_dir", "", "Folder to also write accepted parameters to (empty: none; "
                             "they travel in the AdaptationStatus messages)")
        self.threads = declare(self, "threads", 1, "torch CPU threads of adaptation and training "
                               "(0 = torch default)")
        self.max_age_s = declare(self, "max_age_s", 1.0, "States older than this [s] are stale and dropped",
                                 apply=self._set_max_age, check=positive)
        # the adaptation's settings (OnlineLearner.configure), all live: checked against the others in force
        settings = {}
        for name, key, default, text in learner_parameters(training):
            value = declare(self, name, default, text, apply=self._setting_applier(key),
                            check=self._setting_checker(key))
            settings[key] = value
        self._params_root = Path(params_dir) if params_dir else None  # files: an optional extra
        self._learner_kwargs = settings
        self.learner = OnlineLearner(model, self.system, self._params_root, **self._learner_kwargs)
        self.learner.buffer.max_age_s = self.max_age_s
        self.model_path, self.model_tag = ("" if train_first else checkpoint), ""
        self.outcomes: list[AdaptationOutcome] = []
        self.trainings: list[dict] = []  # summaries of the finished trainings
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._force = False
        self._worker: threading.Thread | None = None
        self._paused = train_first  # no adaptation of the untrained model the start-up training replaces
        self._train_stop = threading.Event()
        self._train_thread: threading.Thread | None = None
        self._train_state = "idle"
        self._last_val = math.nan  # newest validation loss of the running training (progress lines)

        self._pub = self.create_publisher(AdaptationStatus, ADAPTATION_TOPIC, ADAPTATION_QOS)
        self._model_pub = self.create_publisher(ModelCheckpoint, MODEL_TOPIC, MODEL_QOS)
        self._state_sub = self.create_subscription(SystemState, STATE_TOPIC, self._on_state, STATE_QOS)
        self._metrics_sub = self.create_subscription(PredictionMetrics, METRICS_TOPIC, self._on_metrics,
                                                     METRICS_QOS)
        self._srv = self.create_service(Trigger, "~/adapt_now", self._on_adapt_now)
        self._train_srv = self.create_service(Trigger, "~/train", self._on_train)
        self._timer = self.create_timer(0.1, self._tick)
        # The first adaptation pays ~1 s of lazy initialisation (CPU the predictor needs too): pay it
        # now, before the window fills, not at the first (possibly post-change) adaptation.
        self._busy.set()
        self._worker = threading.Thread(target=self._warm_up, name="metasym-learner", daemon=True)
        self._worker.start()
        self.get_logger().info(f"learning {self.system}: window {settings['window']}, K={settings['inner_steps']}, "
                               f"lr {settings['lr']}, φ {settings['params']}, period {settings['period_s']} s, "
                               f"error rise ×{settings['error_rise']}")
        if train_first:
            self._start_training(at_start=True)

    # -- live parameters -------------------------------------------------------------------------
    def _setting_checker(self, key: str):
        def check(value) -> None:
            learner = getattr(self, "learner", None)  # at start the learner's constructor checks them all
            if learner is not None:
                with self._lock:
                    learner.check_settings(**{key: value})
        return check

    def _setting_applier(self, key: str):
        def apply(value) -> None:
            with self._lock:
                self._learner_kwargs[key] = value
                self.learner.configure(**{key: value})
            self.get_logger().info(f"adaptation setting {key} = {value!r}")
        return apply

    def _set_max_age(self, value: float) -> None:
        with self._lock:
            self.max_age_s = self.learner.buffer.max_age_s = float(value)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: SystemState) -> None:
        if msg.system != self.system:
            return
        state = np.frombuffer(msg.state, dtype=np.float64)
        control = np.frombuffer(msg.control, dtype=np.float64)
        with self._lock:
            reason = self.learner.push(stamp_seconds(msg.header.stamp), state, control, msg.dt, now=self._now())
            dropped = self.learner.buffer.dropped
        if reason is not None:
            self.get_logger().warning(f"dropped state ({reason}); {dropped} so far",
                                      throttle_duration_sec=WARN_EVERY_S)

    def _on_metrics(self, msg: PredictionMetrics) -> None:
        if msg.system == self.system:
            # the model's own error when the predictor measures it (adaptation can only fix that part)
            error = msg.model_mse if math.isfinite(msg.model_mse) else msg.realised_mse
            with self._lock:
                self.learner.observe_error(error)

    def _on_adapt_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            full = self.learner.buffer.full and not self._paused
            self._force = full
            size, capacity = len(self.learner.buffer), self.learner.buffer.capacity
        response.success = full
        response.message = ("adaptation scheduled" if full else
                            "adaptation paused until the start-up training ends" if self._paused else
                            f"not enough samples yet ({size}/{capacity})")
        return response

    def _tick(self) -> None:
        """Watch the newest transitions (the change test sees every one, also while an adaptation or the
        warm-up runs), and start an adaptation on the worker thread when one is due and none is running."""
        if self._paused:
            return
        now = self._now()
        with self._lock:
            self.learner.watch()  # one forward pass on the newest window (bias_threshold, watch_rise)
            if self._busy.is_set():
                return
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
                  self.learner.lr, self.learner.holdout, self.learner.horizon, self.learner.params)
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"warm-up adaptation failed: {exc}")
        finally:
            self._busy.clear()

    def _adapt(self, now: float) -> None:
        try:
            with self._lock:  # snapshot the buffer (and the model in use); the adaptation runs without the lock
                learner = self.learner
                arrays = learner.buffer.arrays()
            outcome = learner.adapt_window(*arrays, now=now)
        except (MetaSymError, RuntimeError) as exc:
            self.get_logger().warning(f"adaptation failed: {exc}", throttle_duration_sec=WARN_EVERY_S)
            self._busy.clear()
            return
        self.outcomes.append(outcome)
        msg = AdaptationStatus(system=self.system, version=outcome.version, loss_before=outcome.loss_before,
                               loss_after=outcome.loss_after, latency_ms=outcome.latency_ms,
                               accepted=outcome.accepted, reason=outcome.reason, params_path=outcome.params_path,
                               model_tag=self.model_tag)
        if outcome.params is not None:  # the tensors travel in the message: no shared filesystem needed
            msg.params = [LocalParameter(name=name, shape=shape, values=f64(values))
                          for name, shape, values in to_entries(outcome.params)]
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self._pub.publish(msg)
        except Exception:  # noqa: BLE001 - shut down (SIGINT) while adapting: nothing to publish to
            return
        finally:
            self._busy.clear()
        text = (f"adaptation v{outcome.version} {outcome.reason}: held-out loss {outcome.loss_before:.4g} -> "
                f"{outcome.loss_after:.4g} in {outcome.latency_ms:.0f} ms")
        # one severity per call site (rclpy refuses to change it between calls). A refusal is the
        # acceptance test doing its job, not a fault: debug level (every attempt is on the topic)
        if outcome.accepted:
            self.get_logger().info(text)
        else:
            self.get_logger().debug(text)

    # -- meta-training ---------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """Whether a training (or the start-up reuse of one) is running."""
        return self._train_thread is not None and self._train_thread.is_alive()

    def _on_train(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self._start_training(at_start=False)
        return response

    def _plan(self, at_start: bool) -> tuple[str, Path]:
        """("reuse" | "resume" | "new", run folder): at start the newest run is reused or resumed."""
        runs = run_folders(self.train_dir)
        if runs:
            newest = runs[-1]
            if at_start and (newest / "final.pt").is_file():
                return "reuse", newest
            if at_start and (newest / "last.pt").is_file():
                return "resume", newest
            if not any(newest.iterdir()):
                return "new", newest  # left empty (e.g. stopped while generating data)
        number = int(_RUN.match(runs[-1].name).group(1)) + 1 if runs else 1
        return "new", self.train_dir / f"run{number:03d}"

    def _start_training(self, at_start: bool) -> tuple[bool, str]:
        """Start (or refuse) a training on the training thread; (started, message)."""
        with self._lock:
            if self.training:
                return False, f"a training is already running ({self._train_state})"
            if self._train_stop.is_set():
                return False, "shutting down"
            kind, folder = self._plan(at_start)
            folder.mkdir(parents=True, exist_ok=True)
            self._train_state = f"{kind} {folder}"
            self._train_thread = threading.Thread(target=self._train, args=(kind, folder),
                                                  name="metasym-trainer", daemon=True)
            self._train_thread.start()
        verb = {"reuse": "using the model meta-trained in", "resume": "resuming meta-training in",
                "new": "meta-training in"}[kind]
        self.get_logger().info(f"{verb} {folder}")
        return True, f"{verb} {folder}"

    def _train(self, kind: str, folder: Path) -> None:
        """Training thread: data, Trainer.run (stoppable), then the new model for learner and predictor."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)  # per thread (OpenMP)
        log = self.get_logger()
        try:
            if kind != "reuse":
                options, steps = data_options(self._cfg)
                datasets = prepare_datasets(self.system, self.train_data, self.val_data, self.train_dir / "data",
                                            self._train_stop.is_set,
                                            lambda text: log.info(text, throttle_duration_sec=PROGRESS_EVERY_S),
                                            steps=steps, family_options=options)
                if datasets is None:
                    self._log_late("meta-training stopped while generating data")
                    return
                trainer = Trainer(self._cfg, *datasets, folder, max_steps=self.train_steps or None, progress=False,
                                  device=self._device)
                if kind == "resume":
                    try:
                        trainer.resume()
                    except (MetaSymError, KeyError, ValueError) as exc:
                        raise MetaSymError(f"cannot resume {folder / 'last.pt'} ({exc}); remove that run "
                                           "folder or call ~/train for a new run") from None
                self._last_val = math.nan
                log.info(f"meta-training {self.system} in {folder}: {len(datasets[0])} training / "
                         f"{len(datasets[1])} validation systems, steps {trainer.step}..{trainer.total}")
                summary = trainer.run(should_stop=lambda: self._progress(trainer))
                if summary.get("stopped"):
                    self._log_late(f"meta-training stopped at step {summary['steps']}: saved "
                                   f"{summary['checkpoint']} (train_at_start resumes it)")
                    return
                self.trainings.append(summary)
                best = summary["best_val_loss"]
                log.info(f"meta-training done after {summary['steps']} steps (best validation loss "
                         f"{'of the decoder phase: none yet' if best is None else f'{best:.4g}'}): "
                         f"{folder / 'final.pt'}")
            self._use_model(folder / "final.pt")
        except (MetaSymError, RuntimeError, OSError, KeyError, ValueError) as exc:
            log.error(f"meta-training in {folder} failed: {exc}")
        finally:
            with self._lock:
                self._train_state = "idle"

    def _log_late(self, text: str) -> None:
        """Log `text`; after shutdown (SIGINT) straight to stderr, as /rosout is gone by then."""
        if self.context.ok():
            self.get_logger().info(text)
        else:
            print(f"[INFO] [{self.get_name()}]: {text}", file=sys.stderr, flush=True)

    def _progress(self, trainer: Trainer) -> bool:
        """Called by Trainer.run before every outer step: a throttled progress line; true = stop."""
        with self._lock:
            self._train_state = f"step {trainer.step}/{trainer.total} in {trainer.out}"
        if trainer.history:
            row = trainer.history[-1]
            if row["val_loss"] != "":
                self._last_val = float(row["val_loss"])
            val = f"{self._last_val:.4g}" if math.isfinite(self._last_val) else "not yet"
            self.get_logger().info(f"meta-training step {row['step']}/{trainer.total} ({row['phase']}): loss "
                                   f"{row['loss']:.4g}, validation {val}", throttle_duration_sec=PROGRESS_EVERY_S)
        return self._train_stop.is_set()

    def _use_model(self, checkpoint: Path) -> None:
        """Swap a trained model in (versions restart, files in <params_dir>/<tag>) and announce it."""
        path = os.path.abspath(checkpoint)
        model, _, _ = load_model(self.system, path, self._device)  # refuses dims other than the config's
        data = Path(path).read_bytes()
        tag = content_tag(data)
        out_dir = self._params_root / tag if self._params_root is not None else None
        learner = OnlineLearner(model, self.system, out_dir, **self._learner_kwargs)
        with self._lock:
            learner.buffer = self.learner.buffer  # the buffered window stays valid for the new model
            self.learner, self.model_path, self.model_tag = learner, path, tag
            self._paused = False
        try:
            msg = ModelCheckpoint(system=self.system, tag=tag, path=path, data=data,
                                  sha256=hashlib.sha256(data).hexdigest())
            msg.header.stamp = self.get_clock().now().to_msg()
            self._model_pub.publish(msg)
        except Exception:  # noqa: BLE001 - shut down meanwhile: nothing to announce to
            return
        self.get_logger().info(f"using model {path} ({tag}); published on {MODEL_TOPIC}")

    def destroy_node(self) -> None:
        if not hasattr(self, "_train_stop"):  # the constructor failed (a bad parameter): nothing started
            super().destroy_node()
            return
        self._train_stop.set()
        if self._train_thread is not None and self._train_thread.is_alive():
            self._train_thread.join(timeout=STOP_WAIT_S)
            if self._train_thread.is_alive():
                self.get_logger().warning(f"meta-training did not stop within {STOP_WAIT_S:g} s")
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `metasym-learner`."""
    return run_node(LearnerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
