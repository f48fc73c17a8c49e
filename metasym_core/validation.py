"""Input checks shared by the models: wrong shapes, NaN/Inf and bad step sizes
are `MetaSymError`s (a `ValueError`) naming the argument and the expected shape;
nothing is ever broadcast silently."""

from __future__ import annotations

import numpy as np
import torch

from metasym_core.errors import MetaSymError


def check_sequence(name: str, x: torch.Tensor, feature: int, batch: int | None = None,
                   time: int | None = None) -> None:
    """`x` must be a finite float tensor `[batch, time, feature]`."""
    if not isinstance(x, torch.Tensor):
        raise MetaSymError(f"{name} must be a torch.Tensor [batch, time, {feature}], got {type(x).__name__}")
    want = f"[{batch if batch is not None else 'batch'}, {time if time is not None else 'time'}, {feature}]"
    if x.dim() != 3 or x.shape[-1] != feature or (batch is not None and x.shape[0] != batch) or (
            time is not None and x.shape[1] != time):
        raise MetaSymError(f"{name} has shape {list(x.shape)}, expected {want}")
    if not x.is_floating_point():
        raise MetaSymError(f"{name} must be a floating-point tensor, got {x.dtype}")
    check_finite(name, x)


def _cpu_array(x: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (None on other devices, or dtypes NumPy lacks). Checks on CPU
    inputs run in NumPy: a torch reduction over a large batch starts torch's intra-op thread team,
    whose threads then spin for milliseconds, competing with the rollout that follows."""
    if x.device.type != "cpu":
        return None
    try:
        return x.detach().numpy()
    except (TypeError, RuntimeError):
        return None


def check_finite(name: str, x: torch.Tensor) -> None:
    """Reject NaN/Inf with the argument's name (one cheap reduction first: a NaN/Inf anywhere
    makes the sum non-finite; only then, or on overflow, the exact elementwise check)."""
    if not x.numel():
        return
    a = _cpu_array(x)
    if a is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            ok = bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())
    else:
        ok = bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
    if not ok:
        raise MetaSymError(f"{name} contains NaN or Inf")


def steps_tensor(steps: float | torch.Tensor, batch: int, time: int, like: torch.Tensor,
                 name: str = "steps") -> torch.Tensor:
    """Step sizes as `[batch, time, 1]`: from a positive float, `[batch, time]` or `[batch, time, 1]`."""
    if not isinstance(steps, torch.Tensor):
        h = float(steps)
        if not h > 0 or h == float("inf"):
            raise MetaSymError(f"{name} must be a positive finite step size, got {steps!r}")
        # one value seen at every position (a view: no large fill, which would start torch's thread team)
        return torch.full((1, 1, 1), h, dtype=like.dtype, device=like.device).expand(batch, time, 1)
    h = steps.to(dtype=like.dtype, device=like.device)
    if h.dim() == 2:
        h = h.unsqueeze(-1)
    if h.dim() != 3 or h.shape[0] != batch or h.shape[1] != time or h.shape[2] != 1:
        raise MetaSymError(f"{name} has shape {list(steps.shape)}, expected [{batch}, {time}] or [{batch}, {time}, 1]")
    check_finite(name, h)
    a = _cpu_array(h)
    if not (bool((a > 0).all()) if a is not None else bool((h > 0).all())):
        raise MetaSymError(f"{name} must be positive everywhere")
    return h


def check_positive_int(name: str, value: int) -> int:
    """A strictly positive integer (rollout horizons, counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MetaSymError(f"{name} must be a positive integer, got {value!r}")
    return value


def model_inputs(module: torch.nn.Module, states: torch.Tensor, controls: torch.Tensor, steps,
                 state_dim: int, control_dim: int, extra: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked `(states, controls, h [B, T + extra, 1])` on the device/dtype of `module`'s parameters.

    `steps` is a positive float, `[B, T]`, or with `extra` future steps also `[B, T + extra]`;
    missing future steps repeat the last one.
    """
    p = next(module.parameters())
    states = states.to(device=p.device, dtype=p.dtype)
    check_sequence("states", states, state_dim)
    B, T = states.shape[:2]
    if T < 1:
        raise MetaSymError(f"states must hold at least one step: expected [batch, time >= 1, {state_dim}]")
    controls = controls.to(device=p.device, dtype=p.dtype)
    check_sequence("controls", controls, control_dim, B, T)
    if not isinstance(steps, torch.Tensor) or (extra and steps.shape[1:2] == (T + extra,)):
        return states, controls, steps_tensor(steps, B, T + extra, states)
    h = steps_tensor(steps, B, T, states)
    if extra:
        h = torch.cat([h, h[:, -1:].expand(B, extra, 1)], dim=1)
    return states, controls, h
