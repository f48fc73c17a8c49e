"""Realised error of earlier predictions, once the true states they predicted arrive.

A prediction made from the sample with step counter n predicts, at index k, the
state of step n + 1 + k. Keying on the simulator's step counter (not on time)
keeps the match exact under jittered steps; a step that never arrives (lost in
transport) is simply left out of that prediction's error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Pending:
    base_step: int
    states: np.ndarray  # [H, D]
    version: int
    sum_sq: float = 0.0
    count: int = 0  # matched steps
    step1: float | None = None


@dataclass
class Evaluation:
    """Realised error of one finished prediction."""

    base_step: int
    version: int
    mse: float  # mean over the matched steps and coordinates
    mse_step1: float | None  # first predicted step, if it arrived
    matched: int  # number of predicted steps that were matched


@dataclass
class RealisedErrorTracker:
    """Pending predictions, compared step by step with the states that arrive."""

    max_pending: int = 1000
    history: int = 64  # recent states kept for predictions registered after their states arrived
    _pending: list[_Pending] = field(default_factory=list)
    _recent: deque = field(default_factory=deque)

    def add(self, base_step: int, states: np.ndarray, version: int = 0) -> list[Evaluation]:
        """Register a prediction `states [H, D]` made from the sample of `base_step`.

        States of later steps that already arrived (the prediction ran while they came
        in) are matched at once; returns the predictions this finished (usually none).
        """
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[0] == 0:
            raise ValueError(f"prediction states must be [H>=1, D], got {list(states.shape)}")
        pending = _Pending(int(base_step), states.copy(), int(version))
        self._pending.append(pending)
        if len(self._pending) > self.max_pending:  # bounded memory if states stop arriving
            del self._pending[: len(self._pending) - self.max_pending]
        done: list[Evaluation] = []
        for step, state in [(s, x) for s, x in self._recent if s > base_step]:
            done += self._match([pending], step, state)
        return done

    def observe(self, step: int, state: np.ndarray) -> list[Evaluation]:
        """Compare an arrived state with every pending prediction covering `step`; return finished ones."""
        state = np.asarray(state, dtype=np.float64)
        self._recent.append((int(step), state))
        while len(self._recent) > self.history:
            self._recent.popleft()
        return self._match(self._pending, step, state)

    def _match(self, candidates: list[_Pending], step: int, state: np.ndarray) -> list[Evaluation]:
        done: list[Evaluation] = []
        finished: set[int] = set()
        for p in candidates:
            k = step - p.base_step - 1
            horizon = p.states.shape[0]
            if 0 <= k < horizon and state.shape == p.states[k].shape:
                sq = float(np.mean((p.states[k] - state) ** 2))
                p.sum_sq += sq
                p.count += 1
                if k == 0:
                    p.step1 = sq
            if k >= horizon - 1:  # this was (or passed) the last predicted step
                finished.add(id(p))
                if p.count:
                    done.append(Evaluation(p.base_step, p.version, p.sum_sq / p.count, p.step1, p.count))
        if finished:
            self._pending = [p for p in self._pending if id(p) not in finished]
        return done

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class MetricsAccumulator:
    """Aggregates evaluations and latencies between two metric reports."""

    mse: list[float] = field(default_factory=list)
    mse_step1: list[float] = field(default_factory=list)
    model_mse: list[float] = field(default_factory=list)  # hindcasts (`ModelErrorTracker`)
    latency_ms: list[float] = field(default_factory=list)
    version: int = 0

    def add(self, evaluation: Evaluation) -> None:
        self.mse.append(evaluation.mse)
        if evaluation.mse_step1 is not None:
            self.mse_step1.append(evaluation.mse_step1)
        self.version = evaluation.version

    def report(self) -> dict[str, float | int]:
        """Means since the previous report (NaN where nothing was measured); then reset."""
        out = {
            "realised_mse": float(np.mean(self.mse)) if self.mse else float("nan"),
            "realised_mse_step1": float(np.mean(self.mse_step1)) if self.mse_step1 else float("nan"),
            "model_mse": float(np.mean(self.model_mse)) if self.model_mse else float("nan"),
            "latency_ms": float(np.mean(self.latency_ms)) if self.latency_ms else float("nan"),
            "params_version": self.version,
            "evaluations": len(self.mse),
        }
        self.mse, self.mse_step1, self.model_mse, self.latency_ms = [], [], [], []
        return out


@dataclass
class Hindcast:
    """Inputs of a batch of hindcasts: rollouts from past contexts under the controls then applied."""

    base_steps: list[int]
    states: np.ndarray  # [n, c, D] context ending at each base step
    controls: np.ndarray  # [n, c, m]
    steps: np.ndarray  # [n, c + H] step sizes of the context and the horizon
    future_controls: np.ndarray  # [n, H, m] applied at the predicted states
    truth: np.ndarray  # [n, H, D] the states that arrived

    def mse(self, predicted: np.ndarray) -> np.ndarray:
        """Per-hindcast mean squared error of `predicted [n, H, D]` against the truth."""
        return ((np.asarray(predicted, dtype=np.float64) - self.truth) ** 2).mean(axis=(1, 2))


class ModelErrorTracker:
    """The model's own error: rollouts from past contexts under the controls that were applied.

    The realised error of a published prediction mixes two things: the model's
    error and the guess of the future controls (held constant: a controller
    manoeuvring changes them every step). Once the H states after a sample have
    arrived, their controls are known, so re-running the rollout from that
    sample's context with them measures the dynamics model alone — the error that
    adaptation can reduce. Samples are collected and scored `every` at a time
    (one batched rollout), always with the parameters in force at scoring time.
    Only contiguous runs of step counters are used (a gap restarts the history).
    With `predicted_only`, only the samples marked by `predicted` (those a prediction was
    published from) are rerun: a predictor that predicts from a quarter of the states (the
    spring mesh) would otherwise spend four times its prediction work on hindcasts.
    """

    def __init__(self, context: int, horizon: int, every: int = 10, predicted_only: bool = False):
        if min(context, horizon, every) < 1:
            raise ValueError(f"context, horizon and every must be >= 1, got {context}, {horizon}, {every}")
        self.context, self.horizon, self.every = int(context), int(horizon), int(every)
        self.predicted_only = predicted_only
        self._marks: set[int] = set()  # steps predicted from, whose horizon has not arrived yet
        # room for hindcasts that wait a while for `due` (the caller may be busy); older ones are dropped
        self._rows: deque = deque(maxlen=self.context + self.horizon + 4 * self.every)
        self._ready: list[int] = []  # base steps whose horizon has arrived, not yet scored

    def observe(self, step: int, state: np.ndarray, control: np.ndarray, dt: float) -> None:
        """Record one sample (in step order; a gap or a step back restarts the history)."""
        step = int(step)
        if self._rows and step != self._rows[-1][0] + 1:
            self._rows.clear()
            self._ready.clear()
        self._rows.append((step, np.array(state, np.float64), np.array(control, np.float64), float(dt)))
        base = step - self.horizon
        if self.predicted_only:
            if base not in self._marks:
                return
            self._marks = {m for m in self._marks if m > base}
        if len(self._rows) >= self.context + self.horizon:
            self._ready.append(base)

    def predicted(self, step: int) -> None:
        """Mark `step` as predicted from (with `predicted_only`: rerun it once its horizon has arrived)."""
        self._marks.add(int(step))

    def due(self) -> Hindcast | None:
        """The pending hindcasts once `every` are ready (then they are handed out once), else None."""
        if len(self._ready) < self.every:
            return None
        rows = list(self._rows)
        first = rows[0][0]
        c, H = self.context, self.horizon
        bases = [b for b in self._ready if b - c + 1 >= first]  # contexts still in the history
        self._ready = []
        if not bases:
            return None
        windows = [rows[b - first - c + 1: b - first + H + 1] for b in bases]
        states = np.array([[r[1] for r in w] for w in windows])
        controls = np.array([[r[2] for r in w] for w in windows])
        steps = np.array([[r[3] for r in w] for w in windows])
        return Hindcast([w[c - 1][0] for w in windows], states[:, :c], controls[:, :c], steps,
                        controls[:, c:], states[:, c:])
