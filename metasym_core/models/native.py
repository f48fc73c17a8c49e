"""The compiled rollout kernel behind `MetaSym.rollout` on the CPU (`csrc/rollout.c`).

Why: a quadrotor-sized step is ~80 tensor ops on `[B, 16]`-sized tensors; at
B=1024 torch spends most of its time in memory traffic and temporaries, at B=1
in dispatch. The kernel streams every token (context and predictions) of a block of
rows (8 float32 rows on AVX2, 16 on AVX-512) through the decoder with the rows in SIMD
lanes, keeping keys/values in per-block rings, so a step is a few thousand fused multiply-adds per row and
nothing else. Rows are independent: batches are split over `torch.get_num_threads()`
threads (ctypes releases the GIL during the call).

The kernel is compiled for several ISA levels (x86-64: AVX-512, AVX2 + FMA, SSE2), each with
vectors of its native width; the best the CPU supports runs, or the one `use_isa` or the
`METASYM_NATIVE_ISA` environment variable names (to time the AVX2 path on an AVX-512 machine).

The kernel is an optional extension built by `pip install .` / `make` (setup.py);
where it is absent (no C compiler) `try_rollout` returns None and the NumPy or
torch path runs. It serves CPU float32/float64 rollouts without autograd in eval
mode, any batch, context, step sizes (per row and per token) and local parameters,
and equals `MetaSym.rollout_reference` to round-off (test/test_native.py). Its increment is
added to x_t, or with `residual: nominal:quadrotor` to the quadrotor's nominal step
(`csrc/nominal.h`, the C twin of `systems/quadrotor/torch_step.py`, in double vectors), with
the training mean (`residual: mean`), with the decoder's linear skip where it has one; the
encoder residual runs elsewhere.
K candidates from one context (`shares_context`) stream their shared tokens once: K = 512
MPPI candidates over 20 steps take 9 ms on one AMD EPYC core.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.models import fastpath

ABI_VERSION = 6
#: names the ISA level the kernel uses (`isas()` lists them; "best" is the default)
ISA_ENV = "METASYM_NATIVE_ISA"
#: larger models stay on the torch path: their weights, re-read for every block of rows and every token,
#: no longer fit the cache (2-core Xeon, float32, B=1..256: d_model 64 / state 200, ~100k values, 1.3-2.6x
#: faster than torch; d_model 128 / state 12, ~210k, even; the 10x10 spring mesh's d_model 256, ~850k, 1.5-3x slower)
MAX_WEIGHTS = 150_000
_ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "elu": 2}
_DTYPES = {torch.float32: (np.float32, "f32"), torch.float64: (np.float64, "f64")}
_lock = threading.Lock()
_state: dict = {}


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: forget the pools (and a lock held mid-fork)."""
    global _lock
    _lock = threading.Lock()
    _state.pop("pools", None)


os.register_at_fork(after_in_child=_after_fork_in_child)


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None when the extension was not built (or is from another version)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _load()
        return _state["lib"]


