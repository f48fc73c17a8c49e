"""NumPy rollout for small batches: `MetaSym.rollout` without torch's per-op overhead.

A quadrotor-sized step is ~80 tiny ops; torch spends ~2.5 µs of dispatch on each,
NumPy ~0.3-0.6 µs. This module folds a model's weights once (cached per model and
per `local_params`, re-folded when a parameter changes) into a few matrices, so
that one step is ~60 NumPy calls (a third of them cheap slices), and runs the whole rollout (prefill included)
in float64. `try_rollout` is the `numpy` rollout backend (`backends.py`); it returns None
when it does not apply (gradients needed, GPU, large batch, dropout on, ...). It stays for
installs without a C compiler, where `auto` takes it for batches ≤ MAX_BATCH; the compiled
kernel also uses its fold cache (`cached`, `inference_entry`).

What is folded:
- the encoder for a given step size h: the shears of each linear module compose to
  one affine map, so the encoder plus the decoder's meta-attention keys/values is
  `x @ W(h)` plus one small matmul per activation module; tables are cached per h;
- the ControlNet (normalisation included) into the same matmul, its control/step
  part precomputed for every token;
- every LayerNorm: centring is a matrix, so `LN(z) @ P = r * (z @ C P') + b'` with
  `r = 1/sqrt(var + eps)` read off the same matmul's `z @ C` columns;
- queries as a block-diagonal `[d, H]` matrix (scores are one matmul with the key
  ring), values already through the attention's output projection per head
  (`[H, d]` per token, bias spread over the heads: the softmax weights of each head
  sum to one), so attention is two matmuls, an exp and one division;
- MLP output biases into the matmul (a constant hidden unit); sigmoid is scipy's `expit`.
- without meta-attention (ablation D.3) the latents are not read: the first matmul is the
  ControlNet alone, one table for every h, and each block keeps two rings, not four.
- not folded: the encoder of models whose increment is added to its latent (`residual: encoder`,
  which needs e_t itself) or whose state is wider than MAX_STATE. It runs as it is
  (`Fold.encode`, 2·layers·sublayers `[n, n]` products), and the meta keys/values are one matmul on e_t.

The softmax is taken without subtracting the row maximum; instead every softmax
denominator is recorded and the result is only used when all lie in
[1e-290, 1e290] (no overflow, no denormal loss), else the torch path runs.
"""

from __future__ import annotations

import math
import operator
import weakref

import numpy as np
import torch
from scipy.special import expit
from torch import nn

#: largest batch the NumPy path takes: on 2 loaded cores it beat the torch streaming path up to
#: B=32 (11-12 vs 14-18 ms, quadrotor, horizon 30) and lost at B=40 (31-36 vs 15-19 ms)
MAX_BATCH = 32
#: more rows than this in one matmul and OpenBLAS goes multi-threaded, which on 2 loaded cores made a
#: [400, 16] @ [16, 161] product 12x slower than at 320 rows: the context pass must stay below it
MAX_PREFILL_ROWS = 320
#: wider decoders (d_model·heads) lose: the folded per-head matrices grow H-fold and the work is
#: FLOPs, not overhead (spring mesh, d_model 256: 247 ms vs 31 ms on the torch path at B=1)
MAX_WIDTH = 256
#: wider states are not folded into per-step-size encoder tables (`D x (d + n(L-1) + kv)` values each, one
#: per distinct h: a jittered stream makes a new one every call); their encoder runs as it is (`Fold.encode`)
MAX_STATE = 64
_CACHE_FOLDS = 4      # folds kept per model (the model's own weights plus a few local_params sets)
_CACHE_STEPS = 256    # encoder tables kept per fold (one per distinct step size)
_SAFE = (1e-290, 1e290)

_folds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _silu(a: np.ndarray) -> np.ndarray:
    return a * expit(a)


def _elu(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0.0) + np.expm1(np.minimum(v, 0.0))


_ACT = {"sigmoid": expit, "tanh": np.tanh, "elu": _elu}  # the encoder's activations, one ufunc call each


_version = operator.attrgetter("_version")


class _Watch:
    """The tensors a fold was built from; `matches` says whether they are unchanged.

    Holds the modules' parameter/buffer/submodule slots (catches reassignment), each
    tensor's version counter and data pointer (catches in-place updates and `.data =`),
    and a reference to each storage so a freed address cannot come back as a new
    tensor. In-place writes through `.data` bypass the version counter and are not seen.
    """

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.modules())
        self.modules = modules[1:]  # not the model itself: the cache is keyed weakly on it
        self.slots = []
        for mod in modules:
            for table in (mod._parameters, mod._buffers, mod._modules):
                for name, value in table.items():
                    self.slots.append((table, name, value))
        self.tensors = [v for _, _, v in self.slots if isinstance(v, torch.Tensor)]
        self.storages = [t.untyped_storage() for t in self.tensors]
        self.encoder = model.encoder
        self.key = self.state()

    def state(self) -> tuple:
        ts = self.tensors
        return (self.encoder.activation, *map(_version, ts), *map(torch.Tensor.data_ptr, ts))

    def matches(self) -> bool:
        return all(table.get(name) is value for table, name, value in self.slots) and self.state() == self.key


