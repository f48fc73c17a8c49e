"""OOD rollout errors and rollout latency, shared by MetaSym and the baselines (Table 1).

Protocol (the one of `metasym_core.train.evaluate`): per system, the first
`shots` frames are observed; the model rolls out `horizon` steps from the last
`context` observed frames with the true future controls and step sizes. Errors
are squared errors in the data's units, averaged over state dimensions, kept per
step so MSE-vs-horizon curves come for free.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train.data import padded_steps

# predict(i, states_ctx, controls_ctx, steps_ctx_plus_horizon, future_controls) -> [1, horizon, D]
Predictor = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rollout_errors(predict: Predictor, ds: SystemDataset, shots: int, horizon: int, context: int,
                   dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """Squared errors `[N, horizon]` (mean over dims) and the predictions `[N, horizon, D]`."""
    if not context <= shots or shots + horizon > ds.steps:
        raise MetaSymError(f"need context ({context}) <= shots ({shots}) and shots + horizon ({horizon}) "
                           f"<= {ds.steps} frames")
    states = torch.from_numpy(ds.states).to(dtype)
    controls = torch.from_numpy(ds.controls).to(dtype)
    h = torch.from_numpy(padded_steps(ds.times)).to(dtype)
    errs, preds = [], []
    for i in range(len(ds)):
        ctx = slice(shots - context, shots)
        with torch.no_grad():
            pred = predict(i, states[i:i + 1, ctx], controls[i:i + 1, ctx], h[i:i + 1, shots - context:shots + horizon],
                           controls[i:i + 1, shots:shots + horizon])[0]
        truth = states[i, shots:shots + horizon]
        errs.append((pred - truth).pow(2).mean(-1).double().numpy())
        preds.append(pred.double().numpy())
    return np.stack(errs), np.stack(preds)


def summary(errors: np.ndarray) -> dict[str, float]:
    """Trajectory MSE per system, then mean and std over systems."""
    per_system = errors.mean(axis=1)
    return {"mean": float(per_system.mean()), "std": float(per_system.std())}


def rollout_latency_ms(rollout: Callable[[], torch.Tensor], repeats: int = 20, warmup: int = 2) -> float:
    """Median wall time (ms) of one call of `rollout` (e.g. B=1, horizon 30)."""
    with torch.no_grad():
        for _ in range(warmup):
            rollout()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rollout()
            times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))