def _load() -> ctypes.CDLL | None:
    try:
        from metasym_core.models import _native
        lib = ctypes.CDLL(_native.__file__)
    except (ImportError, OSError):
        return None
    if lib.metasym_native_abi() != ABI_VERSION:
        return None
    pointer = ctypes.c_void_p
    for name in ("metasym_rollout_f32", "metasym_rollout_f64"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [pointer, pointer, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       pointer, pointer, pointer, pointer]
    lib.metasym_native_isa.restype = lib.metasym_native_isas.restype = ctypes.c_char_p
    lib.metasym_native_use.argtypes = [ctypes.c_char_p]
    lib.metasym_native_lanes.argtypes = [ctypes.c_int]
    wanted = os.environ.get(ISA_ENV, "").strip()
    if wanted:
        try:
            _use(lib, wanted)
        except MetaSymError as err:
            warnings.warn(f"{ISA_ENV} ignored: {err}", RuntimeWarning, stacklevel=2)
    return lib


def _use(lib: ctypes.CDLL, name: str) -> None:
    code = lib.metasym_native_use(name.encode())
    if code == -1:
        raise MetaSymError(f"no ISA level {name!r} in the rollout kernel; it has: best, {', '.join(_isas(lib))}")
    if code == -2:
        raise MetaSymError(f"this CPU does not support the rollout kernel's ISA level {name!r}")


def _isas(lib: ctypes.CDLL) -> list[str]:
    return lib.metasym_native_isas().decode().split()


def isa() -> str | None:
    """The ISA level the kernel runs (e.g. "x86-64-v3"), or None when it is not built."""
    lib = library()
    return None if lib is None else lib.metasym_native_isa().decode()


def isas() -> list[str]:
    """The ISA levels the built kernel has, best first (empty when it is not built)."""
    lib = library()
    return [] if lib is None else _isas(lib)


def use_isa(name: str) -> None:
    """Run the kernel on ISA level `name` ("best": the best this CPU supports) from now on, in this process.

    Raises MetaSymError when the kernel is not built, lacks the level or the CPU does not support it.
    Not to be called while a rollout runs."""
    lib = library()
    if lib is None:
        raise MetaSymError("the compiled rollout kernel is not built (make native)")
    with _lock:
        _use(lib, name)


def available() -> bool:
    """Whether the compiled kernel is built and loadable."""
    return library() is not None


#: what the kernel adds the increment to (csrc/nominal.h): x_t, the quadrotor's nominal step, the training mean
NOMINAL_NONE, NOMINAL_QUADROTOR, NOMINAL_MEAN = 0, 1, 2


def _nominal_code(model) -> int | None:
    """The kernel's code for what the model's increment is added to, or None where the kernel cannot (the
    encoder residual, a nominal step it does not have)."""
    if model.state_residual:
        return NOMINAL_NONE
    if model.decoder.residual == "mean":
        return NOMINAL_MEAN
    if model.decoder.residual == "nominal:quadrotor" and (model.state_dim, model.control_dim) == (12, 4):
        return NOMINAL_QUADROTOR
    return None


class Packed:
    """A model's weights (with one set of local parameters) folded and packed in the kernel's order.

    Folded: the normalisation into the ControlNet and the meta keys/values, the
    attention scale into the queries, `delta_std` into the head; the encoder's
    symmetric shears `S + Sᵀ` formed once."""

    def __init__(self, model, local: dict[str, torch.Tensor] | None) -> None:
        enc, dec = model.encoder, model.decoder
        D, m, d, H, c = dec.state_dim, dec.control_dim, dec.d_model, dec.heads, dec.context
        norms = [mod for mod in dec.modules() if isinstance(mod, torch.nn.LayerNorm)]
        eps = {float(mod.eps) for mod in norms}
        nominal = _nominal_code(model)
        self.ok = len(eps) == 1 and enc.activation in _ACTIVATIONS and nominal is not None
        if not self.ok:
            return
        with torch.no_grad():
            f = [torch.tensor([eps.pop()], dtype=torch.float64)]

            def put(*tensors: torch.Tensor) -> None:
                f.extend(t.detach().to("cpu", torch.float64).reshape(-1) for t in tensors)

            S = enc.S.detach()
            put(enc.shift, (S + S.transpose(-1, -2)).transpose(-1, -2), enc.bias, enc.a)
            mean = torch.cat([model.state_mean, model.control_mean, model.step_mean]).double()
            std = torch.cat([model.state_std, model.control_std, model.step_std]).double()
            w = dec.control_net.proj.weight.double() / std
            put(w, dec.control_net.proj.bias.double() - w @ mean)
            scale = 1.0 / math.sqrt(d // H)
            x_mean, x_std = model.state_mean.double(), model.state_std.double()
            for i, blk in enumerate(dec.blocks):
                qkv = blk.self_attn.qkv.weight.double()
                put(blk.ln1.weight, blk.ln1.bias, torch.cat([qkv[:d] * scale, qkv[d:]]),
                    blk.self_attn.out.weight, blk.self_attn.out.bias, blk.self_attn.rel_bias)
                if dec.meta_attention:
                    w_q, w_v, b_v = dec._local(local, i)
                    ma = blk.meta_attn
                    w_q = (ma.w_q.weight if w_q is None else w_q).double()
                    w_v = (ma.w_v.weight if w_v is None else w_v).double()
                    b_v = (ma.w_v.bias if b_v is None else b_v).double()
                    w_kv = torch.cat([ma.w_k.weight.double(), w_v]) / x_std
                    put(blk.ln2.weight, blk.ln2.bias, w_q * scale, w_kv,
                        torch.cat([torch.zeros_like(b_v), b_v]) - w_kv @ x_mean,
                        ma.out.weight, ma.out.bias, ma.rel_bias)
                put(blk.ln3.weight, blk.ln3.bias, blk.mlp[0].weight, blk.mlp[0].bias, blk.mlp[2].weight,
                    blk.mlp[2].bias)
            lin1, lin2 = dec.head[0], dec.head[2]
            dstd = model.delta_std.double()
            put(dec.ln_f.weight, dec.ln_f.bias, lin1.weight, lin1.bias, lin2.weight.double() * dstd[:, None],
                lin2.bias.double() * dstd)
            if dec.skip is not None:  # folded like the ControlNet, in state units
                ws = dec.skip.weight.double() / std * dstd[:, None]
                put(ws, dec.skip.bias.double() * dstd - ws @ mean)
            if nominal == NOMINAL_QUADROTOR:
                from metasym_core.systems.quadrotor.torch_step import kernel_constants

                put(torch.tensor(kernel_constants(), dtype=torch.float64))
            elif nominal == NOMINAL_MEAN:
                put(model.state_mean)
            flat = torch.cat(f).numpy()
        self.ok = flat.size <= MAX_WEIGHTS
        self.weights = {np.float64: flat, np.float32: flat.astype(np.float32)}
        self.dims = np.array([D, m, d, H, c, dec.layers, int(dec.meta_attention), enc.layers, enc.sublayers,
                              _ACTIVATIONS[enc.activation], dec.blocks[0].mlp[0].out_features,
                              lin1.out_features, nominal, int(dec.skip is not None)], dtype=np.int32)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of `workers` threads, kept for the process (one per size: callers that use different
    thread counts at the same time never see a pool shut down under them)."""
    with _lock:
        pools = _state.setdefault("pools", {})
        if workers not in pools:
            pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="metasym-rollout")
        return pools[workers]


def shares_context(states: torch.Tensor, u: np.ndarray, hs: np.ndarray) -> bool:
    """Whether the kernel may stream the context once for all rows: one context (`states` [B, T, D]
    expanded over the batch) whose controls `u` and steps `hs` [B, tokens, ...] agree on its first T − 1
    tokens. K candidates from one context are such rows, whether they start at the next state (the rollout
    service) or at the newest (MPPI's: the last context control is each candidate's first)."""
    B, T = states.shape[:2]
    return B > 1 and states.stride(0) == 0 and bool(
        (u[:, :T - 1] == u[:1, :T - 1]).all() and (hs[:, :T - 1] == hs[:1, :T - 1]).all())


def try_rollout(model, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor, future: torch.Tensor,
                horizon: int, local: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
    """`MetaSym.rollout` on checked inputs (`h [B, T + horizon, 1]`) via the kernel, or None if it does not apply."""
    lib = library()
    if lib is None or _nominal_code(model) is None:  # the kernel adds the increment to x_t or its nominal step
        return None
    extra = list(local.values()) if local else []
    entry = fastpath.inference_entry(model, [states, controls, h, future, *extra])
    if entry is None:
        return None
    packed = fastpath.cached(model, local, Packed, "native", entry)
    if not packed.ok:
        return None
    np_dtype, suffix = _DTYPES[states.dtype]
    B, T = states.shape[:2]
    tokens = T + horizon - 1
    # NumPy from here on: a torch op on a large batch would leave torch's intra-op threads spinning
    u = np.concatenate([controls.detach().numpy(), future[:, :horizon - 1].detach().numpy()], axis=1)
    hs = np.ascontiguousarray(h[:, :tokens, 0].detach().numpy())
    shared = shares_context(states, u, hs)
    x0 = np.ascontiguousarray(states[:1].detach().numpy() if shared else states.detach().numpy())
    out = np.empty((B, horizon, model.state_dim), dtype=np_dtype)
    weights = packed.weights[np_dtype]
    fn = getattr(lib, f"metasym_rollout_{suffix}")

    def run(r0: int, r1: int) -> int:
        return fn(packed.dims.ctypes.data, weights.ctypes.data, weights.size, r1 - r0, T, horizon, int(shared),
                  x0[0 if shared else r0:].ctypes.data, u[r0:].ctypes.data, hs[r0:].ctypes.data, out[r0:].ctypes.data)

    lanes = lib.metasym_native_lanes(out.itemsize)
    blocks = -(-B // lanes)
    workers = max(1, min(torch.get_num_threads(), blocks))
    if workers == 1:
        codes = [run(0, B)]
    else:
        # contiguous chunks of whole lane blocks, one per thread
        bounds = [min(B, lanes * (blocks * i // workers)) for i in range(workers + 1)]
        codes = list(_pool(workers).map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise RuntimeError(f"metasym rollout kernel failed with codes {codes} (packed weights do not match dims)")
    return torch.from_numpy(out)