class _EncoderTable:
    """Encoder (+ meta keys/values) folded for one step size: see `Fold.encoder_tables`."""

    __slots__ = ("W", "b", "R")

    def __init__(self, W: np.ndarray, b: np.ndarray, R: list[np.ndarray]) -> None:
        self.W, self.b, self.R = W, b, R


class Fold:
    """A model's weights (with one set of local parameters) folded for the NumPy rollout."""

    def __init__(self, model, local: dict[str, torch.Tensor] | None) -> None:
        enc, dec = model.encoder, model.decoder
        D, m, d, H, c = dec.state_dim, dec.control_dim, dec.d_model, dec.heads, dec.context
        n, dh = D // 2, d // H
        self.D, self.m, self.d, self.H, self.c, self.n, self.L = D, m, d, H, c, n, dec.layers
        # without meta-attention (ablation D.3) the latents are never read: no encoder columns, 2 rings a block
        self.meta = dec.meta_attention
        self.rings_per_block = 4 if self.meta else 2
        self.kv_width = d + H * d if self.meta else 0
        # ControlNet with the normalisation folded in
        mean = _np(torch.cat([model.state_mean, model.control_mean, model.step_mean]))
        std = _np(torch.cat([model.state_std, model.control_std, model.step_std]))
        w = _np(dec.control_net.proj.weight) / std
        self.tok_x = np.ascontiguousarray(w[:, :D].T)
        self.tok_u = np.ascontiguousarray(w[:, D:D + m].T)
        self.tok_h = w[:, D + m].copy()
        self.tok_b = _np(dec.control_net.proj.bias) - w @ mean
        # encoder pieces (eval mode: no DropConnect)
        S = _np(enc.S)
        self.enc_A = S + np.swapaxes(S, -1, -2)
        self.enc_bias, self.enc_a, self.enc_shift = _np(enc.bias), _np(enc.a), _np(enc.shift)
        self.act = _ACT[enc.activation]
        # the encoder run as it is, not folded (see the module docstring): its latent is the anchor, or the
        # state is too wide for per-step-size tables
        self.explicit = unfolded(model)
        # the encoder residual's anchor keeps x_t on the coordinates the data never moved (`MetaSym.anchor`)
        self.keep = np.flatnonzero(_np(model.fixed)) if model.encoder_residual else None
        # head indicator maps: queries to block-diagonal [d, H], values through the output projection
        head_of = np.arange(d) // dh
        Eq = np.zeros((d, d, H))
        Eq[np.arange(d), np.arange(d), head_of] = 1.0
        self.Eq = Eq.reshape(d, d * H)
        scale = 1.0 / math.sqrt(dh)
        x_mean, x_std = _np(model.state_mean), _np(model.state_std)
        E, eb, self.blocks = [], [], []
        for i, blk in enumerate(dec.blocks):
            qkv = _np(blk.self_attn.qkv.weight)
            sa_Ev, sa_vb = self._value_map(blk.self_attn.out, head_of)
            sa_P = np.concatenate([qkv[:d].T * scale @ self.Eq, qkv[d:2 * d].T, qkv[2 * d:].T @ sa_Ev], axis=1)
            sa_b = np.concatenate([np.zeros(d * H + d), sa_vb])
            folded = dict(sa=self._ln_proj(blk.ln1, sa_P, sa_b), ma=None,
                          mlp=self._mlp(blk.ln3, blk.mlp[0], blk.mlp[2], 1.0),
                          sa_rel=_np(blk.self_attn.rel_bias), ma_rel=None, kv_off=i * self.kv_width)
            if self.meta:
                w_q, w_v, b_v = dec._local(local, i)
                w_q = _np(blk.meta_attn.w_q.weight if w_q is None else w_q)
                w_v = _np(blk.meta_attn.w_v.weight if w_v is None else w_v)
                b_v = _np(blk.meta_attn.w_v.bias if b_v is None else b_v)
                ma_Ev, ma_vb = self._value_map(blk.meta_attn.out, head_of)
                # meta keys/values of the encoder latent e, normalised: columns [K (d) | values·out (H d)]
                kv = np.concatenate([_np(blk.meta_attn.w_k.weight).T, w_v.T @ ma_Ev], axis=1)
                E.append(kv / x_std[:, None])
                eb.append(np.concatenate([np.zeros(d), ma_vb + b_v @ ma_Ev]) - (x_mean / x_std) @ kv)
                folded.update(ma=self._ln_proj(blk.ln2, w_q.T * scale @ self.Eq, 0.0),
                              ma_rel=_np(blk.meta_attn.rel_bias))
            self.blocks.append(folded)
        self.enc_E = np.concatenate(E, axis=1) if E else np.zeros((D, 0))
        self.enc_eb = np.concatenate(eb) if eb else np.zeros(0)
        # no meta-attention or an encoder not folded: one table for every step size, the ControlNet's state part
        self.plain = _EncoderTable(self.tok_x, np.zeros(0), []) if self.explicit or not self.meta else None
        lin1, lin2 = dec.head[0], dec.head[2]
        dstd = _np(model.delta_std)
        self.head = self._mlp(dec.ln_f, lin1, lin2, dstd)
        # the linear skip, folded like the ControlNet, in state units: x @ skip_x + u @ skip_u + h skip_h + skip_b
        self.skip = None
        if dec.skip is not None:
            ws = _np(dec.skip.weight) / std * dstd[:, None]
            self.skip = (np.ascontiguousarray(ws[:, :D].T), np.ascontiguousarray(ws[:, D:D + m].T), ws[:, D + m].copy(),
                         _np(dec.skip.bias) * dstd - ws @ mean)
        self.tables: dict[float, _EncoderTable] = {}
        self.biases: dict[tuple, tuple] = {}

    def prefill_bias(self, i: int, nt: int) -> tuple[np.ndarray, np.ndarray]:
        """Block i's self- and meta-attention bias over `nt` context tokens (cached)."""
        return self._cached(("prefill", i, nt), lambda: tuple(
            None if self.blocks[i][name] is None else _bias_prefill(self.blocks[i][name], nt)
            for name in ("sa_rel", "ma_rel")))

    def step_bias(self, i: int, first: int, steps: int) -> tuple[list, list]:
        """Block i's per-step biases over the ring, as lists of `[c, H]` (cached)."""
        return self._cached(("steps", i, first, steps), lambda: tuple(
            None if self.blocks[i][name] is None else list(_bias_steps(self.blocks[i][name], self.c, first, steps))
            for name in ("sa_rel", "ma_rel")))

    def _cached(self, key: tuple, build) -> tuple:
        hit = self.biases.get(key)
        if hit is None:
            if len(self.biases) >= _CACHE_STEPS:
                self.biases.clear()
            hit = self.biases[key] = build()
        return hit

    def _value_map(self, out: nn.Linear, head_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[d, H d]` map from values to per-head outputs `v_h W_out[:, h]ᵀ`, and the bias spread over heads."""
        d, H = self.d, self.H
        W = _np(out.weight)
        Ev = np.zeros((d, H, d))
        Ev[np.arange(d), head_of, :] = W.T
        return Ev.reshape(d, H * d), np.tile(_np(out.bias) / H, H)

    def _mlp(self, ln: nn.LayerNorm, lin1: nn.Linear, lin2: nn.Linear, scale) -> tuple:
        """`lin2(SiLU(lin1(LN(z)))) * scale` as `(M, bias, eps, W2)`: `silu(LN-proj(z)) @ W2`.

        An extra hidden unit with zero weights and bias 1 outputs the constant silu(1); its
        row of `W2` is `lin2`'s bias divided by that, which saves adding the bias."""
        w1, b1 = _np(lin1.weight), _np(lin1.bias)
        P = np.concatenate([w1.T, np.zeros((w1.shape[1], 1))], axis=1)
        M, bias, eps = self._ln_proj(ln, P, np.append(b1, 1.0))
        one = float(_silu(np.ones(1))[0])
        W2 = np.concatenate([_np(lin2.weight).T, _np(lin2.bias)[None] / one], axis=0) * scale
        return M, bias, eps, np.ascontiguousarray(W2)

    @staticmethod
    def _ln_proj(ln: nn.LayerNorm, P: np.ndarray, pb) -> tuple[np.ndarray, np.ndarray, float]:
        """LayerNorm followed by `@ P + pb` as `(z @ [C | C P'], bias, eps)`: centring `C` scaled
        by `1/sqrt(d)` so the first `d` columns' squares sum to the variance."""
        w, b = _np(ln.weight), _np(ln.bias)
        d = w.shape[0]
        C = (np.eye(d) - 1.0 / d) / math.sqrt(d)
        M = np.concatenate([C, C @ (math.sqrt(d) * w[:, None] * P)], axis=1)
        return np.ascontiguousarray(M), b @ P + pb, float(ln.eps)

    def encode(self, x: np.ndarray, h) -> np.ndarray:
        """`SymplecticEncoder.forward` of `x [..., D]` with step `h` (a float or `[..., 1]`), unfolded."""
        n, f = self.n, self.act
        A, bias, a = self.enc_A, self.enc_bias, self.enc_a
        y = x - self.enc_shift
        q, p = y[..., :n], y[..., n:]
        layers, sublayers = A.shape[:2]
        for layer in range(layers):
            for k in range(sublayers):
                if k % 2 == 0:
                    p = p + h * np.dot(q, A[layer, k])
                else:
                    q = q + h * np.dot(p, A[layer, k])
            q = q + h * bias[layer, 0]
            p = p + h * bias[layer, 1]
            if layer < layers - 1:
                if layer % 2 == 0:
                    p = p + h * a[layer] * f(q)
                else:
                    q = q + h * a[layer] * f(p)
        return np.concatenate([q, p], axis=-1) + self.enc_shift

    def latents(self, x: np.ndarray, h) -> tuple[np.ndarray, np.ndarray]:
        """For an unfolded encoder: the meta keys/values of `x [..., D]` (`[..., kv]`, the columns the folded
        tables give) and the anchor the increment is added to (`MetaSym.anchor`)."""
        e = self.encode(x, h)
        rest = np.dot(e, self.enc_E) + self.enc_eb
        if self.keep is None:
            return rest, x
        e[..., self.keep] = x[..., self.keep]
        return rest, e

    def encoder_tables(self, steps: np.ndarray) -> list[_EncoderTable]:
        """Tables for the step sizes `steps [N]` (cached per value).

        The encoder state is tracked as `y = x Mx + c + Σ_j t_j R_j` where
        `t_j = f(γ pre_j)` is the j-th activation term (`c` starts at `-shift`, and
        the output adds `shift` back: the encoder's centring). Each table holds
        `W = [tok_x | pre_0 | pre_1 | ... | kv]` (x's coefficients), the constants `b`
        and for each term the contributions `R_j` of `t_j` to the later columns.
        """
        if self.plain is not None:
            return [self.plain] * len(steps)
        keys = [float(h) for h in steps]
        found = {h: self.tables.get(h) for h in set(keys)}  # local: safe if another thread clears the cache
        missing = sorted(h for h, table in found.items() if table is None)
        if missing:
            if len(self.tables) + len(missing) > _CACHE_STEPS:
                self.tables.clear()
            for h, table in zip(missing, self._build_tables(np.array(missing)), strict=True):
                found[h] = self.tables[h] = table
        return [found[h] for h in keys]

    def _build_tables(self, hs: np.ndarray) -> list[_EncoderTable]:
        D, n, N = self.D, self.n, len(hs)
        h = hs[:, None, None]
        halves = (slice(0, n), slice(n, D))
        Mx = np.repeat(np.eye(D)[None], N, axis=0)
        c = np.repeat(-self.enc_shift[None, None], N, axis=0)  # the stack starts from x - shift
        Rs: list[np.ndarray] = []
        pres = []  # per term: (x coefficients, constants, contributions of earlier terms)
        layers, sublayers = self.enc_A.shape[:2]
        for layer in range(layers):
            for k in range(sublayers):
                src, dst = halves if k % 2 == 0 else halves[::-1]
                for T in [Mx, c, *Rs]:
                    T[..., dst] += h * (T[..., src] @ self.enc_A[layer, k])
            c[:, 0, :n] += hs[:, None] * self.enc_bias[layer, 0]
            c[:, 0, n:] += hs[:, None] * self.enc_bias[layer, 1]
            if layer < layers - 1:
                src, dst = halves if layer % 2 == 0 else halves[::-1]
                pres.append((Mx[..., src].copy(), c[..., src].copy(), [R[..., src].copy() for R in Rs]))
                R = np.zeros((N, n, D))
                R[..., dst] = h * np.diag(self.enc_a[layer])
                Rs.append(R)
        tok = np.broadcast_to(self.tok_x, (N, D, self.d))
        W = np.concatenate([tok] + [p[0] for p in pres] + [Mx @ self.enc_E], axis=2)
        b = np.concatenate([p[1] for p in pres] + [(c + self.enc_shift) @ self.enc_E + self.enc_eb], axis=2)[:, 0]
        R = [np.concatenate([pres[jj][2][j] for jj in range(j + 1, len(pres))] + [Rs[j] @ self.enc_E], axis=2)
             for j in range(len(Rs))]
        return [_EncoderTable(np.ascontiguousarray(W[i]), b[i].copy(), [np.ascontiguousarray(r[i]) for r in R])
                for i in range(N)]


def unfolded(model) -> bool:
    """Whether the NumPy path runs `model`'s encoder as it is rather than folded per step size (see the module
    docstring); it then also takes step sizes that differ between rows."""
    return bool(model.encoder_residual or model.state_dim > MAX_STATE)


def _fold_for(model, local: dict[str, torch.Tensor] | None, entry: tuple | None = None) -> Fold:
    """The cached fold of `model` with `local`, re-folded when either changed."""
    return cached(model, local, Fold, "numpy", entry)


def cached(model, local: dict[str, torch.Tensor] | None, build, tag: str, entry: tuple | None = None):
    """`build(model, local)`, cached per model, `tag` and set of local tensors; rebuilt when either changed
    (the NumPy fold here, the kernel's packed weights in `native`)."""
    folds = (entry or _entry(model))[1]
    items = tuple(sorted(local.items())) if local else ()
    lkey = (tag, *((name, id(t), t._version, t.data_ptr()) for name, t in items))
    hit = folds.get(lkey)
    # the entry keeps the local tensors alive, so their ids and addresses cannot be reused meanwhile
    if hit is not None and all(a is b for (_, a), (_, b) in zip(hit[1], items, strict=True)):
        return hit[0]
    if len(folds) >= _CACHE_FOLDS:
        folds.pop(next(iter(folds), None), None)
    fold = build(model, local)
    folds[lkey] = (fold, items, [t.untyped_storage() for _, t in items])
    return fold


def clear_cache(model=None) -> None:
    """Forget the folded weights of `model` (all models if None): needed only after writing
    parameters in place through `.data`, which the version counters do not see."""
    if model is None:
        _folds.clear()
    else:
        _folds.pop(model, None)


def _entry(model) -> tuple:
    """`(watch, folds)` of `model`, rebuilt when its tensors or modules changed."""
    entry = _folds.get(model)
    if entry is None or not entry[0].matches():
        entry = (_Watch(model), {})
        _folds[model] = entry
    return entry


def applicable(model, tensors: list[torch.Tensor], batch: int) -> tuple | None:
    """The model's cache entry if the NumPy path may run (CPU float32/64, small batch and model,
    eval behaviour, no autograd needed), else None."""
    t0 = tensors[0]
    if batch > MAX_BATCH:
        return None
    dec = model.decoder
    context_rows = batch * min(t0.shape[1], dec.layers * (dec.context - 1) + 1)
    if context_rows > MAX_PREFILL_ROWS or dec.d_model * dec.heads > MAX_WIDTH:
        return None
    return inference_entry(model, tensors)


def inference_entry(model, tensors: list[torch.Tensor]) -> tuple | None:
    """The model's cache entry if a CPU inference path may run (float32/64 on the CPU, eval
    behaviour, no autograd needed), else None.

    Cheap checks first, so training loops (module in training mode, or gradients wanted)
    pay almost nothing for the test."""
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in (torch.float32, torch.float64) or model.training:
        return None
    if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                    or any(p.requires_grad for p in model.parameters())):
        return None
    entry = _entry(model)
    # dropout / DropConnect of a submodule left in training mode are drawn by the torch path
    return None if any(mod.training for mod in entry[0].modules) else entry


def try_rollout(model, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor, future: torch.Tensor,
                horizon: int, local: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
    """`MetaSym.rollout` on checked inputs (`h [B, T + horizon, 1]`) via NumPy, or None if it does not apply."""
    if not (model.state_residual or model.encoder_residual):
        return None  # a nominal step (`models.nominal`) has no NumPy twin here
    B, T = states.shape[:2]
    extra = list(local.values()) if local else []
    entry = applicable(model, [states, controls, h, future, *extra], B)
    if entry is None:
        return None
    hs = h[..., 0].detach().numpy()
    if B > 1 and not unfolded(model) and not (hs == hs[:1]).all():
        return None  # per-row step sizes: one encoder table per token would not be shared
    fold = _fold_for(model, local, entry)
    with np.errstate(all="ignore"):  # overflow / 0/0 are caught by the range check and the torch path runs
        out = rollout_numpy(fold, states.detach().numpy(), controls.detach().numpy(), hs,
                            future.detach().numpy(), horizon)
    if out is None:
        return None
    return torch.from_numpy(out).to(states.dtype)


def _bias_steps(rel: np.ndarray, c: int, first: int, steps: int) -> np.ndarray:
    """Bias `[steps, c, H]` of the step tokens (positions `first + k`) over the ring slots (see
    `streaming.StreamingPlan._bias_table`); slots before the observed context are -inf."""
    t = np.arange(first, first + steps)[:, None]
    dist = (t - np.arange(c)[None]) % c
    prefix = first - min(first, c - 1)
    bias = rel[:, dist].transpose(1, 2, 0).copy()
    bias[(t - dist) < prefix] = -np.inf
    return bias


def _bias_prefill(rel: np.ndarray, n: int) -> np.ndarray:
    """Banded causal bias `[n, n, H]` of n consecutive tokens (query i, key j)."""
    c = rel.shape[1]
    dist = np.arange(n)[:, None] - np.arange(n)[None]
    inside = (dist >= 0) & (dist < c)
    bias = rel[:, np.clip(dist, 0, c - 1)].transpose(1, 2, 0).copy()
    bias[~inside] = -np.inf
    return bias


def _ln(z: np.ndarray, M: np.ndarray, bias: np.ndarray, eps: float, d: int) -> np.ndarray:
    """`LayerNorm(z) @ P + pb` from a folded `(M, bias, eps)` (any leading dims)."""
    y = np.dot(z, M)
    zs = y[..., :d]
    if y.ndim == 1:
        return y[d:] * (1.0 / math.sqrt(float(np.dot(zs, zs)) + eps)) + bias
    return y[..., d:] * (1.0 / np.sqrt(np.add.reduce(zs * zs, -1, keepdims=True) + eps)) + bias


def _mlp(z: np.ndarray, mlp: tuple, d: int) -> np.ndarray:
    """A folded `Fold._mlp` on `z`."""
    M, bias, eps, W2 = mlp
    return np.dot(_silu(_ln(z, M, bias, eps, d)), W2)


def _encode_rest(X: np.ndarray, table_R: list[np.ndarray], d: int, n: int, f) -> np.ndarray:
    """From the first matmul's columns to the meta keys/values (activation terms added)."""
    rest = X[..., d:]
    for R in table_R:
        t = f(rest[..., :n])
        rest = rest[..., n:] + np.dot(t, R)
    return rest


def rollout_numpy(fold: Fold, xs: np.ndarray, us: np.ndarray, hs: np.ndarray, future: np.ndarray,
                  horizon: int) -> np.ndarray | None:
    """The rollout on arrays (step sizes `hs [B, T + horizon]`, the same in every row unless `fold.explicit`);
    None if a softmax left the safe range."""
    B, T = xs.shape[:2]
    D, d, c, L = fold.D, fold.d, fold.c, fold.L
    s = max(0, T - 1 - L * (c - 1))  # earlier context cannot reach the outputs (L blocks of width c)
    ntok = T - s + horizon - 1
    hv = hs[:, s:s + ntok].astype(np.float64)  # [B, ntok]
    tables = fold.encoder_tables(hv[0, :1] if hv[0].min() == hv[0].max() else hv[0])
    if len(tables) == 1:
        tables = tables * ntok
    ncols = tables[0].W.shape[1]
    # per-token constants of the first matmul: ControlNet (u, h) part and the encoder constants
    u_all = np.concatenate([us[:, s:], future[:, :horizon - 1]], axis=1).astype(np.float64)
    bias = np.empty((B, ntok, ncols))
    bias[..., :d] = u_all @ fold.tok_u + (hv[..., None] * fold.tok_h + fold.tok_b)
    bias[..., d:] = tables[0].b if all(tb is tables[0] for tb in tables) else np.stack([tb.b for tb in tables])
    denoms = []
    x, rings = _prefill(fold, xs[:, s:].astype(np.float64), bias[:, :T - s], tables[:T - s], hv[:, :T - s], T, s,
                        denoms)
    skip = None  # the linear skip's per-token constants (u, h parts) [B, ntok, D]
    if fold.skip is not None:
        skip = u_all @ fold.skip[1] + (hv[..., None] * fold.skip[2] + fold.skip[3])
        x = x + (np.dot(xs[:, -1].astype(np.float64), fold.skip[0]) + skip[:, T - s - 1])
    out = np.empty((B, horizon, D))
    out[:, 0] = x
    if horizon > 1:
        if B == 1:
            _steps_single(fold, x[0], bias[0, T - s:], tables[T - s:], hv[0, T - s:], T, rings, out[0], denoms,
                          None if skip is None else skip[0, T - s:])
        else:
            _steps_batch(fold, x, bias[:, T - s:], tables[T - s:], hv[:, T - s:, None], T, rings, out, denoms,
                         None if skip is None else skip[:, T - s:])
    every = np.concatenate([g.ravel() for g in denoms])
    if not (every.min() > _SAFE[0] and every.max() < _SAFE[1]) or not np.isfinite(out).all():
        return None
    return out


def _prefill(fold: Fold, xs: np.ndarray, bias: np.ndarray, tables: list[_EncoderTable], hv: np.ndarray, T: int,
             s: int, denoms: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Teacher-forced pass over the context tokens `s..T-1` (step sizes `hv [B, n]`): the first prediction and
    the rings.

    Token-wise work runs on `[B * n, ·]` rows (2-D `np.dot` is BLAS; N-D is not)."""
    B, nt = xs.shape[:2]
    N, D, d, H, c, n = B * nt, fold.D, fold.d, fold.H, fold.c, fold.n
    dH, dHd = d * H, d * H + d
    f = fold.act
    bias = bias.reshape(N, -1)
    anchor = xs[:, -1]
    if fold.explicit:  # one table; the encoder on every token, with its own step size
        X = np.dot(xs.reshape(N, D), tables[0].W) + bias
        rest, anchors = fold.latents(xs.reshape(N, D), hv.reshape(N, 1))
        anchor = anchors.reshape(B, nt, D)[:, -1]
    elif all(tb is tables[0] for tb in tables):
        X = np.dot(xs.reshape(N, D), tables[0].W) + bias
        rest = _encode_rest(X, tables[0].R, d, n, f)
    else:  # irregular context steps: one table per token
        X = np.matmul(xs[:, :, None, :], np.stack([tb.W for tb in tables])).reshape(N, -1) + bias
        rest = X[:, d:]
        for j in range(len(tables[0].R)):
            t = f(rest[:, :n]).reshape(B, nt, 1, n)
            R = np.stack([tb.R[j] for tb in tables])
            rest = rest[:, n:] + np.matmul(t, R).reshape(N, -1)
    z = X[:, :d]
    keep = np.arange(max(0, nt - (c - 1)), nt)  # tokens that stay in the ring
    slots = (s + keep) % c
    rings = []
    for i, blk in enumerate(fold.blocks):
        p = _ln(z, *blk["sa"], d)
        K = p[:, dH:dHd].reshape(B, nt, d)
        V = p[:, dHd:].reshape(B, nt, H * d)
        sa_bias, ma_bias = fold.prefill_bias(i, nt)
        z = z + _attend_all(p[:, :dH].reshape(B, nt, d, H), K, V, sa_bias, denoms)
        kept = [(K, d), (V, H * d)]
        if fold.meta:
            o = blk["kv_off"]
            mK = rest[:, o:o + d].reshape(B, nt, d)
            mV = rest[:, o + d:o + fold.kv_width].reshape(B, nt, H * d)
            z = z + _attend_all(_ln(z, *blk["ma"], d).reshape(B, nt, d, H), mK, mV, ma_bias, denoms)
            kept += [(mK, d), (mV, H * d)]
        z = z + _mlp(z, blk["mlp"], d)
        for src, width in kept:
            ring = np.zeros((B, c, width))
            ring[:, slots] = src[:, keep]
            rings.append(ring)
    x = anchor + _mlp(z.reshape(B, nt, d)[:, -1], fold.head, d)
    return x, rings


def _attend_all(Q: np.ndarray, K: np.ndarray, V: np.ndarray, bias: np.ndarray, denoms: list) -> np.ndarray:
    """Attention of n tokens among themselves: `Q [B, n, d, H]` block-diagonal queries, `K [B, n, d]`,
    values through the output projection `V [B, n, H d]`, `bias [n, n, H]` → `[B n, d]`."""
    B, nt, d, H = Q.shape
    e = np.exp(np.matmul(K[:, None], Q) + bias)  # [B, n(query), n(key), H]
    S = e.sum(2)
    denoms.append(S)
    w = e / S[:, :, None, :]
    return np.matmul(w.reshape(B, nt, nt * H), V.reshape(B, nt * H, d)).reshape(B * nt, d)


def _steps_single(fold: Fold, x: np.ndarray, bias: np.ndarray, tables: list[_EncoderTable], hv: np.ndarray,
                  T: int, rings: list[np.ndarray], out: np.ndarray, denoms: list, skip: np.ndarray | None) -> None:
    """Steps 1.. of a one-row rollout on 1-D arrays (step sizes `hv [steps]`, the linear skip's constants
    `skip [steps, D]` or None; fewest NumPy calls); writes `out[1:]`."""
    d, H, c, n, kw = fold.d, fold.H, fold.c, fold.n, fold.kv_width
    f = fold.act
    dot, exp = np.dot, np.exp
    steps = len(tables)
    ones = np.ones(c)
    dH, dHd = d * H, d * H + d
    rings = [r[0] for r in rings]
    flat = [r.reshape(c * H, d) if i % 2 else r for i, r in enumerate(rings)]  # value rings as [c H, d]
    nr = fold.rings_per_block
    guard = np.empty((steps, len(fold.blocks), nr // 2, H))  # one softmax (two with meta-attention) per block
    denoms.append(guard)
    blocks = []
    for i, blk in enumerate(fold.blocks):
        sa_bias, ma_bias = fold.step_bias(i, T, steps)
        meta = (*rings[nr * i + 2:nr * i + 4], flat[nr * i + 3]) if fold.meta else (None, None, None)
        blocks.append((*blk["sa"], *(blk["ma"] or (None,) * 3), *blk["mlp"], sa_bias, ma_bias,
                       *rings[nr * i:nr * i + 2], meta[0], meta[1], flat[nr * i + 1], meta[2], blk["kv_off"]))
    hd_M, hd_b, hd_eps, hW2 = fold.head
    sq = math.sqrt
    explicit = fold.explicit
    skip_x = None if skip is None else fold.skip[0]
    for k in range(steps):
        tb = tables[k]
        slot = (T + k) % c
        X = dot(x, tb.W) + bias[k]
        if explicit:
            rest, base = fold.latents(x, hv[k])
        else:
            base, rest = x, X[d:]
            for R in tb.R:
                rest = rest[n:] + dot(f(rest[:n]), R)
        if skip_x is not None:
            base = base + (dot(x, skip_x) + skip[k])
        z = X[:d]
        for i, (sa_M, sa_b, sa_eps, ma_M, ma_b, ma_eps, ml_M, ml_b, ml_eps, W2, sa_bias, ma_bias,
                sK, sV, mK, mV, sVf, mVf, o) in enumerate(blocks):
            g = guard[k, i]
            y = dot(z, sa_M)
            zs = y[:d]
            p = y[d:] * (1.0 / sq(float(dot(zs, zs)) + sa_eps)) + sa_b
            sK[slot] = p[dH:dHd]
            sV[slot] = p[dHd:]
            e = exp(dot(sK, p[:dH].reshape(d, H)) + sa_bias[k])
            z = z + dot((e / dot(ones, e, out=g[0])).ravel(), sVf)
            if mK is not None:
                mK[slot] = rest[o:o + d]
                mV[slot] = rest[o + d:o + kw]
                y = dot(z, ma_M)
                zs = y[:d]
                q = y[d:] * (1.0 / sq(float(dot(zs, zs)) + ma_eps)) + ma_b
                e = exp(dot(mK, q.reshape(d, H)) + ma_bias[k])
                z = z + dot((e / dot(ones, e, out=g[1])).ravel(), mVf)
            y = dot(z, ml_M)
            zs = y[:d]
            a = y[d:] * (1.0 / sq(float(dot(zs, zs)) + ml_eps)) + ml_b
            z = z + dot(a * expit(a), W2)
        y = dot(z, hd_M)
        zs = y[:d]
        a = y[d:] * (1.0 / sq(float(dot(zs, zs)) + hd_eps)) + hd_b
        x = out[k + 1] = base + dot(a * expit(a), hW2)


def _steps_batch(fold: Fold, x: np.ndarray, bias: np.ndarray, tables: list[_EncoderTable], hv: np.ndarray,
                 T: int, rings: list[np.ndarray], out: np.ndarray, denoms: list, skip: np.ndarray | None) -> None:
    """Steps 1.. for `B > 1` rows (`x [B, D]`, step sizes `hv [B, steps, 1]`, rings `[B, c, ·]`, the linear
    skip's constants `skip [B, steps, D]` or None); writes `out[:, 1:]`."""
    B = x.shape[0]
    d, H, c, n, kw = fold.d, fold.H, fold.c, fold.n, fold.kv_width
    f = fold.act
    steps = len(tables)
    ones = np.ones(c)
    dH, dHd = d * H, d * H + d
    nr = fold.rings_per_block
    guard = np.empty((steps, len(fold.blocks), nr // 2, B, H))
    denoms.append(guard)
    biases = [fold.step_bias(i, T, steps) for i in range(len(fold.blocks))]
    flat = [r.reshape(B, c * H, d) if i % 2 else r for i, r in enumerate(rings)]

    def attend(Kr, Vf, q, b, g):
        e = np.exp(np.matmul(Kr, q.reshape(B, d, H)) + b)
        S = np.matmul(ones, e, out=g)
        return np.matmul((e / S[:, None, :]).reshape(B, 1, c * H), Vf)[:, 0]

    for k in range(steps):
        tb = tables[k]
        slot = (T + k) % c
        X = np.dot(x, tb.W) + bias[:, k]
        if fold.explicit:
            rest, base = fold.latents(x, hv[:, k])
        else:
            base, rest = x, _encode_rest(X, tb.R, d, n, f)
        if skip is not None:
            base = base + (np.dot(x, fold.skip[0]) + skip[:, k])
        z = X[:, :d]
        for i, blk in enumerate(fold.blocks):
            sK, sV = rings[nr * i:nr * i + 2]
            sa_bias, ma_bias = biases[i]
            p = _ln(z, *blk["sa"], d)
            sK[:, slot] = p[:, dH:dHd]
            sV[:, slot] = p[:, dHd:]
            z = z + attend(sK, flat[nr * i + 1], p[:, :dH], sa_bias[k], guard[k, i, 0])
            if fold.meta:
                mK, mV = rings[nr * i + 2:nr * i + 4]
                o = blk["kv_off"]
                mK[:, slot] = rest[:, o:o + d]
                mV[:, slot] = rest[:, o + d:o + kw]
                z = z + attend(mK, flat[nr * i + 3], _ln(z, *blk["ma"], d), ma_bias[k], guard[k, i, 1])
            z = z + _mlp(z, blk["mlp"], d)
        x = base + _mlp(z, fold.head, d)
        out[:, k + 1] = x
