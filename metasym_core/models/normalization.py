"""Per-feature normalisation statistics shared by MetaSym and the baselines.

Every model keeps buffers `<name>_mean` / `<name>_std` for name in state, delta
(next-state increments), control and step, fitted on training data, so all models
see and predict the same normalised quantities and their losses are comparable.
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.validation import check_sequence, steps_tensor

NAMES = ("state", "delta", "control", "step")
_EPS = 1e-8


def register_normalization(module: nn.Module, state_dim: int, control_dim: int) -> None:
    """Identity statistics (mean 0, std 1) as buffers of `module`."""
    for name, size in zip(NAMES, (state_dim, state_dim, control_dim, 1), strict=True):
        module.register_buffer(f"{name}_mean", torch.zeros(size))
        module.register_buffer(f"{name}_std", torch.ones(size))


@torch.no_grad()
def fit_normalization(module: nn.Module, states: torch.Tensor, controls: torch.Tensor, steps,
                      state_dim: int, control_dim: int) -> None:
    """Fit the buffers of `module` to training data `[B, T, ·]` (steps: float, `[B, T]` or `[B, T, 1]`).

    A constant feature (e.g. the fixed top row of the spring mesh) keeps unit scale:
    dividing by a ~0 std would blow its (zero) errors up to NaN/Inf.
    """
    check_sequence("states", states, state_dim)
    check_sequence("controls", controls, control_dim, states.shape[0], states.shape[1])
    h = steps_tensor(steps, states.shape[0], states.shape[1], states)
    fits = [("state", states.reshape(-1, state_dim)),
            ("delta", (states[:, 1:] - states[:, :-1]).reshape(-1, state_dim)), ("step", h.reshape(-1, 1))]
    if control_dim:  # autonomous systems (m = 0) have no control statistics
        fits.append(("control", controls.reshape(-1, control_dim)))
    for name, data in fits:
        if data.shape[0] == 0:
            continue
        getattr(module, f"{name}_mean").copy_(data.mean(0))
        std = data.std(0, unbiased=False) if data.shape[0] > 1 else torch.ones_like(data[0])
        getattr(module, f"{name}_std").copy_(torch.where(std > _EPS, std, torch.ones_like(std)))


def normalize(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """`(x - mean) / std` with the buffers `name` of `module`."""
    return (x - getattr(module, f"{name}_mean")) / getattr(module, f"{name}_std")
