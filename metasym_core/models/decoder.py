"""ActiveDecoder: ControlNet tokens, causal self-attention, meta-attention to the
encoder latents and an MLP head predicting the next-state increment (METHOD §3).

The decoder works on normalised quantities (see `MetaSym`). `forward` is the
teacher-forced pass over a whole sequence (banded causal attention); it also
returns every block's keys/values, from which `streaming.decoder_step` continues
a rollout one token at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metasym_core.errors import MetaSymError
from metasym_core.models import nominal
from metasym_core.models.attention import CausalSelfAttention, MetaAttention, window_bias

LOCAL_SUFFIXES = ("meta_attn.w_q.weight", "meta_attn.w_v.weight", "meta_attn.w_v.bias")
#: what the decoder's increment is added to (see `ActiveDecoder`; also "nominal:<name>", `models.nominal`)
RESIDUALS = ("state", "encoder", "mean")


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear layer that starts at zero (weights and bias): a term added to a prediction that changes nothing
    until trained (the head's last layer, the linear skip)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ControlNet(nn.Module):
    """Linear token embedding of `[x_t, u_t, h_t]` (state, control, step size)."""

    def __init__(self, state_dim: int, control_dim: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(state_dim + control_dim + 1, d_model)

    def forward(self, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([x, u, h], dim=-1))


class DecoderBlock(nn.Module):
    """Pre-norm block: self-attention, meta-attention, MLP, each with a residual.

    With `meta_attention=False` (ablation D.3) the block has no `ln2` / `meta_attn`:
    tokens go self-attention → MLP and never read the encoder latents.
    """

    def __init__(self, d_model: int, latent_dim: int, heads: int, context: int, dropout: float,
                 meta_attention: bool = True) -> None:
        super().__init__()
        self.dropout = dropout
        self.meta_attention = bool(meta_attention)
        self.ln1 = nn.LayerNorm(d_model)
        self.self_attn = CausalSelfAttention(d_model, heads, context, dropout)
        if self.meta_attention:
            self.ln2 = nn.LayerNorm(d_model)
            self.meta_attn = MetaAttention(d_model, latent_dim, heads, context, dropout)
        self.ln3 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.SiLU(), nn.Linear(2 * d_model, d_model))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def forward(self, z: torch.Tensor, e: torch.Tensor, w_q: torch.Tensor | None, w_v: torch.Tensor | None,
                b_v: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Advance tokens `z [B, T, d]` whose encoder latents are `e`.

        Returns the new tokens and this block's keys/values `(k, v, meta_k, meta_v)`
        (`(k, v)` without meta-attention), each `[B, H, T, dh]`, which a rollout keeps as
        its sliding window.
        """
        pos = torch.arange(z.shape[1], device=z.device)
        q, k, v = self.self_attn.project_kv(self.ln1(z))
        z = z + self._drop(self.self_attn.combine(q, k, v, window_bias(self.self_attn.rel_bias, pos, pos)))
        if not self.meta_attention:
            return z + self._drop(self.mlp(self.ln3(z))), (k, v)
        mk, mv = self.meta_attn.project_kv(e, w_v, b_v)
        mq = self.meta_attn.query(self.ln2(z), w_q)
        z = z + self._drop(self.meta_attn.combine(mq, mk, mv, window_bias(self.meta_attn.rel_bias, pos, pos)))
        return z + self._drop(self.mlp(self.ln3(z))), (k, v, mk, mv)


