"""The learner node's online work without ROS: states in, adaptations on a worker thread, models swapped.

`LiveLearner` wraps the adaptation policy (`OnlineLearner`: buffer, change tests, trigger, validation,
versions) with what a long-lived process needs, so the ROS learner node stays an adapter:

- states are buffered (bad ones dropped, counted and logged throttled); the predictor's error
  reports feed the trigger (its model error where measured, else the realised error);
- `tick(now)` runs the change tests on the newest transitions, also while an adaptation runs,
  and starts an adaptation on a worker thread when one is due and none is running, so the
  caller's thread (the ROS executor) never waits for one;
- `request()` asks for an adaptation at once (the `~/adapt_now` service);
- `use_model(path)` swaps in a model meta-trained meanwhile: its versions start again at 0, the
  buffered window stays, and its parameter files (if any) go to `<params_root>/<tag>/`;
- adaptation is `paused` while a start-up training makes the first model, or while there is no trained
  model at all (no checkpoint, no training): adapting an untrained model would publish noise.

`publish(outcome, model_tag)` gets every attempt, accepted or refused, on the worker thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from metasym_core.checkpoint import content_tag
from metasym_core.errors import MetaSymError
from metasym_core.models.metasym import MetaSym
from metasym_core.online.learner import AdaptationOutcome, OnlineLearner
from metasym_core.online.predictor import load_model
from metasym_core.online.throttle import Throttled

WARN_EVERY_S = 2.0
STOP_WAIT_S = 2.0  # [s] `stop` waits this long for a running adaptation; a launcher's grace covers every node


class LiveLearner:
    """Buffer, watch, adapt off the caller's thread, swap models (see module doc); thread-safe."""

    def __init__(self, model: MetaSym, system: str, settings: dict, publish: Callable[[AdaptationOutcome, str], None],
                 *, params_root: str | os.PathLike | None = None, max_age_s: float = 1.0, device: str = "auto",
                 model_path: str = "", paused: bool = False, info: Callable[[str], None] = lambda _text: None,
                 debug: Callable[[str], None] = lambda _text: None, warn: Callable[[str], None] = lambda _text: None):
        self.system, self.publish, self.device = system, publish, device
        self.info, self.debug, self.warn = info, debug, Throttled(warn, WARN_EVERY_S)
        self.settings = dict(settings)
        self.params_root = Path(params_root) if params_root else None  # files: an optional extra
        self.learner = OnlineLearner(model, system, self.params_root, **self.settings)
        self.learner.buffer.max_age_s = max_age_s
        self.model_path, self.model_tag = model_path, ""
        self.paused = paused  # no adaptation of an untrained model (a training may replace it)
        self.outcomes: list[AdaptationOutcome] = []
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._force = False
        self._stopped = False
        self._publishing = threading.Lock()  # `stop` returns only between publications, never during one
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        """Warm the adaptation up on the worker thread (no adaptation starts before it is done)."""
        self._busy.set()
        self._worker = threading.Thread(target=self._warm_up, name="metasym-learner", daemon=True)
        self._worker.start()

    def stop(self, wait_s: float = STOP_WAIT_S) -> bool:
        """Start no more adaptations, and wait up to `wait_s` for a running one (or the warm-up) to end; whether
        none runs any longer. One still running is a daemon thread that keeps nothing half-written (parameter
        files are written whole) and publishes nothing any more: the process may end under it."""
        with self._publishing:
            self._stopped = True
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=wait_s)
        return self._worker is None or not self._worker.is_alive()

    # -- settings --------------------------------------------------------------------------------
    def check(self, key: str, value) -> None:
        """Raise MetaSymError/ValueError if setting `key` to `value` is refused (with the others in force)."""
        with self._lock:
            self.learner.check_settings(**{key: value})

    def configure(self, key: str, value) -> None:
        """Set one adaptation setting (`learner.SETTINGS`) at once; it also holds for a model swapped in later."""
        with self._lock:
            self.settings[key] = value
            self.learner.configure(**{key: value})
        self.info(f"adaptation setting {key} = {value!r}")

    def set_max_age(self, value: float) -> None:
        with self._lock:
            self.learner.buffer.max_age_s = float(value)

    # -- inputs ----------------------------------------------------------------------------------
    def on_state(self, system: str, stamp: float, state: np.ndarray, control: np.ndarray, dt: float,
                 now: float) -> str | None:
        """Buffer a state; the rejection reason of a bad one (another system's is ignored: None)."""
        if system != self.system:
            return None
        with self._lock:
            reason = self.learner.push(stamp, state, control, dt, now=now)
            dropped = self.learner.buffer.dropped
        if reason is not None:
            self.warn(reason, f"dropped state ({reason}); {dropped} so far")
        return reason

    def on_metrics(self, system: str, model_mse: float, realised_mse: float) -> None:
        """The predictor's error report: its model error where measured (the part adaptation can fix)."""
        if system == self.system:
            error = model_mse if np.isfinite(model_mse) else realised_mse
            with self._lock:
                self.learner.observe_error(error)

    def request(self) -> tuple[bool, str]:
        """Adapt at the next tick on the buffered window: (scheduled, why or why not)."""
        with self._lock:
            full = self.learner.buffer.full and not self.paused
            self._force = full
            size, capacity = len(self.learner.buffer), self.learner.buffer.capacity
        if full:
            return True, "adaptation scheduled"
        if self.paused:
            return False, "adaptation paused until a trained model is in use (start-up training or ~/train)"
        return False, f"not enough samples yet ({size}/{capacity})"

    # -- adaptation ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether an adaptation (or the warm-up) runs."""
        return self._busy.is_set()

    def tick(self, now: float) -> bool:
        """Watch the newest transitions and start an adaptation on the worker thread when one is due and
        none is running; true when one started."""
        if self.paused or self._stopped:
            return False
        with self._lock:
            self.learner.watch()  # one forward pass on the newest window (bias_threshold, watch_rise)
            if self._busy.is_set():
                return False
            due = (self._force and self.learner.buffer.full) or self.learner.should_adapt(now)
            self._force = False
            if due:
                self._busy.set()
        if due:
            self._worker = threading.Thread(target=self._adapt, args=(now,), name="metasym-learner", daemon=True)
            self._worker.start()
        return due

    def _warm_up(self) -> None:
        try:
            self.learner.warm_up()
        except (MetaSymError, RuntimeError) as exc:
            self.warn("warm-up", f"warm-up adaptation failed: {exc}")
        finally:
            self._busy.clear()

    def _adapt(self, now: float) -> None:
        try:
            with self._lock:  # snapshot the buffer and the model in use; the adaptation runs without the lock
                learner, tag = self.learner, self.model_tag
                arrays = learner.buffer.arrays()
            outcome = learner.adapt_window(*arrays, now=now)
        except (MetaSymError, RuntimeError) as exc:
            self.warn("adapt", f"adaptation failed: {exc}")
            self._busy.clear()
            return
        self.outcomes.append(outcome)
        try:
            with self._publishing:
                if not self._stopped:  # after `stop` the node's publishers may be gone
                    self.publish(outcome, tag)
        finally:
            self._busy.clear()
        text = (f"adaptation v{outcome.version} {outcome.reason}: held-out loss {outcome.loss_before:.4g} -> "
                f"{outcome.loss_after:.4g} in {outcome.latency_ms:.0f} ms")
        # a refusal is the acceptance test doing its job, not a fault: debug (every attempt is published)
        (self.info if outcome.accepted else self.debug)(text)

    # -- models ----------------------------------------------------------------------------------
    def use_model(self, checkpoint: str | os.PathLike) -> tuple[str, bytes]:
        """Swap in the model of `checkpoint` (dimensions checked against the config); versions restart at 0
        and adaptation resumes. Returns (tag, checkpoint bytes) for the predictors."""
        path = os.path.abspath(checkpoint)
        model, _, _ = load_model(self.system, path, self.device)  # refuses dims other than the config's
        data = Path(path).read_bytes()
        tag = content_tag(data)
        with self._lock:
            out_dir = self.params_root / tag if self.params_root is not None else None
            learner = OnlineLearner(model, self.system, out_dir, **self.settings)
            learner.buffer = self.learner.buffer  # the buffered window stays valid for the new model
            self.learner, self.model_path, self.model_tag = learner, path, tag
            self.paused = False
        return tag, data
