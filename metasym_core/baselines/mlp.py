"""Naive MLP baseline: the next state from the current state, control and step size only."""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.baselines.base import Baseline


class MLPBaseline(Baseline):
    """`x̂_{t+1} = x_t + delta_std · MLP([x_t, u_t, h_t])` (all inputs normalised); Markov, no context."""

    name = "mlp"
    memory = 1

    def __init__(self, state_dim: int, control_dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__(state_dim, control_dim)
        self.hidden, self.layers = int(hidden), int(layers)
        dims = [state_dim + control_dim + 1] + [self.hidden] * self.layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mods += [nn.Linear(a, b), nn.SiLU()]
        mods.append(nn.Linear(dims[-1], state_dim))
        nn.init.zeros_(mods[-1].weight)
        nn.init.zeros_(mods[-1].bias)
        self.net = nn.Sequential(*mods)

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "layers": self.layers}

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.norm("state", states), self.norm("control", controls), self.norm("step", h)], dim=-1)
        return states + self.net(z) * self.delta_std
