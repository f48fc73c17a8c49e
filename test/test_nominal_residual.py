"""`decoder.residual: nominal:quadrotor`: the model adds its increment to the quadrotor's known step at
nominal parameters (`models.nominal`, `systems.quadrotor.torch_step`). The torch step is Crocoddyl's to
round-off, an untrained model (its head starts at zero) predicts exactly that step, the losses' targets
are what the nominal step misses (nothing on the nominal plant), and the residual survives a checkpoint."""

import numpy as np
import pytest
import torch
from _models import random_model

from metasym_core.checkpoint import load_checkpoint, save_checkpoint
from metasym_core.meta.losses import decoder_batch
from metasym_core.models.decoder import ActiveDecoder
from metasym_core.models.encoder import SymplecticEncoder
from metasym_core.models.metasym import MetaSym
from metasym_core.systems import quadrotor as quad
from metasym_core.systems.quadrotor import torch_step

NOMINAL = "nominal:quadrotor"


def _states(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 3)), rng.normal(size=(n, 3)) * 0.6, rng.normal(size=(n, 6))], axis=1)
    return x, rng.uniform(-1.0, quad.MAX_THRUST + 1.0, (n, 4))  # thrusts beyond the limits saturate


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0, 1.0), (1.3, 0.8, 1.2, 0.9)])
def test_the_torch_step_is_crocoddyls_to_round_off(scales):
    x, u = _states(200)
    params = dict(zip(quad.PARAM_NAMES, scales, strict=True))
    ref = np.stack([quad.step(xi, ui, 0.02, params) for xi, ui in zip(x, u, strict=True)])
    got = torch_step.step(torch.tensor(x), torch.tensor(u), torch.full((200, 1), 0.02, dtype=torch.float64), scales)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_se3_exp_and_log_invert_each_other_with_finite_gradients_at_rest():
    x, _ = _states(100, seed=1)
    xi = torch.tensor(x[:, :6])
    np.testing.assert_allclose(torch_step.log6(*torch_step.exp6(xi)).numpy(), xi.numpy(), rtol=0, atol=1e-12)
    with torch.inference_mode():  # a rollout first (its cached constants must still serve autograd later)
        torch_step.step(torch.zeros(1, 12, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64),
                        torch.full((1, 1), 0.02, dtype=torch.float64))
    rest = torch.zeros(1, 12, dtype=torch.float64, requires_grad=True)
    hover = torch.full((1, 4), 1.477 * quad.GRAVITY / 4, dtype=torch.float64)
    out = torch_step.step(rest, hover, torch.full((1, 1), 0.02, dtype=torch.float64))
    assert out.abs().max() < 1e-12  # hover thrust holds the body at rest
    (grad,) = torch.autograd.grad(out.sum(), rest)
    assert torch.isfinite(grad).all()


def test_an_untrained_model_predicts_the_nominal_step_and_learns_what_it_misses():
    """The head's last layer starts at zero, so a fresh model's rollout is the nominal plant's flight; the
    losses' targets vanish on nominal data and, on a heavier plant, are what the nominal step misses."""
    torch.manual_seed(0)
    model = MetaSym(SymplecticEncoder(12), ActiveDecoder(12, 4, 16, context=5, residual=NOMINAL)).double()
    x0, _ = _states(1, seed=2)
    rng = np.random.default_rng(3)
    controls = 3.6 + 0.3 * rng.normal(size=(30, 4))
    for scale in (1.0, 1.3):
        params = {k: 1.0 for k in quad.PARAM_NAMES} | {"mass_scale": scale}
        xs = [x0[0] * 0.2]
        for u in controls[:-1]:
            xs.append(quad.step(xs[-1], u, 0.02, params))
        states, u = torch.tensor(np.array(xs))[None], torch.tensor(controls)[None]
        model.set_normalization(states, u, torch.full((1, 30), 0.02))
        with torch.no_grad():
            pred = model.rollout(states[:, :5], u[:, :5], 0.02, 25, future_controls=u[:, 5:])
        batch = decoder_batch(model, states, u, torch.full((1, 30, 1), 0.02, dtype=torch.float64))
        if scale == 1.0:
            np.testing.assert_allclose(pred[0].numpy(), states[0, 5:].numpy(), rtol=0, atol=1e-9)
            assert batch.target.abs().max() < 1e-9
        else:  # the heavier body falls behind the nominal step: a vertical-velocity residual to learn
            assert (pred[0] - states[0, 5:]).abs().max() > 1e-3
            assert batch.target.abs().max() > 1e-2


def test_the_nominal_residual_survives_a_checkpoint(tmp_path):
    model = random_model(context=6, residual=NOMINAL, scale=0.05)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(tmp_path / "m.pt")[0]
    assert loaded.decoder.residual == NOMINAL and not loaded.state_residual
    x, u = _states(6, seed=4)
    args = (torch.tensor(x * 0.3)[None], torch.tensor(np.clip(u, 0, 8))[None], 0.02, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.rollout(*args), model.rollout(*args), rtol=0, atol=1e-12)
