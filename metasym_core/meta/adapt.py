"""Online few-shot adaptation of a new system (METHOD §5): the decoder's inner loop.

`adapt` starts from the model's current local parameters φ (the meta-learned
init φ₀), runs K plain SGD steps on the teacher-forced next-step loss of the
first part of the observed window, and scores φ before and after on the held-out
tail, so the caller (the ROS learner node) can refuse an adaptation that made
things worse. Plain SGD with the training inner-loop rate, because that is the
update rule φ₀ was meta-learned for (see `decoder_bilevel`). θ and the encoder
are untouched and so is the module: the result is a new dict of tensors.

`params` restricts the update to a subset of φ (`local_subset`): "value_bias", the
meta-attention's value bias b_V alone, adapts d_model numbers; on a change the
model never saw vary in training (the demo's +30 % quadrotor mass) it generalises
from 1 s of data where all of φ over-fits the manoeuvre (docs/decisions.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import grad

from metasym_core.errors import MetaSymError
from metasym_core.meta.losses import DecoderBatch, decoder_batch, window_loss
from metasym_core.models.metasym import MetaSym
from metasym_core.validation import check_positive_int

DEFAULT_LR = 0.1  # the configs' training.inner_lr; pass the config's value for a trained model


@dataclass
class AdaptResult:
    """Adapted local parameters and the losses (normalised next-step MSE) that judge them."""

    local_params: dict[str, torch.Tensor]
    loss_before: float  # held-out tail, φ₀
    loss_after: float  # held-out tail, adapted φ
    train_loss_before: float  # adaptation part, φ₀
    train_loss_after: float  # adaptation part, adapted φ
    inner_steps: int
    seconds: float

    @property
    def improved(self) -> bool:
        """Whether the held-out loss went down (accept the adaptation only then)."""
        return self.loss_after < self.loss_before


def _as_batch(name: str, x: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise MetaSymError(f"{name} must be a torch.Tensor [T, {dim}] or [1, T, {dim}], got {type(x).__name__}")
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] != 1 or x.shape[-1] != dim:
        raise MetaSymError(f"{name} has shape {list(x.shape)}, expected [T, {dim}] or [1, T, {dim}]")
    return x


def check_adaptable(model: MetaSym, who: str = "adapt") -> None:
    """Raise a one-line `MetaSymError` (prefixed `who`) if the model has no local parameters φ to adapt."""
    if not model.decoder.local_parameters():
        raise MetaSymError(f"{who}: nothing to adapt, the model has no local parameters (its decoder was built "
                           "without meta-attention: model.decoder.meta_attention false, ablation D.3)")


#: named subsets of φ for `adapt(params=...)`: name -> predicate on the local parameter's name
SUBSETS = {"all": lambda name: True, "value_bias": lambda name: name.endswith("w_v.bias")}


def local_subset(model: MetaSym, params: str | Sequence[str] | None) -> list[str]:
    """Names of the local parameters to adapt: all (None / "all"), a `SUBSETS` name or explicit names."""
    names = list(model.decoder.local_parameters())
    if params is None or isinstance(params, str) and params in SUBSETS:
        chosen = [n for n in names if SUBSETS[params or "all"](n)]
        if not chosen:
            raise MetaSymError(f"adapt: the model has no local parameters in the subset {params!r}")
        return chosen
    if isinstance(params, str):
        raise MetaSymError(f"adapt: params must be one of {sorted(SUBSETS)} or a list of local parameter names, "
                           f"got {params!r}")
    unknown = [n for n in params if n not in names]
    if unknown or not params:
        raise MetaSymError(f"adapt: unknown local parameters {unknown or params}; the model has {names}")
    return list(params)


def split_point(T: int, holdout: float) -> int:
    """First frame of the held-out tail: both parts keep at least 2 frames (one transition)."""
    if not 0.0 < holdout < 1.0:
        raise MetaSymError(f"holdout must be in (0, 1), got {holdout}")
    if T < 4:
        raise MetaSymError(f"adapt needs a window of at least 4 steps, got {T}")
    return min(max(T - int(round(holdout * T)), 2), T - 2)


def prepare(model: MetaSym, states: torch.Tensor, controls: torch.Tensor,
            steps: float | torch.Tensor) -> DecoderBatch:
    """Validate one window (`[T, ·]` or `[1, T, ·]`) and encode it once."""
    states = _as_batch("states", states, model.state_dim)
    controls = _as_batch("controls", controls, model.control_dim)
    if isinstance(steps, torch.Tensor) and steps.dim() == 1:
        steps = steps.unsqueeze(0)
    states, controls, h = model._inputs(states, controls, steps)
    return decoder_batch(model, states, controls, h)


def adapt(model: MetaSym, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor,
          inner_steps: int = 10, lr: float = DEFAULT_LR, holdout: float = 0.25, horizon: int = 0,
          params: str | Sequence[str] | None = None) -> AdaptResult:
    """K-shot adaptation of φ on one observed window; the module is not changed.

    Args:
        states, controls: the most recent observed window, `[T, ·]` or `[1, T, ·]`.
        steps: step sizes (a float, `[T]`, `[1, T]` or `[1, T, 1]`).
        inner_steps: K SGD steps. lr: SGD rate (the config's `training.inner_lr`).
        holdout: fraction of the window (its tail) kept out of the inner loop for scoring.
        horizon: 0 = next-step loss; n > 0 = `rollout_loss` over n steps (the config's
            `training.rollout_horizon`, the loss the model was meta-trained to adapt with).
        params: the part of φ to adapt (`local_subset`: None or "all", "value_bias", or names);
            the rest stays at φ₀.

    Raises `MetaSymError` for a model without local parameters (no meta-attention, ablation D.3).
    """
    check_positive_int("inner_steps", inner_steps)
    check_adaptable(model)
    chosen = local_subset(model, params)
    if not lr > 0:
        raise MetaSymError(f"lr must be positive, got {lr}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = prepare(model, states, controls, steps)
            T = batch.x.shape[1]
            cut = split_point(T, holdout)
            fit = batch.slice(0, cut)
            phi0 = {k: v.detach() for k, v in model.decoder.local_parameters().items()}
            def loss(phi, part, start=0):
                return window_loss(model, part, phi, start=start, horizon=horizon)

            step = grad(lambda part: loss({**phi0, **part}, fit))
            before_fit = float(loss(phi0, fit))
            before = float(loss(phi0, batch, cut - 1))
            phi = phi0
            for _ in range(inner_steps):
                g = step({k: phi[k] for k in chosen})
                phi = {**phi, **{k: phi[k] - lr * g[k] for k in chosen}}
            after_fit = float(loss(phi, fit))
            after = float(loss(phi, batch, cut - 1))
    finally:
        model.train(was_training)
    for name, value in (("loss before adaptation", before), ("loss after adaptation", after)):
        if value != value or value in (float("inf"), float("-inf")):
            raise MetaSymError(f"{name} is not finite (lr {lr} too large or bad window)")
    return AdaptResult(phi, before, after, before_fit, after_fit, inner_steps, time.perf_counter() - start)
