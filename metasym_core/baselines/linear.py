"""The linear reference of Table 1: a pooled least-squares next-step model.

x_{t+1} − x_t = W [x_t, u_t, h_t, 1], fitted once by (ridge-regularised) least squares on every
transition of the training systems, then rolled out autoregressively under the true future
controls and step sizes, like every model of the table. It has no training loop, no
hyper-parameters worth tuning and no notion of the system: a learned model that does not beat it
has not learned dynamics beyond their linear part (issue 17, where on the near-linear spring mesh
it did better than every learned model). Not a `Baseline` (nothing to train with Adam), so it sits
next to `hold_last` and `train_mean` as a reference row.
"""

from __future__ import annotations

import numpy as np
import torch

from metasym_core.errors import MetaSymError
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train.data import padded_steps, target_states

#: Ridge weight relative to the mean diagonal of the normal equations (keeps constant or collinear
#: coordinates, e.g. a fixed mesh node, from making the solve singular; far below any real signal).
RIDGE = 1e-8


class LinearNextStep:
    """`fit(ds)` then `rollout(...)` with MetaSym's tensor conventions (module doc)."""

    def __init__(self):
        self.weights: np.ndarray | None = None  # [D + m + 2, D]

    @staticmethod
    def _features(x: np.ndarray, u: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.concatenate([x, u, h[..., None], np.ones_like(h)[..., None]], axis=-1)

    def fit(self, ds: SystemDataset, noise_free: bool = False) -> LinearNextStep:
        """Least squares on all transitions of `ds` (every system, every frame but the last); with `noise_free`
        towards the noise-free next states (`systems.noise_free_states`, as `training.noise_free_targets`)."""
        if ds.steps < 2:
            raise MetaSymError("the linear reference needs at least 2 frames per system")
        h = padded_steps(ds.times)[:, :-1]
        feats = self._features(ds.states[:, :-1], ds.controls[:, :-1], h).reshape(-1, ds.state_dim + ds.control_dim + 2)
        target = (target_states(ds, noise_free)[:, 1:] - ds.states[:, :-1]).reshape(-1, ds.state_dim)
        gram = feats.T @ feats
        gram[np.diag_indices_from(gram)] += RIDGE * max(float(np.trace(gram)) / len(gram), 1e-300)
        self.weights = np.linalg.solve(gram, feats.T @ target)
        if not np.isfinite(self.weights).all():
            raise MetaSymError("the linear reference's least-squares fit is not finite")
        return self

    def rollout(self, states: torch.Tensor, controls: torch.Tensor, steps: torch.Tensor, horizon: int,
                future_controls: torch.Tensor | None = None) -> torch.Tensor:
        """`horizon` states after the last of `states` `[B, C, D]` under `future_controls` `[B, horizon, m]`
        (None: the last control held), as `MetaSym.rollout` takes them: `steps` `[B, C + horizon]` or `[B, C]`
        (future steps repeat the last), the step after frame t at index t."""
        if self.weights is None:
            raise MetaSymError("fit the linear reference before rolling it out")
        context = states.shape[1]
        if future_controls is None:
            future_controls = controls[:, -1:].expand(-1, horizon, -1)
        if steps.shape[1] < context + horizon:
            steps = torch.cat([steps, steps[:, -1:].expand(-1, context + horizon - steps.shape[1])], dim=1)
        x = states[:, -1].double().numpy()
        u_all = torch.cat([controls[:, -1:], future_controls[:, :horizon - 1]], dim=1).double().numpy()
        h_all = steps[:, context - 1:context - 1 + horizon].double().numpy()
        out = np.empty((x.shape[0], horizon, x.shape[1]))
        for k in range(horizon):
            x = x + self._features(x, u_all[:, k], h_all[:, k]) @ self.weights
            out[:, k] = x
        return torch.from_numpy(out).to(states.dtype)
