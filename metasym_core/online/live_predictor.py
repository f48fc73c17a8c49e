"""The predictor node's work without ROS: states in, predictions out, parameters and models swapped live.

`LivePredictor` is everything the ROS predictor node does between a message arriving and one
leaving, so it is tested without DDS and the node stays an adapter (parameters, topics, messages):

- **states → predictions.** Each state is checked (`ContextWindow`; another system and gaps in
  the step counter are counted too). Once the window is full it is predicted on at once, in the
  caller's thread, when no rollout is running and `max_rate_hz` allows: a hand-off to another
  thread costs ~0.7 ms of latency (it waits for the GIL). Otherwise it stays pending for the worker
  thread, which predicts from the newest pending state, so states never queue behind slow rollouts
  (latency = one rollout, not a queue of them). A state superseded while pending counts as
  "skipped". Each prediction rolls out under the newest fresh control plan (`PlanFollower`).
- **bookkeeping.** After each prediction is out: its realised error against the states that
  arrive later (`RealisedErrorTracker`), and for every `HINDCAST_EVERY` predictions whose horizon
  has arrived one batched rollout of them under the controls that were applied (the model's own
  error, `model_mse`; only the states predicted from, so it costs what the predictions cost).
- **adaptations.** An accepted adaptation's local parameters are checked and swapped in between
  two rollouts, so no prediction is dropped, but only when they belong to the model in use (its
  tag) and are newer than the version in force.
- **new models.** A checkpoint's bytes are checked against their sha256, loaded (`weights_only`)
  and warmed up on a loader thread, then swapped in between two rollouts. One whose dimensions
  or context differ from the running model's is refused. A new model starts at version 0, and a
  newest adaptation that arrived before its model is applied once the model is in.
- **batched rollouts** for MPC clients: K candidate control sequences from one context.
- **no trained model, no predictions.** Built with `trained=False` (an untrained model: the node
  had no checkpoint), it publishes nothing and refuses batched rollouts, and says so once: its
  predictions would be noise. States still fill the window, so it predicts from the first state
  after a learner's trained checkpoint is swapped in.

`publish(token, result, control_source, plan_step)` is called for each prediction, from whichever
thread predicted; `token` is what the caller passed with the state (the node's message header).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.models.metasym import MetaSym
from metasym_core.online.plan import PlanFollower
from metasym_core.online.predictor import OnlinePredictor, PredictionResult, load_model_bytes
from metasym_core.online.realised import MetricsAccumulator, ModelErrorTracker, RealisedErrorTracker
from metasym_core.online.scheduling import background_scheduling
from metasym_core.online.throttle import Throttled

WARN_EVERY_S = 2.0  # throttle of the drop warnings
HINDCAST_EVERY = 10  # predictions per batched hindcast of the model error (model_mse)

Publish = Callable[[object, PredictionResult, str, int], None]


@dataclass(frozen=True)
class Adaptation:
    """An accepted adaptation as a learner announces it (AdaptationStatus)."""

    model_tag: str  # "" = the model the predictor started with, else a learner-trained model's tag
    version: int
    entries: Sequence[tuple[str, Sequence[int], Sequence[float]]] = ()  # local_params.to_entries
    params_path: str = ""  # an older learner's file instead of entries
    loss_before: float = math.nan
    loss_after: float = math.nan


@dataclass(frozen=True)
class ModelUpdate:
    """A checkpoint a learner meta-trained, as its bytes (ModelCheckpoint)."""

    data: bytes
    sha256: str
    tag: str
    path: str = ""


def stop_threads(stop: threading.Event, wake: threading.Event, *threads: threading.Thread | None,
                 timeout_s: float = 5.0) -> None:
    """Ask a service's threads to end (`stop` set, `wake` set so that none sleeps on) and join each one running."""
    stop.set()
    wake.set()
    for thread in threads:
        if thread is not None and thread.is_alive():
            thread.join(timeout=timeout_s)


