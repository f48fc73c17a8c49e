"""Pooled (non-meta) training of a baseline: next-step MSE in normalised units.

Windows of `window + 1` frames are drawn from all training systems at once
(no per-system adaptation). The loss is MetaSym's: the squared next-state error
divided by `delta_std` (so 1 = "as bad as predicting no motion"). Optional input
noise perturbs the input states by N(0, (noise · delta_std)²) (targets stay clean), the
same noise injection as MetaSym's `training.input_noise`, which the Table 1 bench passes
to every baseline, so that every model trains with the same tool. Adam,
gradient clipping, early stopping on the validation loss; the best weights are
restored at the end.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from metasym_core.baselines.base import Baseline
from metasym_core.device import resolve_device
from metasym_core.errors import MetaSymError
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train.data import padded_steps, target_states


def dataset_tensors(ds: SystemDataset, dtype: torch.dtype, noise_free: bool = False) -> tuple[torch.Tensor, ...]:
    """states `[N, T, D]`, controls `[N, T, m]`, steps `[N, T, 1]` and targets `[N, T, D]` of a dataset: the
    states, or with `noise_free` their noise-free expectation (`systems.noise_free_states`)."""
    states = torch.from_numpy(ds.states).to(dtype)
    targets = torch.from_numpy(target_states(ds, True)).to(dtype) if noise_free else states
    return (states, torch.from_numpy(ds.controls).to(dtype),
            torch.from_numpy(padded_steps(ds.times)).to(dtype).unsqueeze(-1), targets)


def next_step_loss(model: Baseline, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None,
                   noise: float = 0.0, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared normalised next-step error over windows `[B, W+1, ·]` of inputs `x` and targets `y`
    (default: `x`)."""
    inputs = x[:, :-1]
    if noise > 0:
        draw = torch.randn(inputs.shape, generator=gen, dtype=x.dtype)  # on the generator's (CPU) device
        inputs = inputs + noise * model.delta_std * draw.to(x.device)
    pred = model.predict_next(inputs, u[:, :-1], h[:, :-1])
    return ((pred - (x if y is None else y)[:, 1:]) / model.delta_std).pow(2).mean()


def _windows(data, rows: torch.Tensor, starts: torch.Tensor, length: int):
    idx = (starts[:, None] + torch.arange(length)).to(data[0].device)
    rows = rows.to(data[0].device)
    return tuple(t[rows[:, None], idx] for t in data)


def train_baseline(model: Baseline, train_ds: SystemDataset, val_ds: SystemDataset, steps: int = 500,
                   lr: float = 3e-3, window: int = 40, seed: int = 0, batch: int = 16, noise: float = 0.0,
                   eval_interval: int = 25, patience: int = 8, grad_clip: float = 1.0,
                   device: str | torch.device | None = None, noise_free: bool = False) -> list[dict]:
    """Train `model` in place (normalisation fitted on `train_ds`); returns the history rows
    `{step, loss, val_loss, seconds}` (val_loss only at evaluations). With `noise_free` the targets (training
    and validation) are the noise-free next states, MetaSym's `training.noise_free_targets`.

    `device` (`cpu`, `cuda[:N]`, `auto`; default: where the model is) is where it trains
    and stays; window indices and noise are drawn on the CPU, so a seed gives the same
    windows on every device.
    """
    if steps < 1 or window < 1 or batch < 1:
        raise MetaSymError(f"steps, window and batch must be >= 1, got {steps}, {window}, {batch}")
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if ds.state_dim != model.state_dim or ds.control_dim != model.control_dim:
            raise MetaSymError(f"{name} dataset has dims ({ds.state_dim}, {ds.control_dim}); the model expects "
                               f"({model.state_dim}, {model.control_dim})")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    train, val = dataset_tensors(train_ds, dtype, noise_free), dataset_tensors(val_ds, dtype, noise_free)
    model.set_normalization(*train[:3])
    dev = resolve_device(str(device)) if device is not None else next(model.parameters()).device
    model.to(dev)
    train, val = tuple(t.to(dev) for t in train), tuple(t.to(dev) for t in val)
    W = min(window, train[0].shape[1] - 1, val[0].shape[1] - 1)
    vrows = torch.arange(val[0].shape[0]).repeat_interleave(4)
    vstarts = torch.from_numpy(np.tile(np.linspace(0, val[0].shape[1] - W - 1, 4).astype(np.int64),
                                       val[0].shape[0]))
    val_batch = _windows(val, vrows, vstarts, W + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, bad, history = math.inf, copy.deepcopy(model.state_dict()), 0, []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        model.train()
        rows = torch.randint(0, train[0].shape[0], (batch,), generator=gen)
        starts = torch.randint(0, train[0].shape[1] - W, (batch,), generator=gen)
        loss = next_step_loss(model, *_windows(train, rows, starts, W + 1), noise=noise, gen=gen)
        if not torch.isfinite(loss):
            raise MetaSymError(f"{model.name}: training loss is {float(loss)} at step {step}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        row = {"step": step, "loss": float(loss.detach()), "val_loss": None, "seconds": time.perf_counter() - t0}
        if step % eval_interval == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                v = float(next_step_loss(model, *val_batch))
            row["val_loss"] = v
            if v < best:
                best, best_state, bad = v, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
        history.append(row)
        if bad >= patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return history
