"""Bi-level (MAML-style) meta-training of the decoder (METHOD §4).

Per system i: φ starts at the shared init φ₀, takes K plain SGD steps on the
teacher-forced next-step loss of its adaptation (support) window with θ fixed,
and the adapted φ*ᵢ is scored on the system's meta (query) window. The mean
query loss is differentiated through the inner loop (second order by default;
`first_order=True` drops the inner Hessian terms) and updates θ, and — our choice,
MAML-style — φ₀ too (`learn_init=True`), so φ₀ becomes the init the inner loop
adapts best from; with `learn_init=False` φ₀ stays at its initial value.
A decoder without meta-attention (ablation D.3) has an empty φ: the inner loop
is then a no-op and the outer loss is the plain query loss of θ.
Systems run in parallel with `torch.func.vmap` over `torch.func.grad` inner loops.
The encoder is frozen: its latents arrive precomputed in `DecoderBatch`es.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from metasym_core.meta.losses import DecoderBatch, window_loss
from metasym_core.models.metasym import MetaSym


def inner_adapt(model: MetaSym, theta: dict[str, torch.Tensor], phi0: dict[str, torch.Tensor],
                support: DecoderBatch, inner_steps: int, inner_lr: float,
                first_order: bool = False, horizon: int = 0) -> dict[str, torch.Tensor]:
    """K SGD steps of φ on `support` with θ fixed; differentiable unless `first_order`.

    `horizon` > 0 adapts on `rollout_loss` over that many steps instead of the next-step loss.
    An empty φ (a decoder without meta-attention, ablation D.3) has nothing to adapt: returned as is.
    """
    if not phi0:
        return phi0
    step = grad(lambda phi: window_loss(model, support, phi, theta, horizon=horizon))
    phi = phi0
    for _ in range(inner_steps):
        g = step(phi)
        phi = {k: phi[k] - inner_lr * (g[k].detach() if first_order else g[k]) for k in phi}
    return phi


def bilevel_loss(model: MetaSym, support: DecoderBatch, query: DecoderBatch, inner_steps: int,
                 inner_lr: float, query_start: int = 0, first_order: bool = False,
                 learn_init: bool = True, horizon: int = 0) -> torch.Tensor:
    """Mean over systems (batch dim of both batches) of the adapted query loss.

    `query_start` skips the first query transitions (context frames borrowed from
    before the query part); `horizon` > 0 scores both loops on `rollout_loss`.
    Backpropagate the result into θ (and φ₀ if `learn_init`).
    """
    theta = model.decoder.global_parameters()
    phi0 = model.decoder.local_parameters()
    if not learn_init:
        phi0 = {k: v.detach() for k, v in phi0.items()}

    def one(theta, phi0, s: tuple, q: tuple) -> torch.Tensor:
        sb = DecoderBatch(*(t.unsqueeze(0) for t in s))
        qb = DecoderBatch(*(t.unsqueeze(0) for t in q))
        phi = inner_adapt(model, theta, phi0, sb, inner_steps, inner_lr, first_order, horizon)
        return window_loss(model, qb, phi, theta, query_start, horizon)

    s = (support.x, support.u, support.h, support.e, support.target)
    q = (query.x, query.u, query.h, query.e, query.target)
    losses = vmap(one, in_dims=(None, None, 0, 0), randomness="different")(theta, phi0, s, q)
    return losses.mean()


@torch.no_grad()
def adapted_query_loss(model: MetaSym, support: DecoderBatch, query: DecoderBatch, inner_steps: int,
                       inner_lr: float, query_start: int = 0, horizon: int = 0) -> float:
    """`bilevel_loss` without gradients (validation)."""
    return float(bilevel_loss(model, support, query, inner_steps, inner_lr, query_start, first_order=True,
                              horizon=horizon))
