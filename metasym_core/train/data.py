"""Training views of a dataset: per-system support/query windows sampled in time.

Every trajectory is split at `boundary = round(support_fraction·T)`: frames
before it are the adaptation (support) part, the rest the meta (query) part.
A query window borrows the `context - 1` frames before its first target as
context only (inputs, never targets), so every query target sees a full window.
"""

from __future__ import annotations

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.meta.losses import DecoderBatch, decoder_batch
from metasym_core.models.metasym import MetaSym
from metasym_core.systems import noise_free_states
from metasym_core.systems.dataset import SystemDataset


def target_states(ds: SystemDataset, noise_free: bool) -> np.ndarray:
    """What a model learns to predict of `ds`, `[N, T, D]`: its observed states, or with `noise_free` their
    noise-free expectation given the frames before (`systems.noise_free_states`; `training.noise_free_targets`)."""
    return noise_free_states(ds) if noise_free else ds.states


def padded_steps(times: np.ndarray) -> np.ndarray:
    """h_t per frame `[N, T]`; the last frame repeats the previous step."""
    dt = np.diff(times, axis=1)
    return np.concatenate([dt, dt[:, -1:]], axis=1)


class TrainData:
    """Tensors of one dataset in the model's dtype plus the window geometry."""

    @torch.no_grad()
    def __init__(self, ds: SystemDataset, model: MetaSym, support_fraction: float, window: int, name: str,
                 noise_free: bool = False):
        if ds.state_dim != model.state_dim or ds.control_dim != model.control_dim:
            raise MetaSymError(f"{name} dataset ({ds.family}) has state_dim {ds.state_dim}, control_dim "
                               f"{ds.control_dim}; the config expects {model.state_dim}, {model.control_dim}")
        if len(ds) == 0:
            raise MetaSymError(f"{name} dataset is empty")
        p = next(model.parameters())
        dtype, self.device = p.dtype, p.device
        T = ds.steps
        self.boundary = int(round(support_fraction * T))
        self.context = model.context
        self.window = min(window, self.boundary - 1, T - 1 - self.boundary)
        if self.window < 2 or self.boundary < model.context:
            raise MetaSymError(f"{name} dataset has {T} frames per system: too few for support_fraction "
                               f"{support_fraction} and context {model.context}")
        self.states = torch.from_numpy(ds.states).to(self.device, dtype)
        # what the decoder learns to predict: the observed next frames, or their noise-free expectation given the
        # frames before (`TrainingConfig.noise_free_targets`; the inputs stay the observed frames)
        self.targets = (torch.from_numpy(target_states(ds, True)).to(self.device, dtype) if noise_free
                        else self.states)
        self.controls = torch.from_numpy(ds.controls).to(self.device, dtype)
        self.h = torch.from_numpy(padded_steps(ds.times)).to(self.device, dtype).unsqueeze(-1)
        self.n = len(ds)
        self.T = T
        self._tokens: DecoderBatch | None = None

    # -- offsets ------------------------------------------------------------------------------
    def sample_offsets(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Systems and first support / query transition of each window of one outer step."""
        systems = torch.randint(0, self.n, (batch,), generator=gen)
        s0 = torch.randint(0, self.boundary - self.window, (batch,), generator=gen)
        q0 = torch.randint(self.boundary, self.T - self.window, (batch,), generator=gen)
        return systems, s0, q0

    def fixed_offsets(self) -> tuple[torch.Tensor, ...]:
        """Every system, support just before the boundary, query just after (validation)."""
        n = self.n
        return (torch.arange(n), torch.full((n,), self.boundary - 1 - self.window),
                torch.full((n,), self.boundary))

    # -- encoder transitions ------------------------------------------------------------------
    def transitions(self, systems: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        """x, h, next `[B, window, ·]` of transitions first..first+window-1."""
        idx = (first[:, None] + torch.arange(self.window)).to(self.device)
        rows = systems[:, None].to(self.device)
        return {"x": self.states[rows, idx], "h": self.h[rows, idx], "next": self.states[rows, idx + 1]}

    # -- decoder windows ----------------------------------------------------------------------
    def tokens(self, model: MetaSym) -> DecoderBatch:
        """Decoder inputs of the whole dataset through the (frozen) encoder, cached."""
        if self._tokens is None:
            was = model.training
            model.eval()
            self._tokens = decoder_batch(model, self.states, self.controls, self.h, self.targets)
            model.train(was)
        return self._tokens

    def decoder_window(self, model: MetaSym, systems: torch.Tensor, first: torch.Tensor,
                       lead: int = 0, noise: float = 0.0, gen: torch.Generator | None = None) -> DecoderBatch:
        """Frames first-lead .. first+window (targets: `lead` context transitions, then `window`). With `noise`,
        the input states get N(0, (noise·delta_std)²) added (drawn from `gen`; not on coordinates that never
        move), and the targets stay the unperturbed next states (`TrainingConfig.input_noise`)."""
        idx = ((first - lead)[:, None] + torch.arange(self.window + lead + 1)).to(self.device)
        rows = systems[:, None].to(self.device)
        if noise > 0:
            observed = self.states[rows, idx]
            draw = torch.randn(observed.shape, generator=gen, dtype=observed.dtype).to(self.device)
            noisy = observed + draw * (noise * model.delta_std * ~model.fixed)
            was = model.encoder.training
            model.encoder.eval()  # the encoder's latents without DropConnect, as in `tokens`
            batch = decoder_batch(model, noisy, self.controls[rows, idx], self.h[rows, idx], self.targets[rows, idx])
            model.encoder.train(was)
            return batch
        tok = self.tokens(model)
        return DecoderBatch(tok.x[rows, idx], tok.u[rows, idx], tok.h[rows, idx], tok.e[rows, idx],
                            tok.target[rows, idx[:, :-1]])
