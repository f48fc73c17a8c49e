"""Teacher-forced next-step losses in normalised units, shared by adaptation and training.

The decoder predicts the increment `Δ = (x_{t+1} - x_t) / delta_std` (METHOD §3,
`MetaSym.predict_next`), so the next-state error divided by `delta_std` is
`Δ̂ - Δ`: every state dimension weighs the same whatever its units, and a loss of
1 means "as bad as predicting no motion". The encoder is fixed here, so its
latents are computed once per window (`DecoderBatch`), not once per inner step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from metasym_core.models.metasym import MetaSym


@dataclass
class DecoderBatch:
    """Normalised decoder inputs `[B, T, ·]` and increment targets `[B, T-1, D]`."""

    x: torch.Tensor
    u: torch.Tensor
    h: torch.Tensor
    e: torch.Tensor
    target: torch.Tensor

    def slice(self, start: int, stop: int) -> DecoderBatch:
        """Frames [start, stop) (targets of transitions inside them)."""
        return DecoderBatch(self.x[:, start:stop], self.u[:, start:stop], self.h[:, start:stop],
                            self.e[:, start:stop], self.target[:, start:stop - 1])

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.u, self.h, self.e


@torch.no_grad()
def decoder_batch(model: MetaSym, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> DecoderBatch:
    """Tokens of `[B, T, ·]` windows (`h` `[B, T, 1]`) through the fixed encoder, plus targets."""
    x, u, hn, e = model.tokens(states, controls, h)
    target = (states[:, 1:] - states[:, :-1]) / model.delta_std
    return DecoderBatch(x, u, hn, e, target)


def increment_loss(model: MetaSym, batch: DecoderBatch, local: dict[str, torch.Tensor] | None,
                   global_params: dict[str, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
    """Mean squared normalised next-step error of transitions `start..T-2` (pure in its tensor args)."""
    if global_params is None:
        delta = model.decoder(*batch.inputs(), local=local)
    else:
        delta = functional_call(model.decoder, global_params, batch.inputs(), {"local": local})
    return (delta[:, start:-1] - batch.target[:, start:]).pow(2).mean()