def adopt(predictor: OnlinePredictor, model_tag: str, adaptation: Adaptation, info: Callable[[str], None],
          warn: Throttled) -> bool:
    """Swap `adaptation`'s local parameters into `predictor` if they belong to its model (`model_tag`: "" = the
    model a node started with) and are newer than the version in force; parameters that do not fit the model
    are warned about (throttled) and left out. True when they are in force now. The predictor node and the
    controller node apply the learner's adaptations through this one rule."""
    if adaptation.model_tag != model_tag or adaptation.version <= predictor.version:
        return False  # another model's (an older one, or one not loaded yet), or not newer
    try:
        if adaptation.entries:
            predictor.set_local_entries(adaptation.entries, adaptation.version)
        else:
            predictor.load_local(adaptation.params_path, adaptation.version)
    except MetaSymError as exc:
        warn("adaptation", f"adaptation v{adaptation.version} not used: {exc}")
        return False
    info(f"using local parameters v{adaptation.version} (loss {adaptation.loss_before:.4g} -> "
         f"{adaptation.loss_after:.4g})")
    return True


def load_compatible(system: str, update: ModelUpdate, running: MetaSym, device: str = "auto") -> MetaSym:
    """The model a learner sent (its bytes checked against their sha256, `load_model_bytes`), refused with
    MetaSymError where its state/control dimensions or context differ from the `running` model's."""
    model, _ = load_model_bytes(system, update.data, update.sha256, device)
    if (model.state_dim, model.control_dim, model.context) != (running.state_dim, running.control_dim,
                                                                running.context):
        raise MetaSymError(f"state/control dims and context {model.state_dim}/{model.control_dim}/"
                           f"{model.context} differ from the running model's {running.state_dim}/"
                           f"{running.control_dim}/{running.context}")
    return model


