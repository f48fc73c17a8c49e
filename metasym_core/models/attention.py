"""Banded causal attention with a learned relative-position bias.

A query at position i sees keys at positions j with 0 <= i - j < context (the
sliding context window). Positions enter only through the bias on i - j, so the
keys/values of a token never change once computed: rollouts can cache them
exactly (see `ActiveDecoder.step`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def window_bias(rel_bias: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive attention bias `[heads, Tq, Tk]`: `rel_bias[:, i-j]` inside the window, -inf outside."""
    context = rel_bias.shape[-1]
    dist = q_pos[:, None] - k_pos[None, :]
    inside = (dist >= 0) & (dist < context)
    bias = rel_bias[:, dist.clamp(0, context - 1)]
    return bias.masked_fill(~inside, float("-inf"))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, T, H*dh] -> [B, H, T, dh]`."""
    B, T, D = x.shape
    return x.view(B, T, heads, D // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`[B, H, T, dh] -> [B, T, H*dh]`."""
    B, H, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout: float) -> torch.Tensor:
    """Scaled dot-product attention of split-head tensors with an additive bias `[H, Tq, Tk]`.

    The softmax is spelled out: for rows as short as a context window (10-30) it
    is several times faster on CPU than the fused kernels, and exact the same.
    """
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + bias
    scores = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = scores / scores.sum(-1, keepdim=True)
    if dropout > 0:
        weights = F.dropout(weights, dropout, training=True)
    return weights @ v


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention over the context window (all global parameters)."""

    def __init__(self, d_model: int, heads: int, context: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.rel_bias = nn.Parameter(torch.zeros(heads, context))

    def project_kv(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values `[B, H, T, dh]` of the tokens `z`."""
        q, k, v = self.qkv(z).chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def combine(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention output in model space."""
        drop = self.dropout if self.training else 0.0
        return self.out(merge_heads(attend(q, k, v, bias, drop)))


class MetaAttention(nn.Module):
    """Meta-attention: tokens query the encoder latents `e` of the window.

    `Q = W_Q z` and `V = W_V e + b_V` are local (per-system) parameters, `K = W_K e`
    is global (METHOD §3). The value bias `b_V` (chosen, zero at init) gives the
    adaptation a direct per-system offset: with `V = W_V e` alone the attention
    output is a linear map of a weighted mean of latents, which cannot shift a
    prediction by a constant (e.g. the weight of a heavier quadrotor). Local
    weights may be passed explicitly to run adapted parameters without touching
    the module.
    """

    def __init__(self, d_model: int, latent_dim: int, heads: int, context: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(latent_dim, d_model, bias=False)
        self.w_v = nn.Linear(latent_dim, d_model)
        nn.init.zeros_(self.w_v.bias)
        self.out = nn.Linear(d_model, d_model)
        self.rel_bias = nn.Parameter(torch.zeros(heads, context))

    def project_kv(self, e: torch.Tensor, w_v: torch.Tensor | None = None,
                   b_v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (global `W_K`) and values (local `W_V`, `b_V`) of the latents, `[B, H, T, dh]`."""
        k = self.w_k(e)
        v = F.linear(e, self.w_v.weight if w_v is None else w_v, self.w_v.bias if b_v is None else b_v)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def query(self, z: torch.Tensor, w_q: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from the tokens with the (local) `W_Q`."""
        return split_heads(F.linear(z, self.w_q.weight if w_q is None else w_q), self.heads)

    def combine(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention output in model space."""
        drop = self.dropout if self.training else 0.0
        return self.out(merge_heads(attend(q, k, v, bias, drop)))
