"""Autoregressive Transformer baseline: MetaSym's decoder without encoder and meta-attention.

Same tokens (the ControlNet embedding of normalised `[x_t, u_t, h_t]`), the same
banded causal self-attention with relative-position bias over the same context
window, pre-norm blocks with an MLP, and the same residual increment head (with `linear_skip`, the
same linear skip); no
symplectic encoder, no meta-attention, no meta-learning (pooled training).
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.baselines.base import Baseline
from metasym_core.errors import MetaSymError
from metasym_core.models.attention import CausalSelfAttention, window_bias
from metasym_core.models.decoder import ControlNet, zero_linear


class _Block(nn.Module):
    """Pre-norm block: causal self-attention and an MLP, each with a residual."""

    def __init__(self, d_model: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, context, 0.0)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.SiLU(), nn.Linear(2 * d_model, d_model))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(z.shape[1], device=z.device)
        q, k, v = self.attn.project_kv(self.ln1(z))
        z = z + self.attn.combine(q, k, v, window_bias(self.attn.rel_bias, pos, pos))
        return z + self.mlp(self.ln2(z))


class TransformerBaseline(Baseline):
    """Causal Transformer over the last `context` tokens predicting the next-state increment."""

    name = "transformer"

    def __init__(self, state_dim: int, control_dim: int, d_model: int = 16, heads: int = 4, layers: int = 1,
                 context: int = 10, linear_skip: bool = False) -> None:
        super().__init__(state_dim, control_dim)
        if heads < 1 or d_model % heads or layers < 1 or context < 1:
            raise MetaSymError(f"transformer: d_model ({d_model}) must be divisible by heads ({heads}); "
                               f"layers, context >= 1 (got {layers}, {context})")
        self.d_model, self.heads, self.layers, self.context = int(d_model), int(heads), int(layers), int(context)
        self.memory = self.context
        self.control_net = ControlNet(state_dim, control_dim, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), zero_linear(d_model, state_dim))
        # MetaSym's linear skip (`ActiveDecoder(linear_skip=True)`), so that Table 1 compares like with like
        self.skip = zero_linear(state_dim + control_dim + 1, state_dim) if linear_skip else None

    def config(self) -> dict:
        return {**super().config(), "d_model": self.d_model, "heads": self.heads, "layers": self.layers,
                "context": self.context, "linear_skip": self.skip is not None}

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        inputs = (self.norm("state", states), self.norm("control", controls), self.norm("step", h))
        z = self.control_net(*inputs)
        for block in self.blocks:
            z = block(z)
        delta = self.head(self.ln_f(z))
        if self.skip is not None:
            delta = delta + self.skip(torch.cat(inputs, dim=-1))
        return states + delta * self.delta_std
