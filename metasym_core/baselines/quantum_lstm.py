"""QuantumLSTM baseline: an LSTM on the heterodyne quadrature record (quantum system only).

Input per frame: normalised `[I, Q, h]` (plus controls if any); output: the
normalised increment to the next record sample. The recurrent state carries the
whole history, so the rollout runs the context once and then steps the cell
with its own predictions (exactly the teacher-forced recurrence).
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.baselines.base import Baseline


class QuantumLSTM(Baseline):
    """One- or multi-layer LSTM + linear head on the quadrature record."""

    name = "quantum_lstm"
    only_systems = ("quantum",)

    def __init__(self, state_dim: int, control_dim: int, hidden: int = 8, layers: int = 1) -> None:
        super().__init__(state_dim, control_dim)
        self.hidden, self.layers = int(hidden), int(layers)
        self.lstm = nn.LSTM(state_dim + control_dim + 1, self.hidden, self.layers, batch_first=True)
        self.head = nn.Linear(self.hidden, state_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "layers": self.layers}

    def _tokens(self, states, controls, h) -> torch.Tensor:
        return torch.cat([self.norm("state", states), self.norm("control", controls), self.norm("step", h)], -1)

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self._tokens(states, controls, h))
        return states + self.head(out) * self.delta_std

    def _rollout(self, states, controls, h, future, horizon) -> torch.Tensor:
        T = states.shape[1]
        out, carry = self.lstm(self._tokens(states, controls, h[:, :T]))
        x = states[:, -1] + self.head(out[:, -1]) * self.delta_std
        outs = [x]
        for k in range(horizon - 1):
            tok = self._tokens(x[:, None], future[:, k:k + 1], h[:, T + k:T + k + 1])
            out, carry = self.lstm(tok, carry)
            x = x + self.head(out[:, -1]) * self.delta_std
            outs.append(x)
        return torch.stack(outs, dim=1)
