"""Online few-shot adaptation policy of the learner node, without ROS.

The learner keeps the most recent `window` valid samples, adapts the decoder's
local parameters φ (`metasym_core.meta.adapt`) periodically or as soon as the
realised prediction error rises, and *refuses* an adaptation unless it beats both
the meta-learned init φ₀ and the currently published φ on the held-out tail of
the window. Accepted parameters get the next version number and are written
to the caller (the node puts them into its AdaptationStatus) and, with an `out_dir`, atomically
to a file too (`local_params`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt, check_adaptable, local_subset, prepare, split_point
from metasym_core.meta.losses import window_loss
from metasym_core.models.metasym import MetaSym
from metasym_core.online.detector import BiasDetector
from metasym_core.online.local_params import save_local_params
from metasym_core.online.window import ContextWindow


@dataclass
class AdaptationOutcome:
    """What one adaptation attempt did (the fields of an AdaptationStatus message)."""

    version: int  # the version now in force (new if accepted)
    accepted: bool
    loss_before: float  # held-out loss of the parameters in force before
    loss_after: float  # held-out loss of the candidate
    latency_ms: float
    reason: str
    params_path: str = ""  # the file of the accepted parameters, when the learner writes files
    params: dict[str, torch.Tensor] | None = None  # the accepted parameters themselves


#: With the residual-bias test: refused attempts in a row, once the window holds only data from after the
#: alarm, after which the alarm is taken for normal operation: the burst ends and the test learns its
#: reference again.
GIVE_UP_AFTER = 3

#: The settings `OnlineLearner.configure` changes (its constructor's keyword arguments).
SETTINGS: tuple[str, ...] = ("window", "inner_steps", "lr", "holdout", "period_s", "error_rise", "min_interval_s",
                             "min_gain", "horizon", "params", "val_horizon", "watch_rise", "burst_s", "bias_threshold",
                             "bias_window", "bias_reference")


def learner_parameters(training: dict) -> list[tuple[str, str, object, str]]:
    """The learner node's adaptation parameters: (ROS name, `OnlineLearner` setting, default, description);
    `training` is the config's `training:` section (the defaults of the SGD steps, rate and loss)."""
    return [
        ("window", "window", 200, "Most recent samples used per adaptation"),
        ("inner_steps", "inner_steps", int(training.get("inner_steps", 10)), "Adaptation SGD steps K"),
        ("lr", "lr", float(training.get("inner_lr", 0.1)), "Adaptation SGD rate"),
        ("adapt_params", "params", "all", "Part of φ adapted online: all | value_bias (the meta-attention value "
         "bias alone)"),
        ("holdout", "holdout", 0.25, "Tail fraction of the window that scores an adaptation"),
        ("val_horizon", "val_horizon", 0, "Score that accepts an adaptation: n-step rollouts on the held-out tail "
         "(0: the adaptation loss)"),
        ("horizon", "horizon", int(training.get("rollout_horizon", 0)),
         "Adaptation loss: 0 = next step, n = n-step rollouts (training.rollout_horizon)"),
        ("period_s", "period_s", 5.0, "Adapt at least this often [s]; <= 0: only on error rise"),
        ("error_rise", "error_rise", 2.0, "Adapt early when the realised error rises by this factor"),
        ("min_interval_s", "min_interval_s", 0.5, "Never adapt more often than this [s]"),
        ("min_gain", "min_gain", 0.01, "Accept only this relative held-out improvement"),
        ("watch_rise", "watch_rise", 0.0, "Adapt early when the next-step loss of the parameters in force on the "
         "newest window rises by this factor (0: off)"),
        ("burst_s", "burst_s", 0.0, "After an alarm, adapt every min_interval_s for this long [s]"),
        ("bias_threshold", "bias_threshold", 0.0, "Adapt early when the bias of the next-step residuals over "
         "bias_window transitions leaves its reference by this many spreads (0: off)"),
        ("bias_window", "bias_window", 25, "Transitions of the residual-bias test"),
        ("bias_reference", "bias_reference", 300, "Transitions of normal operation the residual-bias test learns "
         "its reference from (again after each accepted adaptation: half as many)"),
    ]


