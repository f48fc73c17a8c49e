"""K-shot evaluation on (out-of-distribution) systems: rollout MSE before and after adaptation.

Per system: the first `shots` frames are what has been observed. `adapt` runs
the decoder inner loop on them (its tail held out for scoring); then the model
rolls out `horizon` steps from the last `context` observed frames with the true
future controls and step sizes, once with φ₀ and once with the adapted φ. The
MSE is in the data's units (mean over steps and state dimensions), as in the
paper's Table 1. `mse_guarded` uses the adapted φ only where adaptation lowered
the held-out loss (what the online learner does). A model without local
parameters (no meta-attention, ablation D.3) cannot adapt: it is scored
unadapted, its "after" figures equal "before" and `adapted` is false.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt
from metasym_core.models.metasym import MetaSym
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train.data import padded_steps


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def evaluate(model: MetaSym, ds: SystemDataset, shots: int, horizon: int | None = None, inner_steps: int = 10,
             inner_lr: float = 0.1, holdout: float = 0.25, adapt_horizon: int = 0) -> dict:
    """Rollout MSE per system before/after K-shot adaptation, with mean and std over systems.

    `adapt_horizon`: the adaptation loss (0 = next step, n = n-step rollouts; `training.rollout_horizon`).
    """
    if ds.state_dim != model.state_dim or ds.control_dim != model.control_dim:
        raise MetaSymError(f"dataset has state_dim {ds.state_dim}, control_dim {ds.control_dim}; the model "
                           f"expects {model.state_dim}, {model.control_dim}")
    if shots < max(model.context, 4) or shots >= ds.steps:
        raise MetaSymError(f"shots must be in [{max(model.context, 4)}, {ds.steps - 1}] for this dataset "
                           f"and model, got {shots}")
    horizon = ds.steps - shots if horizon is None else horizon
    if horizon < 1 or shots + horizon > ds.steps:
        raise MetaSymError(f"horizon must be in [1, {ds.steps - shots}] with {shots} shots, got {horizon}")
    dtype = next(model.parameters()).dtype
    model.eval()
    states = torch.from_numpy(ds.states).to(dtype)
    controls = torch.from_numpy(ds.controls).to(dtype)
    h = torch.from_numpy(padded_steps(ds.times)).to(dtype)
    c = model.context
    adaptable = bool(model.decoder.local_parameters())
    rows = []
    for i in range(len(ds)):
        res = adapt(model, states[i, :shots], controls[i, :shots], h[i, :shots], inner_steps, inner_lr, holdout,
                    adapt_horizon) if adaptable else None
        ctx = slice(shots - c, shots)
        args = (states[i:i + 1, ctx], controls[i:i + 1, ctx], h[i:i + 1, shots - c:shots + horizon], horizon,
                controls[i:i + 1, shots:shots + horizon])
        truth = states[i, shots:shots + horizon]
        with torch.no_grad():
            before = float((model.rollout(*args)[0] - truth).pow(2).mean())
            after = before if res is None else float(
                (model.rollout(*args, local_params=res.local_params)[0] - truth).pow(2).mean())
        improved = res is not None and res.improved
        guarded = after if improved else before  # what a learner that refuses bad adaptations gets
        rows.append({"system": int(ds.system_index[i]), "mse_before": before, "mse_after": after,
                     "mse_guarded": guarded, "adaptation_accepted": improved,
                     "holdout_loss_before": None if res is None else res.loss_before,
                     "holdout_loss_after": None if res is None else res.loss_after,
                     "adapt_ms": 0.0 if res is None else 1000 * res.seconds})
    out = {"systems": rows, "shots": shots, "horizon": horizon, "inner_steps": inner_steps, "inner_lr": inner_lr,
           "adapt_horizon": adapt_horizon, "adapted": adaptable}
    for key in ("mse_before", "mse_after", "mse_guarded"):
        out[key] = _stats([r[key] for r in rows])
    out["ratio_after_before"] = out["mse_after"]["mean"] / out["mse_before"]["mean"] \
        if out["mse_before"]["mean"] > 0 else math.nan
    return out
