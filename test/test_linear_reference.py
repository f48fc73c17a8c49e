"""The linear reference of Table 1 (`baselines.linear.LinearNextStep`): exact on linear dynamics, under the
table's rollout protocol (`rollout_errors`), and MetaSym's argument conventions."""

import numpy as np
import pytest
import torch

from metasym_core.baselines.evaluate import rollout_errors
from metasym_core.baselines.linear import LinearNextStep
from metasym_core.errors import MetaSymError


class _Linear:
    """A dataset-like record of x_{t+1} = x_t + h (A x_t + B u_t + c), one step size h per system."""

    def __init__(self, systems=6, steps=60, seed=0):
        rng = np.random.default_rng(seed)
        self.A = np.array([[0.0, 1.0, 0.0], [-2.0, -0.1, 0.3], [0.0, 0.0, -0.5]])
        self.B = np.array([[0.0], [1.0], [0.2]])
        self.c = np.array([0.0, 0.05, 0.0])
        self.h = rng.uniform(0.01, 0.03, systems)
        self.times = np.cumsum(np.repeat(self.h[:, None], steps, axis=1), axis=1) - self.h[:, None]
        self.controls = rng.normal(size=(systems, steps, 1))
        self.states = np.zeros((systems, steps, 3))
        self.states[:, 0] = rng.normal(size=(systems, 3))
        for t in range(steps - 1):
            x, u = self.states[:, t], self.controls[:, t]
            self.states[:, t + 1] = x + self.h[:, None] * (x @ self.A.T + u @ self.B.T + self.c)
        self.steps, self.state_dim, self.control_dim = steps, 3, 1

    def __len__(self):
        return len(self.h)


def test_the_linear_reference_fits_and_rolls_out_a_linear_system_exactly():
    train = _Linear(systems=1, seed=0)  # one step size: the record is exactly linear in [x, u, 1]
    test = _Linear(systems=1, seed=0)
    test.states[:, 0] *= -1.0  # another start, same dynamics
    for t in range(test.steps - 1):
        x, u = test.states[:, t], test.controls[:, t]
        test.states[:, t + 1] = x + test.h[:, None] * (x @ test.A.T + u @ test.B.T + test.c)
    model = LinearNextStep().fit(train)
    errs, preds = rollout_errors(lambda i, x, u, hh, fut: model.rollout(x, u, hh, fut.shape[1], fut), test,
                                 shots=20, horizon=30, context=10, dtype=torch.float64)
    hold = np.mean((test.states[:, 20:50] - test.states[:, 19:20]) ** 2)
    assert errs.max() < 1e-8 * hold and preds.shape == (1, 30, 3)  # exact but for the ridge (step and bias are
    # collinear at one step size)
    # MetaSym's conventions: steps [B, C] repeat the last; no future controls hold the last one
    x = torch.from_numpy(test.states[:, 10:20])
    u = torch.from_numpy(test.controls[:, 10:20])
    h = torch.from_numpy(np.full((1, 10), test.h[0]))
    held = model.rollout(x, u, h, 5)
    explicit = model.rollout(x, u, torch.from_numpy(np.full((1, 15), test.h[0])), 5, u[:, -1:].expand(1, 5, 1))
    torch.testing.assert_close(held, explicit)


def test_the_linear_reference_refuses_to_roll_out_unfitted_and_survives_constant_coordinates():
    with pytest.raises(MetaSymError, match="fit"):
        LinearNextStep().rollout(torch.zeros(1, 2, 3), torch.zeros(1, 2, 1), torch.ones(1, 2), 3)
    data = _Linear(systems=4)
    data.states[:, :, 2] = 1.5  # a fixed coordinate (like the mesh's pinned nodes): collinear with the bias
    model = LinearNextStep().fit(data)
    assert np.isfinite(model.weights).all()
    out = model.rollout(torch.from_numpy(data.states[:, :5]), torch.from_numpy(data.controls[:, :5]),
                        torch.from_numpy(np.repeat(data.h[:, None], 5, axis=1)), 10)
    assert torch.allclose(out[..., 2], torch.full_like(out[..., 2], 1.5), atol=1e-9)