def learner_settings(cfg: dict, overrides: dict | None = None, checkpoint: str | None = None) -> dict[str, object]:
    """The `OnlineLearner` settings the learner node runs with for config `cfg` (its `ros: learner:` values
    over the node's defaults), with `overrides` by ROS parameter name on top. With `checkpoint`, a bundled
    model's tuned settings (`checkpoint.bundled_learner`) come between the config's and `overrides`, as the
    launched graph applies them."""
    tuned = {}
    if checkpoint is not None:
        from metasym_core.checkpoint import bundled_learner

        tuned = bundled_learner(checkpoint, str(cfg.get("system", "")))
    section = {**((cfg.get("ros") or {}).get("learner") or {}), **tuned, **(overrides or {})}
    return {key: section.get(name, default) for name, key, default, _ in learner_parameters(cfg.get("training") or {})}


class OnlineLearner:
    """Buffer, trigger, adapt, validate, publish (see the module docstring).

    Args:
        model: a (meta-)trained MetaSym; never modified.
        system: system name written into the parameter files.
        out_dir: where accepted parameters are written (`<system>_local_v<version>.pt`); None: no files.
        window: samples used per adaptation (the most recent ones).
        inner_steps, lr, holdout, horizon: `adapt` settings (the config's training values;
            horizon = `training.rollout_horizon`).
        params: the part of φ adapted (`adapt`'s `params`: None / "all", "value_bias" or names).
        val_horizon: the held-out score that accepts or refuses: n-step rollouts (n > 0) or, with 0,
            `adapt`'s own loss (`horizon`). Rollouts refuse fits that help the next step but not the
            horizon the predictions are made for, at the price of one rollout pass per candidate.
        bias_threshold: > 0: `watch` raises the alarm when the bias of the next-step residuals of the
            parameters in force over `bias_window` transitions leaves its reference by this many
            spreads (`detector.BiasDetector`: tells a new system from a manoeuvre); 0: off. The reference
            is learned over `bias_reference` transitions: long enough to hold manoeuvres, or their spread
            is underestimated (false alarms) or a take-off's overestimated (a change missed).
        watch_rise: > 1: `watch` also raises the alarm when the next-step loss of the parameters in
            force on the newest window exceeds this factor times its running level (0: off). It sees
            a change within a few tenths of a second, before the realised error (H steps later) does.
        burst_s: after an alarm, adapt every `min_interval_s` for this long (refinements while the
            window fills with the changed system), whatever `period_s` says.
        period_s: adapt at least this often (wall/sim seconds of the caller's clock); <= 0: never periodic.
        error_rise: adapt early when the realised error exceeds this factor times its running baseline (0: off).
        min_interval_s: never adapt more often than this.
        min_gain: accept only a relative held-out improvement of at least this (no churn on noise).
    """

    def __init__(self, model: MetaSym, system: str, out_dir: str | os.PathLike | None, window: int = 200,
                 inner_steps: int = 10, lr: float = 0.1, holdout: float = 0.25, period_s: float = 5.0,
                 error_rise: float = 2.0, min_interval_s: float = 0.5, min_gain: float = 0.01, horizon: int = 0,
                 params: str | Sequence[str] | None = None, val_horizon: int = 0, watch_rise: float = 0.0,
                 burst_s: float = 0.0, bias_threshold: float = 0.0, bias_window: int = 25,
                 bias_reference: int = 300):
        check_adaptable(model, "online learner")  # no meta-attention (ablation D.3): no φ to learn online
        self.model, self.system = model.eval(), system
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.buffer = ContextWindow(model.state_dim, model.control_dim, max(int(window), 1))
        self.settings: dict[str, object] = {}
        self.detector: BiasDetector | None = None
        self._bias_key: tuple[float, int, int] | None = None  # the detector's (threshold, window, reference)
        self._fed = 0  # samples whose transitions the detector has seen
        self.configure(window=window, inner_steps=inner_steps, lr=lr, holdout=holdout, period_s=period_s,
                       error_rise=error_rise, min_interval_s=min_interval_s, min_gain=min_gain, horizon=horizon,
                       params=params, val_horizon=val_horizon, watch_rise=watch_rise, burst_s=burst_s,
                       bias_threshold=bias_threshold, bias_window=bias_window, bias_reference=bias_reference)
        self.version = 0
        self.active: dict[str, torch.Tensor] | None = None  # None: the model's own φ₀
        self._last_attempt = -math.inf
        self._baseline: float | None = None  # running realised error while nothing changes
        self._alarm = False
        self._level: float | None = None  # running next-step loss of the parameters in force (watch)
        self._burst_until = -math.inf
        self._refused = 0  # attempts refused in a row (once the window holds only data from after the alarm)
        self._alarm_at: int | None = None  # samples accepted when the unanswered alarm was first raised

    def check_settings(self, **changes) -> dict[str, object]:
        """The settings with `changes` applied, validated (MetaSymError naming the first bad one)."""
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise MetaSymError(f"unknown learner setting(s) {', '.join(sorted(unknown))}")
        new = {**self.settings, **changes}
        model = self.model
        params = new["params"]
        params = params if params is None or isinstance(params, str) else list(params)
        local_subset(model, params)  # a bad subset fails here, not at the first adaptation
        window = new["window"]
        if isinstance(window, bool) or not isinstance(window, int) or window < max(8, model.context + 2):
            raise MetaSymError(f"learner window must be >= {max(8, model.context + 2)} samples, got {window}")
        if not (new["error_rise"] == 0 or new["error_rise"] > 1.0):
            raise MetaSymError(f"error_rise must be 0 (off) or > 1, got {new['error_rise']}")
        if not (0.0 < new["holdout"] < 1.0):
            raise MetaSymError(f"holdout must be in (0, 1), got {new['holdout']}")
        if int(new["inner_steps"]) < 1 or not new["lr"] > 0:
            raise MetaSymError(f"inner_steps must be >= 1 and lr > 0, got {new['inner_steps']}, {new['lr']}")
        if not new["min_interval_s"] >= 0 or not math.isfinite(new["period_s"]):
            raise MetaSymError(f"min_interval_s must be >= 0 and period_s finite, got {new['min_interval_s']}, "
                               f"{new['period_s']}")
        horizon, val_horizon = int(new["horizon"]), int(new["val_horizon"]) or int(new["horizon"])
        tail = int(round(new["holdout"] * window))
        for name, n in (("horizon", horizon), ("val_horizon", val_horizon)):
            if n < 0 or (n and (tail < n or window - tail < model.context + n)):
                raise MetaSymError(f"learner {name} {n} does not fit the window: rollouts need its held-out "
                                   f"tail ({tail} samples) >= {name} and the rest ({window - tail}) >= context + "
                                   f"{name} ({model.context + n})")
        if not 0.0 <= new["min_gain"] < 1.0:
            raise MetaSymError(f"min_gain must be in [0, 1), got {new['min_gain']}")
        if (new["watch_rise"] and new["watch_rise"] <= 1.0) or new["watch_rise"] < 0 or new["burst_s"] < 0:
            raise MetaSymError(f"watch_rise must be 0 (off) or > 1 and burst_s >= 0, got {new['watch_rise']}, "
                               f"{new['burst_s']}")
        if not new["bias_threshold"] >= 0:
            raise MetaSymError(f"bias_threshold must be >= 0 (0: off), got {new['bias_threshold']}")
        if new["bias_threshold"] and (isinstance(new["bias_window"], bool) or not isinstance(new["bias_window"], int)
                                      or not 2 <= new["bias_window"] <= window - model.context):
            raise MetaSymError(f"bias_window must be an integer in [2, window - context = {window - model.context}], "
                               f"got {new['bias_window']}")
        if new["bias_threshold"] and (isinstance(new["bias_reference"], bool)
                                      or not isinstance(new["bias_reference"], int)
                                      or new["bias_reference"] < 2 * new["bias_window"]):
            raise MetaSymError(f"bias_reference must be an integer >= 2 x bias_window = {2 * new['bias_window']}, "
                               f"got {new['bias_reference']!r}")
        return {**new, "params": params}

    def configure(self, **changes) -> None:
        """Change settings (the constructor's arguments) at once: validated first, nothing changes on an
        error. A new window size keeps the newest samples; the next adaptation uses the new values."""
        new = self.check_settings(**changes)
        if new["window"] != self.buffer.capacity:
            old = self.buffer
            self.buffer = ContextWindow(old.state_dim, old.control_dim, new["window"], old.max_age_s)
            for sample in list(old._samples)[-new["window"]:]:
                self.buffer.push(sample.stamp, sample.state, sample.control, sample.dt, step=sample.step)
            self.buffer.rejected, self.buffer.accepted = old.rejected, old.accepted
        self.settings = new
        self.params = new["params"]
        self.inner_steps, self.lr, self.holdout = int(new["inner_steps"]), float(new["lr"]), float(new["holdout"])
        self.horizon = int(new["horizon"])
        self.val_horizon = int(new["val_horizon"]) or self.horizon
        self.period_s, self.error_rise = float(new["period_s"]), float(new["error_rise"])
        self.min_interval_s, self.min_gain = float(new["min_interval_s"]), float(new["min_gain"])
        self.watch_rise, self.burst_s = float(new["watch_rise"]), float(new["burst_s"])
        key = (float(new["bias_threshold"]), int(new["bias_window"]), int(new["bias_reference"]))
        if self._bias_key != key:
            self._bias_key = key
            self.detector = (BiasDetector(key[1], key[0], reference=key[2], memory=max(2000, key[2]))
                             if key[0] > 0 else None)
            self._fed = self.buffer.accepted  # residuals from here on

    # -- inputs ----------------------------------------------------------------------------------------
    def push(self, stamp: float, state, control, dt: float, now: float | None = None) -> str | None:
        """Buffer one sample; returns the rejection reason or None."""
        return self.buffer.push(stamp, state, control, dt, now)

    def observe_error(self, mse: float) -> None:
        """Feed the predictor's realised error; a jump over `error_rise` × baseline raises the alarm."""
        if not self.error_rise:
            return
        self._baseline = self._track(self._baseline, mse, self.error_rise)

    def watch(self) -> None:
        """Score the parameters in force on the newest window (one forward pass): with `bias_threshold`
        feed the new transitions' next-step residuals to the bias detector, with `watch_rise` track the
        window's next-step loss; either raises the alarm."""
        if not (self.watch_rise or self.detector is not None) or not self.buffer.full:
            return
        dtype = next(self.model.parameters()).dtype
        states, controls, steps = (torch.as_tensor(a, dtype=dtype) for a in self.buffer.arrays())
        with torch.no_grad():
            batch = prepare(self.model, states, controls, steps)
            if self.watch_rise:
                loss = float(window_loss(self.model, batch, self.active))
                self._level = self._track(self._level, loss, self.watch_rise)
            if self.detector is not None:
                new = min(self.buffer.accepted - self._fed, self.buffer.capacity - self.model.context)
                self._fed = self.buffer.accepted
                if new > 0:
                    delta = self.model.decoder(*batch.inputs(), local=self.active)
                    residuals = (batch.target - delta[:, :-1])[0, -new:]
                    if self.detector.update(residuals.cpu().numpy()):
                        self._alarm = True

    def _track(self, level: float | None, value: float, rise: float) -> float | None:
        """Running level of an error signal: a value over `rise` × level raises the alarm (and leaves
        the level alone), any other moves it (exponential average, weight 0.1)."""
        if not math.isfinite(value):
            return level
        if level is None:
            return value
        if value > rise * level:
            self._alarm = True
            return level
        return 0.9 * level + 0.1 * value

    def should_adapt(self, now: float) -> bool:
        """Enough samples, not too soon, and the error alarm, a burst after it or the period is due."""
        if not self.buffer.full or now - self._last_attempt < self.min_interval_s:
            return False
        return (self._alarm or now < self._burst_until
                or (self.period_s > 0 and now - self._last_attempt >= self.period_s))

    # -- the adaptation ------------------------------------------------------------------------------
    def _holdout_loss(self, local: dict[str, torch.Tensor] | None, states, controls, steps) -> float:
        """The acceptance score of `local` (None: φ₀) on the window's held-out tail."""
        with torch.no_grad():
            batch = prepare(self.model, states, controls, steps)
            cut = split_point(batch.x.shape[1], self.holdout)
            return float(window_loss(self.model, batch, local, start=cut - 1, horizon=self.val_horizon))

    def warm_up(self) -> None:
        """One throw-away adaptation on a synthetic window: the first one pays ~1 s of lazy initialisation,
        better before the window fills than at the first (possibly post-change) adaptation. Nothing is
        versioned, kept or timed."""
        n, p = self.buffer.capacity, next(self.model.parameters())
        zeros = {"dtype": p.dtype, "device": p.device}
        adapt(self.model, torch.zeros(n, self.model.state_dim, **zeros),
              torch.zeros(n, self.model.control_dim, **zeros), torch.full((n,), 0.02, **zeros),
              self.inner_steps, self.lr, self.holdout, self.horizon, self.params)

    def adapt_now(self, now: float) -> AdaptationOutcome:
        """Adapt on the buffered window; accept only an improvement over φ₀ and the active φ."""
        return self.adapt_window(*self.buffer.arrays(), now=now)

    def adapt_window(self, states, controls, steps, now: float) -> AdaptationOutcome:
        """`adapt_now` on given arrays (a snapshot of the buffer taken under the caller's lock)."""
        self._last_attempt = now
        if self._alarm:  # an alarm opens a burst of refinements
            self._burst_until = now + self.burst_s
            if self._alarm_at is None:
                self._alarm_at = self.buffer.accepted
        self._alarm = False
        start = time.perf_counter()
        dtype = next(self.model.parameters()).dtype
        states, controls, steps = (torch.as_tensor(a, dtype=dtype) for a in (states, controls, steps))
        result = adapt(self.model, states, controls, steps, self.inner_steps, self.lr, self.holdout, self.horizon,
                       self.params)
        before, after = result.loss_before, result.loss_after  # adapt's scores, when they are the acceptance's
        if self.val_horizon != self.horizon:
            before, after = (self._holdout_loss(p, states, controls, steps) for p in (None, result.local_params))
        current = before if self.active is None else self._holdout_loss(self.active, states, controls, steps)
        best_before = min(before, current)
        latency = 1000 * (time.perf_counter() - start)
        if not after < (1.0 - self.min_gain) * best_before:
            # refusals count against an alarm only once the window holds nothing from before it: until then
            # a real change may be too fresh in the window for an adaptation to pay
            if (self.detector is not None and self._alarm_at is not None
                    and self.buffer.accepted - self._alarm_at >= self.buffer.capacity):
                self._refused += 1
            if self._refused >= GIVE_UP_AFTER:  # an alarm no adaptation answers: not a new system
                self._burst_until = -math.inf
                self._refused, self._alarm_at = 0, None
                if self.detector is not None:
                    self.detector.rereference(spreads=True)
            return AdaptationOutcome(self.version, False, best_before, after, latency,
                                     f"refused: the held-out loss did not improve by {100 * self.min_gain:g}%")
        self._refused, self._alarm_at = 0, None
        self.version += 1
        path = ""
        if self.out_dir is not None:
            path = str(save_local_params(self.out_dir / f"{self.system}_local_v{self.version}.pt",
                                         result.local_params, self.version, self.system))
        self.active = result.local_params
        self._baseline = self._level = None  # the error level changes with new parameters: learn it again
        if self.detector is not None:
            self.detector.rereference()
        return AdaptationOutcome(self.version, True, best_before, after, latency, "accepted", path,
                                 result.local_params)
