"""Fast autoregressive stepping for `MetaSym.rollout`.

The context is prefilled by the teacher-forced pass; the keys/values of its last
`c-1` tokens go into fixed-size ring buffers (token t in slot `t % c`). Each step
then computes one token per row, writes its keys/values into the ring (in place
when no gradient is needed) and attends over it.

`StreamingPlan` folds, once per rollout, everything that does not change between
steps: the normalisation into the ControlNet, `W_K`/`W_V` and head weights, the
attention scale into the queries, the symmetric shear matrices of the encoder,
the control/step part of every future token, and the relative-position bias of
every step. A step is then ~80 small tensor ops instead of ~160, and the results
equal the plain path to round-off (tested against `MetaSym.rollout_reference`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metasym_core.models.attention import merge_heads
from metasym_core.models.encoder import ACTIVATIONS


def initial_windows(kv: list[tuple[torch.Tensor, ...]], context: int) -> list[torch.Tensor]:
    """Ring buffers `[B, c, d_model]` with the last `c-1` keys/values of every block
    (token t in slot `t % c`), flat in the order self-k, self-v, meta-k, meta-v per block
    (self-k, self-v only without meta-attention)."""
    n = kv[0][0].shape[2]
    first = max(0, n - context + 1)
    slots = torch.arange(first, n, device=kv[0][0].device) % context
    rings = []
    for block_kv in kv:
        for tensor in block_kv:
            src = merge_heads(tensor[:, :, first:])
            ring = src.new_zeros(src.shape[0], context, src.shape[2])
            ring[:, slots] = src
            rings.append(ring)
    return rings


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                G: torch.Tensor, denoms: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One (pre-scaled) query per row: `q [B, d]`, rings `k, v [B, c, d]`, `bias [c, H]` → `[B, d]`.

    Per-head dot products are an elementwise product summed per head by the
    indicator matmul `G [d, H]`: for one query this beats batched 1×dh matmuls.
    The softmax over the c slots is spelled out (aten's is slow for tiny rows).
    With `denoms` (no autograd) the row maximum is not subtracted; the softmax
    denominators are appended instead, for `denominators_safe` to check once.
    """
    scores = (q.unsqueeze(1) * k) @ G + bias
    if denoms is None:
        scores = (scores - scores.amax(1, keepdim=True)).exp()
    else:
        scores = scores.exp()
    total = scores.sum(1, keepdim=True)
    if denoms is not None:
        denoms.append(total)
    return ((scores / total @ G.T) * v).sum(1)


def denominators_safe(denoms: list[torch.Tensor]) -> bool:
    """Whether every unshifted softmax denominator lies 8 decades inside the dtype's normal
    range (float32: [1.2e-30, 3.4e30]): no overflow, and the largest term far from denormals."""
    if not denoms:
        return True
    info = torch.finfo(denoms[0].dtype)
    lo, hi = info.tiny * 1e8, info.max * 1e-8
    low, high = torch.aminmax(torch.cat([t.reshape(-1) for t in denoms]))
    return bool(low > lo) and bool(high < hi)


def _push(ring: torch.Tensor, slot: int, new: torch.Tensor) -> torch.Tensor:
    """Write `new [B, d]` into `ring[:, slot]`: in place unless autograd needs the old value."""
    if torch.is_grad_enabled():
        return ring.index_copy(1, torch.tensor([slot], device=ring.device), new.unsqueeze(1))
    ring[:, slot] = new
    return ring


