"""Common frame of every baseline: MetaSym's tensor conventions, normalisation and rollout.

Conventions (as `MetaSym`): tensors are `[batch, time, feature]`; `controls[:, t]`
and `steps[:, t]` belong to `states[:, t]`; prediction t is `x_{t+1}`. Every
baseline predicts the normalised increment `(x_{t+1} - x_t) / delta_std`, the
quantity MetaSym's decoder predicts, so all models are trained on the same loss.
A subclass implements `predict_next(states, controls, h)` (`h` `[B, T, 1]`) and,
if it is not a fixed-window model, `_rollout`.
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.errors import MetaSymError
from metasym_core.models.normalization import fit_normalization, normalize, register_normalization
from metasym_core.validation import check_finite, check_positive_int, check_sequence, model_inputs


class Baseline(nn.Module):
    """Base class: normalisation buffers (fitted like `MetaSym.set_normalization`), checks, rollout.

    `memory` is how many past frames a prediction sees (1: Markov models;
    the context window for the Transformer); the generic rollout re-runs
    `predict_next` on that many frames per step, which equals teacher forcing.
    """

    name = "baseline"
    memory = 1
    # systems the model applies to (None: all) and systems it refuses
    only_systems: tuple[str, ...] | None = None
    not_systems: tuple[str, ...] = ()

    def __init__(self, state_dim: int, control_dim: int) -> None:
        super().__init__()
        if state_dim <= 0 or control_dim < 0:
            raise MetaSymError(f"{self.name}: need state_dim > 0 and control_dim >= 0, got {state_dim}, "
                               f"{control_dim}")
        self.state_dim, self.control_dim = int(state_dim), int(control_dim)
        register_normalization(self, self.state_dim, self.control_dim)

    @classmethod
    def check_system(cls, system: str | None) -> None:
        """Raise MetaSymError when this baseline does not apply to `system` (None: unknown, accepted)."""
        if system is None:
            return
        if system in cls.not_systems or (cls.only_systems is not None and system not in cls.only_systems):
            where = f"only to {', '.join(cls.only_systems)}" if cls.only_systems else \
                f"not to {', '.join(cls.not_systems)}"
            raise MetaSymError(f"baseline {cls.name!r} does not apply to the {system} system (it applies {where})")

    def config(self) -> dict:
        """Constructor arguments, for checkpoints (subclasses add their sizes)."""
        return {"name": self.name, "state_dim": self.state_dim, "control_dim": self.control_dim}

    def n_params(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def set_normalization(self, states: torch.Tensor, controls: torch.Tensor, steps: torch.Tensor) -> None:
        """Fit per-feature mean/std of states, increments, controls and steps on training data `[B, T, ·]`."""
        fit_normalization(self, states, controls, steps, self.state_dim, self.control_dim)

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """`(x - mean) / std` with the buffers `name` (state, delta, control, step)."""
        return normalize(self, name, x)

    # -- checked entry points ----------------------------------------------------------------------
    def _inputs(self, states: torch.Tensor, controls: torch.Tensor, steps, extra: int = 0):
        return model_inputs(self, states, controls, steps, self.state_dim, self.control_dim, extra)

    def forward(self, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor) -> torch.Tensor:
        """Next-state predictions `[B, T, D]` (entry t predicts `x_{t+1}`), teacher forced."""
        states, controls, h = self._inputs(states, controls, steps)
        return self.predict_next(states, controls, h)

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Unchecked teacher-forced prediction (`h` `[B, T, 1]`)."""
        raise NotImplementedError

    def rollout(self, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor, horizon: int,
                future_controls: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the `horizon` states after the last observed one: `[B, horizon, D]`.

        Same arguments as `MetaSym.rollout`: `steps` a float, `[B, T]` (future
        steps repeat the last) or `[B, T + horizon]`; `future_controls`
        `[B, horizon, m]`, entry k applied at predicted state k (default: hold the last control).
        """
        check_positive_int("horizon", horizon)
        states, controls, h = self._inputs(states, controls, steps, extra=horizon)
        B = states.shape[0]
        if future_controls is None:
            future = controls[:, -1:].expand(B, horizon, self.control_dim)
        else:
            future = future_controls.to(device=states.device, dtype=states.dtype)
            check_sequence("future_controls", future, self.control_dim, B, horizon)
        out = self._rollout(states, controls, h, future, horizon)
        check_finite("rollout", out)
        return out

    def _rollout(self, states, controls, h, future, horizon) -> torch.Tensor:
        """Generic rollout: re-run `predict_next` on the last `memory` frames for each new state."""
        T, w = states.shape[1], self.memory
        xs, us = states[:, -w:], controls[:, -w:]
        outs = []
        for k in range(horizon):
            hk = h[:, T + k - xs.shape[1]:T + k]
            nxt = self.predict_next(xs, us, hk)[:, -1:]
            outs.append(nxt)
            xs = torch.cat([xs, nxt], dim=1)[:, -w:]
            us = torch.cat([us, future[:, k:k + 1]], dim=1)[:, -w:]
        return torch.cat(outs, dim=1)
