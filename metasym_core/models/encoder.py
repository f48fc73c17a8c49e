"""SymplecticEncoder: the LA-SympNet of Jin et al. (2020), METHOD §2.

Every sublayer is a shear `p += h·f(q)` or `q += h·f(p)` with `f` the gradient of
a scalar (a symmetric linear map or an elementwise activation), so the whole map
is exactly symplectic for any weights, and exactly invertible: undo the shears in
reverse order, i.e. evaluate the reversed stack at `-h`.

The stack runs in coordinates centred on a fixed `shift` c (a buffer, the training
data's state mean; zeros until `MetaSym.set_normalization` sets it):
`Φ(x) = Φ₀(x - c) + c`. A translation is symplectic, so this changes neither
property, but the shears see O(1) inputs whatever the data's offset: uncentred
10×10 spring-mesh positions (~9 grid units) made the curvature of the encoder
loss ~1e3× larger and MAML diverged on its first step (docs/decisions.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metasym_core.errors import MetaSymError

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": F.elu}


class SymplecticEncoder(nn.Module):
    """Φ_θ(x, h) = Lin_L ∘ Act_{L-1} ∘ … ∘ Act_1 ∘ Lin_1 on `x = (q, p)`.

    Args:
        dim: phase-space dimension `2d` (even).
        layers: number of linear modules `L`; there are `L-1` activation modules.
        sublayers: alternating up/low shears per linear module (`m`).
        activation: name of σ in the activation shears.
        dropconnect: dropout probability on the weights `S` and `a` in training.
    """

    def __init__(self, dim: int, layers: int = 3, sublayers: int = 2, activation: str = "sigmoid",
                 dropconnect: float = 0.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise MetaSymError(f"dim must be a positive even number (q and p halves), got {dim}")
        if layers < 1 or sublayers < 1:
            raise MetaSymError(f"layers and sublayers must be >= 1, got {layers}, {sublayers}")
        if activation not in ACTIVATIONS:
            raise MetaSymError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropconnect < 1.0:
            raise MetaSymError(f"dropconnect must be in [0, 1), got {dropconnect}")
        self.dim, self.layers, self.sublayers = dim, layers, sublayers
        self.activation, self.dropconnect = activation, dropconnect
        d = dim // 2
        self.S = nn.Parameter(torch.randn(layers, sublayers, d, d) * 0.01)
        self.bias = nn.Parameter(torch.zeros(layers, 2, d))
        self.a = nn.Parameter(torch.randn(max(layers - 1, 0), d) * 0.01)
        self.register_buffer("shift", torch.zeros(dim))

    def config(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {"dim": self.dim, "layers": self.layers, "sublayers": self.sublayers,
                "activation": self.activation, "dropconnect": self.dropconnect}

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        S, a = self.S, self.a
        if self.training and self.dropconnect > 0:
            S = F.dropout(S, self.dropconnect, training=True)
            a = F.dropout(a, self.dropconnect, training=True)
        return S + S.transpose(-1, -2), a

    def _check(self, x: torch.Tensor, h: float | torch.Tensor) -> torch.Tensor | float:
        if x.shape[-1] != self.dim:
            raise MetaSymError(f"x has shape {list(x.shape)}, expected [..., {self.dim}]")
        if isinstance(h, torch.Tensor):
            if h.dim() > x.dim() or (h.dim() and h.shape[-1] != 1):
                raise MetaSymError(f"h has shape {list(h.shape)}, expected a float or a tensor broadcastable "
                                   f"to x[..., :1] = {list(x.shape[:-1]) + [1]}")
            try:
                torch.broadcast_shapes(h.shape, x.shape[:-1] + (1,))
            except RuntimeError:
                raise MetaSymError(f"h has shape {list(h.shape)}, not broadcastable to "
                                   f"{list(x.shape[:-1]) + [1]}") from None
            return h.to(x.dtype)
        return float(h)

    def forward(self, x: torch.Tensor, h: float | torch.Tensor) -> torch.Tensor:
        """Map `x = (q, p)` one learned symplectic step of size `h`."""
        h = self._check(x, h)
        A, a = self._weights()
        sig = ACTIVATIONS[self.activation]
        q, p = (x - self.shift).chunk(2, dim=-1)
        for layer in range(self.layers):
            for k in range(self.sublayers):
                if k % 2 == 0:
                    p = p + h * (q @ A[layer, k])
                else:
                    q = q + h * (p @ A[layer, k])
            q = q + h * self.bias[layer, 0]
            p = p + h * self.bias[layer, 1]
            if layer < self.layers - 1:
                if layer % 2 == 0:
                    p = p + h * a[layer] * sig(q)
                else:
                    q = q + h * a[layer] * sig(p)
        return torch.cat([q, p], dim=-1) + self.shift

    def inverse(self, y: torch.Tensor, h: float | torch.Tensor) -> torch.Tensor:
        """Exact inverse of `forward(·, h)`: the shears undone in reverse order."""
        h = self._check(y, h)
        A, a = self._weights()
        sig = ACTIVATIONS[self.activation]
        q, p = (y - self.shift).chunk(2, dim=-1)
        for layer in reversed(range(self.layers)):
            if layer < self.layers - 1:
                if layer % 2 == 0:
                    p = p - h * a[layer] * sig(q)
                else:
                    q = q - h * a[layer] * sig(p)
            q = q - h * self.bias[layer, 0]
            p = p - h * self.bias[layer, 1]
            for k in reversed(range(self.sublayers)):
                if k % 2 == 0:
                    p = p - h * (q @ A[layer, k])
                else:
                    q = q - h * (p @ A[layer, k])
        return torch.cat([q, p], dim=-1) + self.shift
