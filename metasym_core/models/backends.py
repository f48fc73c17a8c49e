"""Rollout backends: the ways `MetaSym.rollout` computes the same rollout, behind one interface.

A backend is `fn(model, states, controls, h, future, horizon, local) -> Tensor | None` on the inputs
`MetaSym._rollout_args` checked (`h [B, T + horizon, 1]`); None means it does not apply to them.
`MetaSym.rollout(..., backend="auto")` takes the first backend of `AUTO` that applies; a backend named
explicitly must apply, or `MetaSymError` says so. Every backend gives the reference rollout to round-off
(test/test_backends.py).

- `native`: the compiled kernel (`native.py`, `csrc/`). `auto` takes it for CPU inference in
  float32/64 where the kernel is built and the model packs into ≤ `native.MAX_WEIGHTS` values; its
  increment goes to x_t, to the training mean or to the quadrotor's nominal step (`csrc/nominal.h`), not to
  the encoder's.
- `numpy`: NumPy on folded weights (`fastpath.py`). `auto` takes it for CPU inference with
  B ≤ `fastpath.MAX_BATCH` where `native` does not apply: an install without a C compiler, a model too
  large for the kernel, or the encoder residual (e.g. the spring mesh's). State or encoder residual, with
  or without the linear skip; rows may differ in step size only where the encoder is not folded (`fastpath.unfolded`).
- `cudagraph`: a captured CUDA graph, replayed (`cudagraph.py`). `auto` takes it for CUDA inference.
- `torch`: streaming torch with key/value rings (`streaming.py`). Everything else: autograd,
  training mode, other dtypes and devices. Always applies.
- `reference`: the plain loop, the whole sequence re-run every step (`MetaSym.rollout_reference`).
  Never taken by `auto`: the yardstick.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metasym_core.errors import MetaSymError
from metasym_core.models import cudagraph, fastpath, native

#: fn(model, states, controls, h, future, horizon, local) -> the rollout [B, horizon, D], or None
Backend = Callable[..., "torch.Tensor | None"]


def _torch(model, states, controls, h, future, horizon, local) -> torch.Tensor:
    return model._rollout_cached(states, controls, h, future, horizon, local)


def _reference(model, states, controls, h, future, horizon, local) -> torch.Tensor:
    return model._rollout_plain(states, controls, h, future, horizon, local)


BACKENDS: dict[str, Backend] = {
    "native": native.try_rollout,
    "numpy": fastpath.try_rollout,
    "cudagraph": cudagraph.rollout,
    "torch": _torch,
    "reference": _reference,
}
#: the order `backend="auto"` tries them in (`torch` always applies)
AUTO = ("native", "numpy", "cudagraph", "torch")


def register(name: str, fn: Backend) -> None:
    """Add (or replace) a backend, e.g. an accelerator's; `auto` does not try it unless put in `AUTO`."""
    BACKENDS[name] = fn


def names() -> list[str]:
    """The registered backends' names."""
    return list(BACKENDS)


def run(name: str, model, states, controls, h, future, horizon: int, local) -> torch.Tensor:
    """The rollout by backend `name` ("auto": the first of `AUTO` that applies)."""
    if name == "auto":
        for candidate in AUTO:
            out = BACKENDS[candidate](model, states, controls, h, future, horizon, local)
            if out is not None:
                return out
        raise MetaSymError("no rollout backend applies")  # unreachable while AUTO ends with `torch`
    if name not in BACKENDS:
        raise MetaSymError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {name!r}")
    out = BACKENDS[name](model, states, controls, h, future, horizon, local)
    if out is None:
        raise MetaSymError(f"the {name} rollout backend does not apply here (device {states.device}, "
                           f"dtype {states.dtype}, batch {states.shape[0]}, training {model.training}, "
                           f"grad {torch.is_grad_enabled()}); see metasym_core.models.backends")
    return out