class StreamingPlan:
    """A model's weights folded for stepping one rollout (see the module docstring)."""

    def __init__(self, model, local: dict[str, torch.Tensor] | None, future_u: torch.Tensor,
                 future_h: torch.Tensor, first_position: int, shift: bool = True) -> None:
        enc, dec = model.encoder, model.decoder
        # unshifted softmax (checked afterwards, see `denominators_safe`) only when no gradient is taken
        self.denoms: list[torch.Tensor] | None = None if shift else []
        D, c, H, d = dec.state_dim, dec.context, dec.heads, dec.d_model
        self.context, self.half = c, D // 2
        # encoder: symmetric shears, biases and activation scales (dropconnect drawn once per rollout)
        A, a = enc._weights()
        self.enc_layers = [[A[layer, k] for k in range(enc.sublayers)] for layer in range(enc.layers)]
        self.enc_bias, self.enc_a, self.enc_act = enc.bias, a, ACTIVATIONS[enc.activation]
        self.enc_shift = enc.shift
        # ControlNet with the normalisation folded in; the (u, h) part of every future token precomputed
        mean = torch.cat([model.state_mean, model.control_mean, model.step_mean])
        std = torch.cat([model.state_std, model.control_std, model.step_std])
        w = dec.control_net.proj.weight / std
        b = dec.control_net.proj.bias - w @ mean
        self.tok_x = w[:, :D].T.contiguous()
        self.tok_uh = F.linear(torch.cat([future_u, future_h], dim=-1), w[:, D:], b)  # [B, steps, d]
        self.G = torch.repeat_interleave(torch.eye(H, dtype=w.dtype, device=w.device), d // H, dim=0)
        scale = 1.0 / math.sqrt(d // H)
        self.blocks = []
        # without meta-attention (ablation D.3) the decoder never reads the latents: no encoder pass per step
        self.meta = dec.meta_attention
        self.encoder_residual = model.encoder_residual  # the prediction adds to Φ(x, h): encode every step
        self.anchor, self.state_residual, self.future_u = model.anchor, model.state_residual, future_u
        for i, blk in enumerate(dec.blocks):
            qkv = blk.self_attn.qkv.weight
            folded = dict(
                ln1=(blk.ln1.weight, blk.ln1.bias), ln3=(blk.ln3.weight, blk.ln3.bias),
                qkv=torch.cat([qkv[:d] * scale, qkv[d:]]), sa_out=(blk.self_attn.out.weight, blk.self_attn.out.bias),
                mlp=(blk.mlp[0].weight, blk.mlp[0].bias, blk.mlp[2].weight, blk.mlp[2].bias),
                sa_bias=self._bias_table(blk.self_attn.rel_bias, first_position, future_u.shape[1]))
            if self.meta:
                w_q, w_v, b_v = dec._local(local, i)
                w_q = blk.meta_attn.w_q.weight if w_q is None else w_q
                w_v = blk.meta_attn.w_v.weight if w_v is None else w_v
                b_v = blk.meta_attn.w_v.bias if b_v is None else b_v
                w_kv = torch.cat([blk.meta_attn.w_k.weight, w_v]) / model.state_std
                folded.update(
                    ln2=(blk.ln2.weight, blk.ln2.bias),
                    meta_kv=(w_kv, torch.cat([torch.zeros_like(b_v), b_v]) - w_kv @ model.state_mean),
                    meta_q=w_q * scale, ma_out=(blk.meta_attn.out.weight, blk.meta_attn.out.bias),
                    ma_bias=self._bias_table(blk.meta_attn.rel_bias, first_position, future_u.shape[1]))
            self.blocks.append(folded)
        self.ln_f = (dec.ln_f.weight, dec.ln_f.bias)
        lin1, lin2 = dec.head[0], dec.head[2]
        self.head = (lin1.weight, lin1.bias, lin2.weight * model.delta_std[:, None], lin2.bias * model.delta_std)
        # the linear skip (`ActiveDecoder(linear_skip=True)`) folded like the ControlNet, in state units
        self.skip_x = self.skip_uh = None
        if dec.skip is not None:
            ws = dec.skip.weight / std * model.delta_std[:, None]
            bs = dec.skip.bias * model.delta_std - ws @ mean
            self.skip_x = ws[:, :D].T.contiguous()
            self.skip_uh = F.linear(torch.cat([future_u, future_h], dim=-1), ws[:, D:], bs)  # [B, steps, D]

    def _bias_table(self, rel_bias: torch.Tensor, first: int, steps: int) -> torch.Tensor:
        """Bias `[steps, c, H]` of step k's token (position `first + k`) over the ring slots.

        Slot j then holds position `p = t - ((t - j) mod c)`; slots whose position
        precedes the observed context are empty (-inf).
        """
        c = self.context
        t = torch.arange(first, first + steps, device=rel_bias.device)[:, None]
        dist = (t - torch.arange(c, device=rel_bias.device)[None]) % c
        prefix = first - min(first, c - 1)  # oldest position still in the ring at the first step
        bias = rel_bias[:, dist].permute(1, 2, 0)
        return bias.masked_fill(((t - dist) < prefix).unsqueeze(-1), float("-inf"))

    def encode(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """`SymplecticEncoder.forward` on `[B, D]` with per-row steps `h [B, 1]` (centred on its shift)."""
        x = x - self.enc_shift
        q, p = x[:, :self.half], x[:, self.half:]
        last = len(self.enc_layers) - 1
        for layer, shears in enumerate(self.enc_layers):
            for k, A in enumerate(shears):
                if k % 2 == 0:
                    p = torch.addcmul(p, h, q @ A)
                else:
                    q = torch.addcmul(q, h, p @ A)
            q = torch.addcmul(q, h, self.enc_bias[layer, 0])
            p = torch.addcmul(p, h, self.enc_bias[layer, 1])
            if layer < last:
                if layer % 2 == 0:
                    p = torch.addcmul(p, h * self.enc_a[layer], self.enc_act(q))
                else:
                    q = torch.addcmul(q, h * self.enc_a[layer], self.enc_act(p))
        return torch.cat([q, p], dim=-1) + self.enc_shift

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int, position: int,
             rings: list[torch.Tensor]) -> torch.Tensor:
        """Predict the state after `x [B, D]` (step k of the plan, absolute `position`)."""
        slot = position % self.context
        e = self.encode(x, h) if self.meta or self.encoder_residual else None
        z = torch.addmm(self.tok_uh[:, k], x, self.tok_x)
        d = z.shape[-1]
        n = 4 if self.meta else 2  # rings per block: self k, v (and meta k, v)
        for i, blk in enumerate(self.blocks):
            r = n * i
            q, kk, vv = F.linear(F.layer_norm(z, (d,), *blk["ln1"]), blk["qkv"]).split(d, dim=-1)
            sk = rings[r] = _push(rings[r], slot, kk)
            sv = rings[r + 1] = _push(rings[r + 1], slot, vv)
            z = z + F.linear(_attend_one(q, sk, sv, blk["sa_bias"][k], self.G, self.denoms), *blk["sa_out"])
            if self.meta:
                ek, ev = F.linear(e, *blk["meta_kv"]).split(d, dim=-1)
                mk = rings[r + 2] = _push(rings[r + 2], slot, ek)
                mv = rings[r + 3] = _push(rings[r + 3], slot, ev)
                mq = F.linear(F.layer_norm(z, (d,), *blk["ln2"]), blk["meta_q"])
                z = z + F.linear(_attend_one(mq, mk, mv, blk["ma_bias"][k], self.G, self.denoms), *blk["ma_out"])
            w1, b1, w2, b2 = blk["mlp"]
            z = z + F.linear(F.silu(F.linear(F.layer_norm(z, (d,), *blk["ln3"]), w1, b1)), w2, b2)
        w1, b1, w2, b2 = self.head
        base = x if self.state_residual else self.anchor(x, e, self.future_u[:, k], h)
        if self.skip_x is not None:
            base = base + torch.addmm(self.skip_uh[:, k], x, self.skip_x)
        return base + F.linear(F.silu(F.linear(F.layer_norm(z, (d,), *self.ln_f), w1, b1)), w2, b2)