class LivePredictor:
    """States and plans in, predictions out (see module doc); thread-safe."""

    def __init__(self, model: MetaSym, system: str, publish: Publish, *, horizon: int = 30,
                 max_age_s: float = 1.0, max_rate_hz: float = 200.0, plan_max_age_s: float = 0.5,
                 threads: int = 1, batch_threads: int = 1, device: str = "auto", model_path: str = "",
                 trained: bool = True, info: Callable[[str], None] = lambda _text: None,
                 warn: Callable[[str], None] = lambda _text: None):
        self.system, self.publish, self.info, self.device = system, publish, info, device
        self.trained = trained  # False: an untrained model, nothing published until a trained one arrives
        self.withheld = 0  # states not predicted on for want of a trained model
        if not trained:
            warn(f"no trained {system} model: publishing no predictions (they would be meaningless) until a "
                 "learner sends a trained checkpoint (learner train_at_start), or give the predictor a checkpoint")
        self.warn = Throttled(warn, WARN_EVERY_S)
        self.default_threads = torch.get_num_threads()
        self.threads = threads if threads > 0 else self.default_threads
        self.batch_threads = batch_threads
        self.predictor = OnlinePredictor(model, horizon)
        self.model_path, self.model_tag, self.model_swaps, self.models_refused = model_path, "", 0, 0
        self.window = self.predictor.make_window(max_age_s)
        self.plans = PlanFollower(model.control_dim, system, plan_max_age_s)
        self.tracker = RealisedErrorTracker()
        self.hindcasts = ModelErrorTracker(self.predictor.context, horizon, every=HINDCAST_EVERY, predicted_only=True)
        self.metrics = MetricsAccumulator()
        self.dropped: Counter[str] = Counter()  # drops the window and plans do not count (system, lost, skipped, error)
        self.predictions = 0
        self._min_period = 1.0 / max_rate_hz
        self._reported_drops = 0
        self._last_step = -1  # highest step seen: gaps are states lost on the way
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: tuple[int, float, object] | None = None  # (step, stamp, token) of the newest unpredicted state
        self._busy = True  # a rollout is running (the worker's warm-up first)
        self._last_rollout = -math.inf
        self._latest: Adaptation | None = None  # newest accepted adaptation of any model
        self._model_request: ModelUpdate | None = None  # newest announced checkpoint not yet loaded
        self._loading = False
        self._loader: threading.Thread | None = None
        self.ready = threading.Event()  # set once the worker's warm-up rollout is done
        self._worker = threading.Thread(target=self._predict_loop, name="metasym-predictor", daemon=True)

    def start(self) -> None:
        """Start the worker thread: it warms the model up, then predicts what the caller's thread could not."""
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker and loader threads (an unfinished rollout or load ends first)."""
        stop_threads(self._stop, self._wake, self._worker, self._loader)

    # -- live settings ---------------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        return self.predictor.horizon

    @horizon.setter
    def horizon(self, value: int) -> None:
        with self._lock:
            self.predictor.horizon = int(value)
            self.hindcasts = ModelErrorTracker(self.predictor.context, int(value), every=HINDCAST_EVERY,
                                               predicted_only=True)

    @property
    def max_rate_hz(self) -> float:
        return 1.0 / self._min_period

    @max_rate_hz.setter
    def max_rate_hz(self, value: float) -> None:
        with self._lock:
            self._min_period = 1.0 / float(value)

    def set_max_age(self, value: float) -> None:
        with self._lock:
            self.window.max_age_s = float(value)

    def set_plan_max_age(self, value: float) -> None:
        with self._lock:
            self.plans.max_age_s = float(value)

    @property
    def dropped_total(self) -> int:
        """Every dropped or skipped message so far (window and plan rejections + the rest)."""
        return self.window.dropped + self.plans.dropped + sum(self.dropped.values())

    # -- plans and states ------------------------------------------------------------------------
    def on_plan(self, system: str, step: int, stamp: float, dt: float, controls, horizon: int, control_dim: int,
                now: float) -> str | None:
        """Keep a controller's plan (flat controls, as a ControlPlan carries them); the rejection reason."""
        with self._lock:
            reason = self.plans.push_flat(step, stamp, dt, controls, horizon, control_dim, system, now)
            dropped = self.plans.dropped
        if reason is not None:
            self.warn(f"plan-{reason}", f"dropped control plan ({reason}): system {system!r}, step {step}, "
                      f"{np.size(controls)} values for {horizon}x{control_dim}; {dropped} dropped so far")
        return reason

    def on_state(self, system: str, step: int, stamp: float, state: np.ndarray, control: np.ndarray, dt: float,
                 now: float, token: object = None) -> str | None:
        """Take a state: predict from it (here, or on the worker), then score earlier predictions against it.
        Returns the rejection reason of a bad state (dropped, counted, logged throttled)."""
        if system != self.system:
            self.dropped["system"] += 1
            self.warn("system", f"dropped state (system): {system!r}, expected {self.system!r}")
            return "system"
        if step > self._last_step + 1 and self._last_step >= 0:  # gap in the publisher's counter
            self.dropped["lost"] += step - self._last_step - 1
            self.warn("lost", f"{step - self._last_step - 1} states lost before step {step} (transport or flood)")
        self._last_step = max(self._last_step, step)
        with self._lock:
            reason = self.window.push(stamp, state, control, dt, now=now, step=step)
        if reason is not None:
            self.warn(reason, f"dropped state ({reason}): step {step}, stamp {stamp:.3f}, dim "
                      f"{np.size(state)}/{np.size(control)}; {self.window.dropped} dropped so far")
            return reason
        inline = False
        with self._lock:
            queued = self.window.full and self.trained
            self.withheld += self.window.full and not self.trained
            if queued:
                if self._pending is not None:
                    self.dropped["skipped"] += 1  # superseded before its rollout started
                self._pending = (step, stamp, token)
                inline = not self._busy and time.monotonic() - self._last_rollout >= self._min_period
                self._busy = self._busy or inline
        if inline:
            self._predict_pending()
        elif queued:
            self._wake.set()
        # bookkeeping once the prediction is out (it does not need it)
        with self._lock:
            for evaluation in self.tracker.observe(step, state):
                self.metrics.add(evaluation)
            self.hindcasts.observe(step, state, control, dt)
        return None

    def _predict_loop(self) -> None:
        """Worker: warm up, then predict from the newest pending state the caller's thread left (a rollout
        was running or the rate guard held it back); at most max_rate_hz rollouts per second."""
        torch.set_num_threads(self.threads)  # OpenMP thread counts are per thread: set it in this one too
        try:
            self.predictor.warm_up()  # pay the first-call cost before the first state, not on it
            ms = self.predictor.warm_up()  # ... and time a warm one: what each state will cost
            rate = min(1000.0 / ms, self.max_rate_hz) if ms > 0 else self.max_rate_hz
            self.info(f"one rollout of {self.predictor.horizon} steps takes {ms:.2f} ms here: up to "
                      f"{rate:.0f} predictions/s (max_rate_hz {self.max_rate_hz:g}); states faster than that "
                      "are predicted from the newest one")
        except (MetaSymError, RuntimeError) as exc:
            self.warn("warm-up", f"warm-up rollout failed: {exc}")
        with self._lock:
            self._busy = False
        self.ready.set()
        self._wake.set()  # states that came during the warm-up
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.1):
                continue
            with self._lock:
                pause = self._min_period - (time.monotonic() - self._last_rollout)
            if pause > 0:
                time.sleep(pause)  # rate guard: newer states replace the pending one meanwhile
            with self._lock:
                self._wake.clear()
                if self._busy or self._pending is None:
                    continue  # the caller's thread is predicting, or did
                self._busy = True
            self._predict_pending()

    def _predict_pending(self) -> None:
        """Roll out from the pending state and publish, on whichever thread claimed `_busy`."""
        try:
            with self._lock:
                pending, self._pending = self._pending, None
                if pending is None:
                    return
                step, stamp, token = pending
                states, controls, steps = self.window.arrays()
                future, source, plan = self.plans.future_controls(step, stamp, steps[-1], self.predictor.horizon,
                                                                  controls[-1])
                self._last_rollout = time.monotonic()
                predictor = self.predictor
            try:
                result = predictor.predict_arrays(states, controls, steps, future_controls=future)
            except (MetaSymError, RuntimeError) as exc:
                self.dropped["error"] += 1
                self.warn("error", f"dropped state (error): rollout failed: {exc}")
                return
            if self._stop.is_set():
                return
            self.publish(token, result, source, plan.step if plan is not None else 0)
            with self._lock:
                self.predictions += 1
                self.hindcasts.predicted(step)
                for evaluation in self.tracker.add(step, result.states, result.version):
                    self.metrics.add(evaluation)
                self.metrics.latency_ms.append(result.latency_ms)
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
            self.warn("hindcast", f"model-error hindcast failed: {exc}")
            return
        with self._lock:
            self.metrics.model_mse.extend(float(e) for e in errors)

    # -- metrics ---------------------------------------------------------------------------------
    def report(self) -> dict[str, float | int]:
        """The metrics since the last report (`MetricsAccumulator.report`), plus `dropped`: messages
        dropped or skipped since the last report, and `params_version` in force when none was scored."""
        with self._lock:
            report = self.metrics.report()
        total = self.dropped_total
        report["dropped"], self._reported_drops = total - self._reported_drops, total
        report["params_version"] = int(report["params_version"] or self.predictor.version)
        return report

    # -- adaptations -----------------------------------------------------------------------------
    def on_adaptation(self, system: str, adaptation: Adaptation) -> bool:
        """Swap in an accepted adaptation's local parameters if they belong to the model in use and are
        newer; kept either way for a model still loading. True when they are in force now."""
        if system != self.system:
            return False
        with self._lock:
            self._latest = adaptation
        return self._apply(adaptation)

    def _apply(self, adaptation: Adaptation) -> bool:
        with self._lock:
            predictor, tag = self.predictor, self.model_tag
        return adopt(predictor, tag, adaptation, self.info, self.warn)

    # -- new models ------------------------------------------------------------------------------
    def on_model(self, system: str, update: ModelUpdate) -> bool:
        """Load a checkpoint a learner sent on the loader thread (never the caller's); false when it is
        another system's, empty, or the model in use (a transient-local replay)."""
        if system != self.system or not update.data or update.tag == self.model_tag:
            return False
        with self._lock:
            self._model_request = update
            start, self._loading = not self._loading, True
        if start:
            self._loader = threading.Thread(target=self._load_models, name="metasym-model-loader", daemon=True)
            self._loader.start()
        return True

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded."""
        with self._lock:
            return self._loading

    def _load_models(self) -> None:
        """Loader thread: load, check and warm up the newest announced checkpoint, then swap it in. Background
        work: normal-scheduled even in a real-time predictor, so that a load never holds up predictions."""
        background_scheduling()
        torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            with self._lock:
                update, self._model_request = self._model_request, None
                if update is None:
                    self._loading = False
                    return
            try:
                self._swap_model(update)
            except (MetaSymError, RuntimeError, OSError) as exc:
                self.models_refused += 1
                self.warn("model", f"model {update.tag} ({update.path}) not used: {exc}")
        with self._lock:
            self._loading = False

    def _swap_model(self, update: ModelUpdate) -> None:
        model = load_compatible(self.system, update, self.predictor.model, self.device)
        predictor = OnlinePredictor(model, self.predictor.horizon)
        predictor.warm_up()  # first-call cost here, not in the next prediction
        with self._lock:
            predictor.horizon = self.predictor.horizon  # a horizon set meanwhile
            self.predictor, self.model_path, self.model_tag = predictor, update.path, update.tag
            self.model_swaps += 1
            latest = self._latest
            first_trained, self.trained = not self.trained, True
        self.info(f"using model {update.path} ({update.tag}, swap {self.model_swaps}); local parameters start "
                  "again at v0" + ("; publishing predictions from now on" if first_trained else ""))
        if latest is not None:
            self._apply(latest)  # its parameters arrived before the model itself

    # -- batched rollouts ------------------------------------------------------------------------
    def rollout_batch(self, context_len: int, candidates: int, horizon: int, state_dim: int, control_dim: int,
                      context_states, context_controls, context_dt, candidate_controls,
                      dt: float) -> tuple[np.ndarray, int]:
        """K candidate control sequences from one context, all flat as a RolloutBatch request carries them
        → (trajectories [K, H, D], parameter version). Raises MetaSymError naming a bad request."""
        predictor = self.predictor  # one model for the whole call, even if a new one is swapped in
        if not self.trained:
            raise MetaSymError(f"no trained {self.system} model yet: rollouts would be meaningless")
        D, m = predictor.model.state_dim, predictor.model.control_dim
        L, K, H = context_len, candidates, horizon
        if (state_dim, control_dim) != (D, m):
            raise MetaSymError(f"state_dim/control_dim must be {D}/{m}, got {state_dim}/{control_dim}")
        if K < 1 or H < 1 or L < 1:
            raise MetaSymError("context_len, horizon and candidates must be >= 1")
        arrays = {"context_states": (context_states, (L, D)), "context_controls": (context_controls, (L, m)),
                  "context_dt": (context_dt, (L,)), "candidate_controls": (candidate_controls, (K, H, m))}
        shaped = {}
        for name, (values, shape) in arrays.items():
            flat = np.asarray(values, dtype=np.float64).reshape(-1)
            if flat.size != math.prod(shape):
                raise MetaSymError(f"{name} has {flat.size} values, expected {math.prod(shape)}")
            shaped[name] = flat.reshape(shape)
        torch.set_num_threads(self.batch_threads if self.batch_threads > 0 else self.default_threads)
        try:
            return predictor.rollout_batch(shaped["context_states"], shaped["context_controls"],
                                           shaped["context_dt"], shaped["candidate_controls"], dt)
        finally:
            torch.set_num_threads(self.threads)
