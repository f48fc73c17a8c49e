"""Energy of spring-mesh rollouts (Table 1's energy-vs-time plot, ablation D.1).

Table 1 trains and scores every model on the mesh's moving coordinates only (the
fixed top row is dropped, `table1.drop_constant_coordinates`); the mesh's energy needs
every node, so the dropped coordinates are put back at their constant values before
`SpringMesh.energy` (kinetic plus spring potential, with each OOD system's own k, m).
On the conservative mesh the true energy is constant, so a model's curve shows its
drift directly.
"""

from __future__ import annotations

import numpy as np

from metasym_core.errors import MetaSymError
from metasym_core.systems.dataset import SystemDataset


def moving_mask(ds: SystemDataset) -> np.ndarray:
    """State columns of the (q, p) pairs that move anywhere in `ds` (Table 1 keeps those of its training set)."""
    states = ds.states.reshape(-1, ds.states.shape[-1])
    moving = states.std(0) > 0
    d = moving.size // 2
    pair = moving[:d] | moving[d:]
    return np.concatenate([pair, pair]) if moving.size % 2 == 0 else moving


def energy_curves(family, full: SystemDataset, keep: np.ndarray, preds: dict[str, np.ndarray], shots: int,
                  horizon: int) -> dict[str, np.ndarray]:
    """Energy `[N, horizon]` of the true OOD trajectories (`"truth"`) and of each model's rollouts.

    Args:
        family: the `SpringMesh` that generated `full` (its `energy`).
        full: the OOD dataset with every coordinate. keep: the columns the models see
            (`moving_mask` of the training set); the others keep their values in `full`.
        preds: model name → predictions `[N, horizon, keep.sum()]`, steps `shots .. shots + horizon - 1`.
    """
    truth = full.states[:, shots:shots + horizon]
    names = list(full.metadata.get("param_names", []))
    if len(names) != full.params.shape[-1]:
        raise MetaSymError("energy: the dataset does not name its physical parameters")
    params = [dict(zip(names, map(float, row), strict=True)) for row in full.params]
    out = {"truth": np.stack([family.energy(truth[i], params[i]) for i in range(len(full))])}
    for key, pred in preds.items():
        if pred.shape[:2] != truth.shape[:2] or pred.shape[-1] != int(keep.sum()):
            raise MetaSymError(f"energy: {key} predictions have shape {list(pred.shape)}, expected "
                               f"{list(truth.shape[:2]) + [int(keep.sum())]}")
        states = truth.copy()
        states[..., keep] = pred
        out[key] = np.stack([family.energy(states[i], params[i]) for i in range(len(full))])
    return out


def energy_errors(curves: dict[str, np.ndarray]) -> dict[str, float]:
    """Per model: mean over systems of |E_model − E_true| at the last step over E_true at the first."""
    truth = curves["truth"]
    scale = np.abs(truth[:, 0])
    return {key: float(np.mean(np.abs(e[:, -1] - truth[:, -1]) / scale)) for key, e in curves.items()
            if key != "truth"}
