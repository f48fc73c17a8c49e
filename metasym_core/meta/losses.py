"""Teacher-forced next-step losses in normalised units, shared by adaptation and training.

The decoder predicts the increment `Δ = (x_{t+1} - a_t) / delta_std` over its anchor
`a_t = MetaSym.anchor(...)` (METHOD §3, `MetaSym.predict_next`): the state `x_t`, with the
encoder residual the encoder's flow step `Φ_θ(x_t, h_t)`, with a nominal one `f(x_t, u_t, h_t)`.
So the next-state error divided by
`delta_std` is `Δ̂ - Δ`: every state dimension weighs the same whatever its units, and a loss of
1 means "as bad as predicting no motion". The encoder is fixed here, so its
latents are computed once per window (`DecoderBatch`), not once per inner step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from metasym_core.errors import MetaSymError
from metasym_core.models.metasym import MetaSym


@dataclass
class DecoderBatch:
    """Normalised decoder inputs `[B, T, ·]` and increment targets `[B, T-1, D]`."""

    x: torch.Tensor
    u: torch.Tensor
    h: torch.Tensor
    e: torch.Tensor
    target: torch.Tensor

    def slice(self, start: int, stop: int) -> DecoderBatch:
        """Frames [start, stop) (targets of transitions inside them)."""
        return DecoderBatch(self.x[:, start:stop], self.u[:, start:stop], self.h[:, start:stop],
                            self.e[:, start:stop], self.target[:, start:stop - 1])

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.u, self.h, self.e


@torch.no_grad()
def decoder_batch(model: MetaSym, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor,
                  clean: torch.Tensor | None = None) -> DecoderBatch:
    """Tokens of `[B, T, ·]` windows (`h` `[B, T, 1]`) through the fixed encoder, plus targets: the next states
    (of `clean` when given: `states` are then noisy inputs whose targets stay the true next states)."""
    x, u, hn, e = model.tokens(states, controls, h)
    base = model.anchor(states, e * model.state_std + model.state_mean, controls, h)
    target = ((states if clean is None else clean)[:, 1:] - base[:, :-1]) / model.delta_std
    return DecoderBatch(x, u, hn, e, target)


def increment_loss(model: MetaSym, batch: DecoderBatch, local: dict[str, torch.Tensor] | None,
                   global_params: dict[str, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
    """Mean squared normalised next-step error of transitions `start..T-2` (pure in its tensor args)."""
    if global_params is None:
        delta = model.decoder(*batch.inputs(), local=local)
    else:
        delta = functional_call(model.decoder, global_params, batch.inputs(), {"local": local})
    return (delta[:, start:-1] - batch.target[:, start:]).pow(2).mean()


def rollout_loss(model: MetaSym, batch: DecoderBatch, local: dict[str, torch.Tensor] | None,
                 global_params: dict[str, torch.Tensor] | None = None, start: int = 0, horizon: int = 10,
                 stride: int = 2) -> torch.Tensor:
    """Free-running error of `horizon`-step rollouts started inside the window (pure in its tensor args).

    Why: a decoder that reads the last c states can infer a changed system from
    them (in context), so the teacher-forced next-step loss barely sees e.g. a
    heavier quadrotor, while rollouts, whose context fills with the model's own
    predictions, drift. Scoring rollouts makes adaptation fix what the predictor
    publishes. Rollouts start at every `stride`-th frame from the first with a
    full context (and not before `start`); step k's error is divided by k, so every
    step weighs like a next-step error (a loss of 1 = as bad as no motion).
    """
    c, (B, T) = model.context, batch.x.shape[:2]
    first = max(c - 1, start)
    starts = list(range(first, T - horizon, stride))
    if not starts:
        raise MetaSymError(f"rollout_loss needs a window of at least {first + horizon + 1} frames, got {T}")
    idx = torch.tensor(starts, device=batch.x.device)[:, None] + torch.arange(-c + 1, horizon + 1,
                                                                             device=batch.x.device)
    S, L = idx.shape

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[:, idx].reshape(B * S, L, t.shape[-1])

    x, u, h, e = (take(t) for t in batch.inputs())
    true = x * model.state_std + model.state_mean
    h_raw = h * model.step_std + model.step_mean
    u_raw = u * model.control_std + model.control_mean
    xw, ew, cur = x[:, :c], e[:, :c], true[:, c - 1]
    loss = torch.zeros((), dtype=x.dtype, device=x.device)
    for k in range(horizon):
        args = (xw, u[:, k:k + c], h[:, k:k + c], ew)
        if global_params is None:
            delta = model.decoder(*args, local=local)[:, -1]
        else:
            delta = functional_call(model.decoder, global_params, args, {"local": local})[:, -1]
        cur = (model.anchor(cur, ew[:, -1] * model.state_std + model.state_mean, u_raw[:, c - 1 + k],
                            h_raw[:, c - 1 + k]) + delta * model.delta_std)
        loss = loss + ((cur - true[:, c + k]) / (model.delta_std * (k + 1))).pow(2).mean()
        if k + 1 < horizon:
            new_e = model._norm("state", model.encoder(cur, h_raw[:, c + k]))
            xw = torch.cat([xw[:, 1:], model._norm("state", cur).unsqueeze(1)], dim=1)
            ew = torch.cat([ew[:, 1:], new_e.unsqueeze(1)], dim=1)
    return loss / horizon


def window_loss(model: MetaSym, batch: DecoderBatch, local: dict[str, torch.Tensor] | None,
                global_params: dict[str, torch.Tensor] | None = None, start: int = 0,
                horizon: int = 0) -> torch.Tensor:
    """The adaptation loss: next-step (`horizon` 0, the paper's) or `rollout_loss` over `horizon` steps."""
    if horizon <= 0:
        return increment_loss(model, batch, local, global_params, start)
    return rollout_loss(model, batch, local, global_params, start, horizon)
