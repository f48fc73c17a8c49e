"""The controller node's work without ROS: states in, MPPI plans on the MetaSym model out, adaptations live.

`LiveController` is what the ROS controller node does between a state arriving and a plan leaving, so it is
tested without DDS and the node stays an adapter:

- **states.** Each state is checked (another system, wrong dimension, NaN/Inf, dt <= 0, a stamp not after the
  last: dropped, counted, logged throttled) and queued for the solver. A gap in the step counter (states lost
  on the way, a restarted simulator) or a new dt starts a new context: the model's window must hold
  consecutive states.
- **plans.** A worker thread solves from the newest queued state only, so plans never queue behind slow
  solves: the states before it only fill the context (`MetaSymMPPI.observe`, every state with the control
  applied from it), and the warm start shifts by the steps skipped. Each solve is
  `MetaSymMPPI.plan(t, state, applied=...)`, t = step · dt since the first state solved from, along an
  `Approach` from where the vehicle was then to the reference, then the reference: one period of actuation
  delay, so ``plan[0]`` is the control the plant already applies from that state
  (`metasym_core.online.plant`); and a solve slower than a period fixes as many more entries as states came
  in during the last one (the plant flies the previous plan until this one arrives). The plan goes out
  (`publish(token, plan)`) with the state's step, stamp
  (its `token`, the node's message header) and dt.
- **adaptations** of the learner are applied the predictor's way (`live_predictor.adopt`: only those of
  the model in use, only newer versions), before the next solve; **models** the learner meta-trained are
  loaded and warmed up on a loader thread (`live_predictor.load_compatible`) and replace the controller's
  model before the next solve, keeping the context and the warm start.

`solve_pending()` is one solve on the caller's thread: the worker calls it, and so do tests, lock-stepped.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from metasym_core.control.metasym_mppi import MetaSymMPPI
from metasym_core.control.mppi import MPPIConfig
from metasym_core.control.reference import Approach, FigureEight
from metasym_core.errors import MetaSymError
from metasym_core.models.metasym import MetaSym
from metasym_core.online.live_predictor import Adaptation, ModelUpdate, adopt, load_compatible, stop_threads
from metasym_core.online.plan import ControlPlan
from metasym_core.online.predictor import OnlinePredictor
from metasym_core.online.throttle import Throttled
from metasym_core.online.window import ContextWindow
from metasym_core.systems import CLOSED_LOOP_SYSTEMS
from metasym_core.systems.quadrotor import position_of

WARN_EVERY_S = 2.0
#: The systems a MetaSym MPPI can fly (its cost and limits are the quadrotor's).
SYSTEMS: tuple[str, ...] = CLOSED_LOOP_SYSTEMS  # the systems it flies (`metasym_core.systems.SPECS`)

Publish = Callable[[object, ControlPlan], None]


@dataclass(frozen=True)
class _State:
    step: int
    stamp: float
    state: np.ndarray
    control: np.ndarray
    dt: float
    token: object
    new_context: bool  # the context restarts at this state


class LiveController:
    """States in, MPPI plans out on a worker thread (see module doc); thread-safe."""

    def __init__(self, model: MetaSym, system: str, publish: Publish, *, reference: FigureEight,
                 config: MPPIConfig, threads: int = 1, seed: int = 0, device: str = "auto", model_path: str = "",
                 info: Callable[[str], None] = lambda _text: None,
                 warn: Callable[[str], None] = lambda _text: None):
        if system not in SYSTEMS:
            raise MetaSymError(f"the MetaSym MPPI controller flies {', '.join(SYSTEMS)}, not {system!r}")
        self.system, self.publish, self.info, self.warn = system, publish, info, Throttled(warn, WARN_EVERY_S)
        self.reference, self.config, self.seed, self.device = reference, config, seed, device
        self.threads = threads if threads > 0 else torch.get_num_threads()
        self.model, self.model_path, self.model_tag = model, model_path, ""
        self.mppi: MetaSymMPPI | None = None  # built at the first state (its dt)
        self._window = ContextWindow(model.state_dim, model.control_dim, 1)  # validation of each state
        self.dropped: Counter[str] = Counter()  # besides the window's rejections: system, error
        self.plans = self.skipped = self.new_contexts = self.model_swaps = self.models_refused = 0
        self._last: tuple[int, float] | None = None  # (step, dt) of the newest accepted state
        self._solved_step: int | None = None  # the state the warm start was last shifted from
        self._origin: tuple[float, np.ndarray] | None = None  # (time, position) of the first state solved from
        self._pending: list[_State] = []
        self._solve_ms: list[float] = []  # since the last report
        self._errors: list[float] = []  # position error [m] against the reference at each solve, since then
        self._latest: Adaptation | None = None  # the newest accepted adaptation announced
        self._tried: Adaptation | None = None  # the one last offered to the MPPI's model (applied or refused)
        self._request: ModelUpdate | None = None  # the newest announced model not yet loaded
        self._loaded: tuple[MetaSym, ModelUpdate] | None = None  # a loaded model waiting for the next solve
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self.ready = threading.Event()  # set once the worker's warm-up solve is done
        self._worker = threading.Thread(target=self._loop, name="metasym-controller", daemon=True)

    def start(self) -> None:
        """Start the worker thread: it warms the model up, then solves from each newest state."""
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker and loader threads (a solve or load in progress ends first)."""
        stop_threads(self._stop, self._wake, self._worker, self._loader)

    @property
    def dropped_total(self) -> int:
        """Every dropped state so far (the skipped ones, which still fill the context, are not dropped)."""
        return self._window.dropped + sum(self.dropped.values())

    @property
    def version(self) -> int:
        """The version of the local parameters in force (0: the model's own)."""
        return self.mppi.predictor.version if self.mppi is not None else 0

    def configure(self, **settings) -> None:
        """Live settings, in force from the next solve: `noise_std`, `temperature` (of the MPPI config) and
        `reference` (a FigureEight). MetaSymError on a bad value (nothing changes)."""
        reference = settings.pop("reference", self.reference)
        config = dataclasses.replace(self.config, **settings)  # MPPIConfig validates
        with self._lock:
            self.reference, self.config = reference, config

    # -- messages in -----------------------------------------------------------------------------
    def on_state(self, system: str, step: int, stamp: float, state, control, dt: float,
                 token: object = None) -> str | None:
        """Queue a state for the next solve; its rejection reason (dropped, counted, logged throttled) or None."""
        if system != self.system:
            self.dropped["system"] += 1
            self.warn("system", f"dropped state (system): {system!r}, expected {self.system!r}")
            return "system"
        with self._lock:
            reason = self._window.push(stamp, state, control, dt, step=step)
            if reason is None:
                new = self._last is None or (step, dt) != (self._last[0] + 1, self._last[1])
                self.new_contexts += new and self._last is not None
                self._last = (step, float(dt))
                self._pending.append(_State(step, float(stamp), np.array(state, dtype=np.float64),
                                            np.array(control, dtype=np.float64), float(dt), token, new))
                if len(self._pending) > 2 * self.model.context:  # a stalled solver: the newest states
                    self.skipped += len(self._pending) - self.model.context  # still fill the whole context
                    del self._pending[:-self.model.context]
        if reason is not None:
            self.warn(reason, f"dropped state ({reason}): step {step}, stamp {stamp:.3f}, dim "
                      f"{np.size(state)}/{np.size(control)}; {self.dropped_total} dropped so far")
            return reason
        self._wake.set()
        return None

    def on_adaptation(self, system: str, adaptation: Adaptation) -> bool:
        """Keep an accepted adaptation of the learner for the next solve; false for another system's."""
        if system != self.system:
            return False
        with self._lock:
            self._latest = adaptation
        self._wake.set()
        return True

    def on_model(self, system: str, update: ModelUpdate) -> bool:
        """Load a model the learner sent on the loader thread; false when it is another system's, empty, or
        the model in use (a transient-local replay)."""
        if system != self.system or not update.data or update.tag == self.model_tag:
            return False
        with self._lock:
            self._request = update
            if self._loader is None:
                self._loader = threading.Thread(target=self._load_models, name="metasym-controller-loader",
                                                daemon=True)
                self._loader.start()
        return True

    # -- solving ---------------------------------------------------------------------------------
    def solve_pending(self) -> ControlPlan | None:
        """Solve from the newest queued state and publish its plan (None: nothing queued, or the solve failed)."""
        with self._lock:
            batch, self._pending = self._pending, []
            loaded, self._loaded = self._loaded, None
            latest, reference, config = self._latest, self.reference, self.config
        if not batch:
            return None
        newest = batch[-1]
        if self._origin is None:  # the controller takes over here: the reference begins with an approach
            self._origin = (newest.step * newest.dt, position_of(newest.state))
        mppi = self._controller(newest.dt, loaded)
        mppi.reference, mppi.mppi.config = Approach.towards(reference, self._origin[1]), config
        if latest is not None and latest is not self._tried:  # new, or the MPPI is (its parameters: v0)
            self._tried = latest
            adopt(mppi.predictor, self.model_tag, latest, self.info, self.warn)
        for item in batch:
            if item.new_context:
                mppi.history.clear()
                self._solved_step = None
            if item is not newest:
                mppi.observe(item.step * item.dt, item.state, item.control)
        if self._solved_step is not None:  # the warm start moves on by the steps not solved from
            for _ in range(min(newest.step - self._solved_step - 1, config.horizon)):
                mppi.mppi.shift()
        t = newest.step * newest.dt - self._origin[0]  # along the approach, then the reference
        error = float(np.linalg.norm(position_of(newest.state) - mppi.reference.position(t)))
        # the plant applies this state's control now and flies the previous plan (the warm start, shifted to
        # this state) until this one arrives: about as many steps as came in during the last solve
        lead = min(len(batch), config.horizon)
        applied = np.vstack([newest.control[None], mppi.mppi.plan[1:lead]])
        try:
            controls = mppi.plan(t, newest.state, applied=applied)
        except (MetaSymError, RuntimeError) as exc:
            self.dropped["error"] += 1
            self.warn("error", f"no plan from step {newest.step}: {exc}")
            controls = None
        mppi.observe(t, newest.state, newest.control)
        self._solved_step = newest.step
        with self._lock:
            self._solve_ms.extend(mppi.solve_ms)
            self._errors.append(error)
            self.skipped += len(batch) - 1
        mppi.solve_ms.clear()
        if controls is None or self._stop.is_set():
            return None
        plan = ControlPlan(newest.step, newest.stamp, newest.dt, controls, self.system)
        self.publish(newest.token, plan)
        self.plans += 1
        return plan

    def _controller(self, dt: float, loaded: tuple[MetaSym, ModelUpdate] | None) -> MetaSymMPPI:
        """The MPPI for states of `dt`: built at the first state, again for a new dt or a new model (keeping the
        context and warm start of the same dt)."""
        old = self.mppi
        if loaded is not None:
            self.model, update = loaded
            self.model_path, self.model_tag = update.path, update.tag
            self.model_swaps += 1
            self.info(f"using model {update.path} ({update.tag}, swap {self.model_swaps}); local parameters "
                      "start again at v0")
        elif old is not None and old.dt == dt:
            return old
        self.mppi = MetaSymMPPI(self.model, self.reference, dt, self.config, None, seed=self.seed)
        self._tried = None
        if old is not None and old.dt == dt:
            self.mppi.history.extend(old.history)
            self.mppi.mppi.plan = old.mppi.plan.copy()
        return self.mppi

    def _loop(self) -> None:
        """Worker: warm up, then solve from the newest state whenever states came."""
        torch.set_num_threads(self.threads)  # OpenMP thread counts are per thread: set it in this one
        try:
            self._warm_up(self.model)
        except (MetaSymError, RuntimeError) as exc:
            self.warn("warm-up", f"warm-up rollout failed: {exc}")
        self.ready.set()
        while not self._stop.is_set():
            if self._wake.wait(timeout=0.1):
                self._wake.clear()
                try:
                    self.solve_pending()
                except Exception as exc:  # noqa: BLE001 - a solver that dies leaves the plant without plans
                    self.dropped["error"] += 1
                    self.warn("error", f"solve failed: {type(exc).__name__}: {exc}")

    def _warm_up(self, model: MetaSym) -> None:
        """One throw-away rollout of a solve's size (the first call pays lazy initialisation)."""
        c, D, m = model.context, model.state_dim, model.control_dim
        candidates = np.zeros((self.config.samples, self.config.horizon, m))
        OnlinePredictor(model, 1).rollout_candidates(np.zeros((c, D)), np.zeros((c - 1, m)), candidates, 0.02)

    def _load_models(self) -> None:
        """Loader thread: load, check and warm up the newest announced model; the next solve swaps it in."""
        torch.set_num_threads(self.threads)
        while True:
            with self._lock:
                update, self._request = self._request, None
                if update is None or self._stop.is_set():
                    self._loader = None
                    return
            try:
                model = load_compatible(self.system, update, self.model, self.device)
                self._warm_up(model)
            except (MetaSymError, RuntimeError, OSError) as exc:
                self.models_refused += 1
                self.warn("model", f"model {update.tag} ({update.path}) not used: {exc}")
                continue
            with self._lock:
                self._loaded = (model, update)

    # -- metrics ---------------------------------------------------------------------------------
    def report(self) -> dict[str, float | int]:
        """Solve times (count, p50, p99 [ms]) and the tracking error (RMSE [m] of the position against the
        reference at the states solved from) since the last report, and the counters so far."""
        with self._lock:
            times, self._solve_ms = self._solve_ms, []
            errors, self._errors = self._errors, []
        p50, p99 = (np.percentile(times, [50, 99]) if times else (math.nan, math.nan))
        rmse = float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
        return {"solves": len(times), "solve_ms_p50": float(p50), "solve_ms_p99": float(p99),
                "tracking_rmse_m": rmse, "plans": self.plans,
                "skipped": self.skipped, "dropped": self.dropped_total, "new_contexts": self.new_contexts,
                "version": self.version}
