"""Known nominal dynamics a model may correct: `decoder.residual: nominal:<name>`.

With such a residual the model predicts x_{t+1} = f(x_t, u_t, h_t) + Δ, where f is the named
system's step at its nominal parameters (`NOMINAL`) and Δ the decoder's increment (see
`MetaSym.anchor`). Each entry is imported only when a model uses it, so the models never
depend on a system's libraries otherwise. A step takes stored states `[..., D]`, controls
`[..., m]` and steps `[..., 1]` and returns the next states, differentiably, in their dtype.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from metasym_core.errors import MetaSymError

PREFIX = "nominal:"
#: name -> "module:function" of its batched torch step
NOMINAL = {"quadrotor": "metasym_core.systems.quadrotor.torch_step:step"}

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def is_nominal(residual: str) -> bool:
    """Whether `residual` names a nominal model (`nominal:<name>`)."""
    return isinstance(residual, str) and residual.startswith(PREFIX)


def check(residual: str) -> None:
    """Refuse a `nominal:<name>` whose name has no step here."""
    if is_nominal(residual) and residual[len(PREFIX):] not in NOMINAL:
        raise MetaSymError(f"residual {residual!r}: no nominal model {residual[len(PREFIX):]!r}; known: "
                           f"{', '.join(PREFIX + k for k in NOMINAL)}")


def nominal_step(residual: str) -> Step:
    """The step function of `nominal:<name>`."""
    check(residual)
    module, name = NOMINAL[residual[len(PREFIX):]].split(":")
    return getattr(importlib.import_module(module), name)
