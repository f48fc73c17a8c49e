"""Second-order MAML of the SymplecticEncoder (METHOD §4); the encoder is frozen afterwards.

Inner loop per system: 3 SGD steps of the encoder weights on the forward
next-step loss `||Φ(x_t, h_t) - x_{t+1}||²` of its support window. Outer loss on
its query window with the adapted weights, forward plus inverse
`||Φ⁻¹(x_{t+1}, h_t) - x_t||²`, averaged over systems and differentiated through
the inner loop. Errors are divided by the model's `delta_std` (the per-dimension
scale of one-step motion) so every state dimension weighs the same and the loss
is O(1) in any units, floored at `SCALE_FLOOR` times the median of its half (q or
p; `loss_scale`): a coordinate that barely moves in the training data (next to the
spring mesh's fixed row, in short trajectories: 20x below the median) would
otherwise weigh (median/std)² more and make the loss that much stiffer, i.e. the
inner SGD unstable. DropConnect is active whenever the encoder is in training
mode (`vmap(randomness="different")`: independent masks per system).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metasym_core.models.encoder import SymplecticEncoder

#: smallest error unit of a coordinate, as a fraction of the median `delta_std` of its half (q or p)
SCALE_FLOOR = 0.25


def loss_scale(delta_std: torch.Tensor) -> torch.Tensor:
    """Per-coordinate error unit: `delta_std`, floored at `SCALE_FLOOR` × the median of its half.

    Why: the curvature of the loss grows like 1/scale² of its smallest unit. On 3 short 10×10
    meshes (60 frames) the floor lowers the top Hessian eigenvalue of the support loss 25×
    (7.8e5 → 3.1e4); on 6 × 400 frames it barely changes it (≤ 10 %)."""
    halves = delta_std.view(2, -1)
    floor = SCALE_FLOOR * halves.median(dim=1, keepdim=True).values
    return torch.maximum(halves, floor).reshape(delta_std.shape)


class _Both(nn.Module):
    """Forward or inverse of an encoder through one `functional_call` entry point."""

    def __init__(self, encoder: SymplecticEncoder) -> None:
        super().__init__()
        self.enc = encoder

    def forward(self, x: torch.Tensor, h: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        return self.enc.inverse(x, h) if inverse else self.enc(x, h)


def _err(net: _Both, params: dict, a: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
         inverse: bool = False) -> torch.Tensor:
    return ((functional_call(net, params, (a, h), {"inverse": inverse}) - b) / scale).pow(2).sum(-1).mean()


def maml_loss(encoder: SymplecticEncoder, support: dict[str, torch.Tensor], query: dict[str, torch.Tensor],
              scale: torch.Tensor, inner_steps: int = 3, inner_lr: float = 1e-3,
              first_order: bool = False) -> torch.Tensor:
    """Outer loss over systems. `support`/`query`: x, h, next `[N, T, ·]` (h `[N, T, 1]`);
    `scale`: the model's `delta_std` (floored by `loss_scale`)."""
    net = _Both(encoder)
    params = {f"enc.{k}": v for k, v in encoder.named_parameters()}
    scale = loss_scale(scale)

    def one(params, sx, sh, sn, qx, qh, qn) -> torch.Tensor:
        step = grad(lambda p: _err(net, p, sx, sh, sn, scale))
        p = params
        for _ in range(inner_steps):
            g = step(p)
            p = {k: p[k] - inner_lr * (g[k].detach() if first_order else g[k]) for k in p}
        return _err(net, p, qx, qh, qn, scale) + _err(net, p, qn, qh, qx, scale, inverse=True)

    losses = vmap(one, in_dims=(None, 0, 0, 0, 0, 0, 0), randomness="different")(
        params, support["x"], support["h"], support["next"], query["x"], query["h"], query["next"])
    return losses.mean()


@torch.no_grad()
def direct_loss(encoder: SymplecticEncoder, data: dict[str, torch.Tensor], scale: torch.Tensor) -> float:
    """Unadapted forward + inverse loss (validation / a sanity figure)."""
    net = _Both(encoder)
    params = {f"enc.{k}": v for k, v in encoder.named_parameters()}
    scale = loss_scale(scale)
    return float(_err(net, params, data["x"], data["h"], data["next"], scale)
                 + _err(net, params, data["next"], data["h"], data["x"], scale, inverse=True))