class ActiveDecoder(nn.Module):
    """Autoregressive transformer decoder with meta-learned attention.

    Args:
        state_dim: dimension of `x = (q, p)` (and of the encoder latents).
        control_dim: dimension of `u` (0 for autonomous systems).
        d_model: token width; divisible by `heads`.
        heads: attention heads. layers: decoder blocks. context: window length `c`.
        dropout: dropout on attention weights and residual branches in training.
        meta_attention: False builds ablation D.3 (paper Table 5): blocks without
            meta-attention, so no local parameters φ and the encoder latents are not read.
        residual: what the increment is added to (`MetaSym.anchor`): "state" predicts
            `x_{t+1} = x_t + Δ`; "encoder" predicts `x_{t+1} = Φ_θ(x_t, h_t) + Δ`, the symplectic
            encoder's flow step plus the decoder's correction (dissipation, controls, quirks), as
            in the paper's near-symplecticity argument D(e) = e + … (docs/decisions.md);
            "nominal:<name>" predicts `x_{t+1} = f(x_t, u_t, h_t) + Δ`, a known nominal step
            (`models.nominal.NOMINAL`, e.g. "nominal:quadrotor") plus the learned correction;
            "mean" predicts `x_{t+1} = x̄ + Δ`, the training mean of the state plus the increment: the
            head predicts the next state itself (METHOD §3 without the chosen residual), for a record
            whose every frame carries white noise (the quantum heterodyne record), where `x_t + Δ` makes
            the decoder cancel each frame's noise to predict the signal (docs/decisions.md).
        linear_skip: also add a linear map of the step's normalised inputs `[x_t, u_t, h_t]` to the increment
            (zero at init; a global parameter). The head reads the token through the final layer norm, which
            bounds Δ whatever the inputs' size: a flight more energetic than any in training (the heavy OOD
            quadrotor of Table 1) then needs increments the head cannot reach. The linear term scales with
            the inputs (docs/decisions.md, "The decoder's increment was bounded").
    """

    def __init__(self, state_dim: int, control_dim: int, d_model: int, heads: int = 4, layers: int = 1,
                 context: int = 10, dropout: float = 0.0, meta_attention: bool = True,
                 residual: str = "state", linear_skip: bool = False) -> None:
        super().__init__()
        if state_dim <= 0 or control_dim < 0 or d_model <= 0 or layers < 1 or context < 1:
            raise MetaSymError("ActiveDecoder needs state_dim > 0, control_dim >= 0, d_model > 0, "
                               f"layers >= 1, context >= 1; got {state_dim}, {control_dim}, {d_model}, "
                               f"{layers}, {context}")
        if heads < 1 or d_model % heads:
            raise MetaSymError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.state_dim, self.control_dim, self.d_model = state_dim, control_dim, d_model
        self.heads, self.layers, self.context, self.dropout = heads, layers, context, dropout
        if not isinstance(meta_attention, bool):
            raise MetaSymError(f"meta_attention must be true or false, got {meta_attention!r}")
        self.meta_attention = meta_attention
        if residual not in RESIDUALS and not nominal.is_nominal(residual):
            raise MetaSymError(f"residual must be one of {', '.join(RESIDUALS)} or nominal:<system>, got "
                               f"{residual!r}")
        nominal.check(residual)
        self.residual = residual
        self.control_net = ControlNet(state_dim, control_dim, d_model)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, state_dim, heads, context, dropout, meta_attention)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), zero_linear(d_model, state_dim))
        if not isinstance(linear_skip, bool):
            raise MetaSymError(f"linear_skip must be true or false, got {linear_skip!r}")
        self.skip = zero_linear(state_dim + control_dim + 1, state_dim) if linear_skip else None

    @property
    def linear_skip(self) -> bool:
        """Whether a linear map of the step's inputs is added to the increment (`linear_skip`)."""
        return self.skip is not None

    def config(self) -> dict:
        """Constructor arguments, for checkpoints (older ones lack `meta_attention`, `residual` and
        `linear_skip`: the defaults True, "state" and False)."""
        return {"state_dim": self.state_dim, "control_dim": self.control_dim, "d_model": self.d_model,
                "heads": self.heads, "layers": self.layers, "context": self.context, "dropout": self.dropout,
                "meta_attention": self.meta_attention, "residual": self.residual, "linear_skip": self.linear_skip}

    # -- parameter split -------------------------------------------------------------------------
    @staticmethod
    def is_local(name: str) -> bool:
        """Local (per-system) parameters: the meta-attention `W_Q` and `W_V` (with its bias `b_V`)."""
        return name.endswith(LOCAL_SUFFIXES)

    def local_parameters(self) -> dict[str, nn.Parameter]:
        """φ: meta-attention `W_Q`, `W_V`, `b_V` of every block, by name (for `functional_call`);
        empty without meta-attention."""
        return {n: p for n, p in self.named_parameters() if self.is_local(n)}

    def global_parameters(self) -> dict[str, nn.Parameter]:
        """θ: every other decoder parameter, by name."""
        return {n: p for n, p in self.named_parameters() if not self.is_local(n)}

    def _local(self, local: dict[str, torch.Tensor] | None, i: int) -> tuple:
        """Block i's local `(W_Q, W_V, b_V)` from `local` (None entries: the module's own)."""
        if not local:
            return None, None, None
        return tuple(local.get(f"blocks.{i}.{suffix}") for suffix in LOCAL_SUFFIXES)

    # -- evaluation ------------------------------------------------------------------------------
    def forward_with_kv(self, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor, e: torch.Tensor,
                        local: dict[str, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """`forward` plus every block's keys/values (the rollout's prefill)."""
        z = self.control_net(x, u, h)
        kv = []
        for i, block in enumerate(self.blocks):
            z, block_kv = block(z, e, *self._local(local, i))
            kv.append(block_kv)
        delta = self.head(self.ln_f(z))
        if self.skip is not None:
            delta = delta + self.skip(torch.cat([x, u, h], dim=-1))
        return delta, kv

    def forward(self, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor, e: torch.Tensor,
                local: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Teacher-forced increments `[B, T, D]`: output t sees inputs at steps t-c+1..t only."""
        return self.forward_with_kv(x, u, h, e, local)[0]
