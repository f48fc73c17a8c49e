"""Fast autoregressive stepping: fixed-shape sliding windows of cached keys/values.

After the context is prefilled by the teacher-forced pass, the keys/values of
the last `c-1` tokens of every block sit in fixed-size ring buffers; each
rollout step computes one token, writes its keys/values into the ring (in place
when no gradient is needed: no per-step allocation of the window) and attends
over it with the relative-position bias of each slot. `MetaSym.rollout` uses it; tests check
it against `MetaSym.rollout_reference`.
"""

from __future__ import annotations

import math

import torch

from metasym_core.models.attention import merge_heads
from metasym_core.models.decoder import ActiveDecoder


def initial_windows(kv: list[tuple[torch.Tensor, ...]], context: int
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Ring buffers `[B, c, d_model]` holding the last `c-1` keys/values of every block, and the
    absolute position held by each slot `[c]` (token t lives in slot `t % c`; empty slots hold -c).

    Returned flat in the order: all self-keys, self-values, meta-keys, meta-values.
    """
    n = kv[0][0].shape[2]
    first = max(0, n - context + 1)
    positions = torch.arange(first, n, device=kv[0][0].device)
    slots = positions % context
    windows = []
    for j in range(4):
        for block_kv in kv:
            src = merge_heads(block_kv[j][:, :, first:])
            ring = src.new_zeros(src.shape[0], context, src.shape[2])
            ring[:, slots] = src
            windows.append(ring)
    pos = torch.full((context,), -context, dtype=torch.long, device=positions.device)
    pos[slots] = positions
    return windows, pos


def head_indicator(d_model: int, heads: int, like: torch.Tensor) -> torch.Tensor:
    """`G [d_model, H]` with `G[d, h] = 1` when feature d belongs to head h."""
    return torch.repeat_interleave(torch.eye(heads, dtype=like.dtype, device=like.device), d_model // heads, dim=0)


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                G: torch.Tensor) -> torch.Tensor:
    """One query per row: `q [B, d]`, rings `k, v [B, c, d]`, `bias [c, H]` → `[B, d]`.

    Per-head dot products are an elementwise product summed per head by the
    indicator matmul `G`: for one query this beats batched 1×dh matmuls, and the
    softmax over the c slots is spelled out (aten's is slow for tiny rows).
    """
    scale = 1.0 / math.sqrt(q.shape[-1] // G.shape[1])
    scores = ((q.unsqueeze(1) * k) @ G) * scale + bias
    scores = (scores - scores.amax(1, keepdim=True)).exp()
    weights = scores / scores.sum(1, keepdim=True)
    return ((weights @ G.T) * v).sum(1)


def _push(ring: torch.Tensor, slot: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Write `new [B, d]` into `ring[:, slot]` (`slot` a 1-element index tensor): in place unless
    autograd needs the old value."""
    if torch.is_grad_enabled():
        return ring.index_copy(1, slot, new.unsqueeze(1))
    return ring.index_copy_(1, slot, new.unsqueeze(1))


def window_bias_at(rel_bias: torch.Tensor, pos: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Bias `[c, H]` of the token at `position` over the ring slots (-inf for empty/too-old slots)."""
    context = rel_bias.shape[-1]
    dist = position - pos
    bias = rel_bias[:, dist.clamp(0, context - 1)].T
    return bias.masked_fill((dist >= context).unsqueeze(1), float("-inf"))


def decoder_step(decoder: ActiveDecoder, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor, e: torch.Tensor,
                 windows: list[torch.Tensor], pos: torch.Tensor, position: torch.Tensor,
                 local: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Feed one token per row at absolute `position` (`x, u, h, e` are `[B, ·]`, normalised;
    `position` a 1-element long tensor, so a compiled step serves every position).

    `pos` must already hold `position` in its slot. Returns the increment `[B, D]`
    and the updated ring buffers.
    """
    L = decoder.layers
    slot = position % decoder.context
    G = head_indicator(decoder.d_model, decoder.heads, x)
    windows = list(windows)
    z = decoder.control_net(x, u, h)
    for i, block in enumerate(decoder.blocks):
        w_q, w_v = decoder._local(local, i)
        sa, ma = block.self_attn, block.meta_attn
        q, k, v = sa.qkv(block.ln1(z)).chunk(3, dim=-1)
        sk = windows[i] = _push(windows[i], slot, k)
        sv = windows[L + i] = _push(windows[L + i], slot, v)
        z = z + sa.out(_attend_one(q, sk, sv, window_bias_at(sa.rel_bias, pos, position), G))
        mk = windows[2 * L + i] = _push(windows[2 * L + i], slot, ma.w_k(e))
        mv = windows[3 * L + i] = _push(windows[3 * L + i], slot, e @ (ma.w_v.weight if w_v is None else w_v).T)
        mq = block.ln2(z) @ (ma.w_q.weight if w_q is None else w_q).T
        z = z + ma.out(_attend_one(mq, mk, mv, window_bias_at(ma.rel_bias, pos, position), G))
        z = z + block.mlp(block.ln3(z))
    return decoder.head(decoder.ln_f(z)), windows
