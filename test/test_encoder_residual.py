"""The decoder's residuals (`ActiveDecoder(residual=...)`): the increment is added to x_t ("state"), to the
symplectic encoder's flow step Φ_θ(x_t, h_t) ("encoder") or to the training mean of the state ("mean": the head
predicts the next state itself), in prediction, rollout and the losses."""

import pytest
import torch
from _models import random_model

from metasym_core.checkpoint import load_checkpoint, save_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.meta.losses import decoder_batch, increment_loss, rollout_loss
from metasym_core.models.decoder import ActiveDecoder
from metasym_core.models.metasym import MetaSym


def _zero_head(model: MetaSym) -> MetaSym:
    with torch.no_grad():
        model.decoder.head[-1].weight.zero_()
        model.decoder.head[-1].bias.zero_()
    return model


def _context(B=2, T=8, D=12, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, D, generator=g, dtype=torch.float64),
            torch.randn(B, T, m, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("residual", ["state", "encoder", "mean"])
def test_with_a_zero_head_the_rollout_is_the_anchor_flow(residual):
    """Δ = 0: the state residual holds the last state, the encoder residual iterates Φ_θ, the mean residual
    predicts the training mean at every step, to round-off."""
    model = _zero_head(random_model(layers=2, context=6, residual=residual, scale=0.1))
    mean = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64)
    model.state_mean.copy_(mean)
    x, u = _context()
    with torch.no_grad():
        out = model.rollout(x, u, 0.02, 10)
        cur, expected = x[:, -1], []
        for _ in range(10):
            cur = model.encoder(cur, torch.full((2, 1), 0.02, dtype=torch.float64)) if residual == "encoder" else cur
            expected.append(mean.expand_as(cur) if residual == "mean" else cur)
    assert (out - torch.stack(expected, dim=1)).abs().max() < 1e-12
    if residual == "encoder":  # not trivially the hold: the encoder moves the state
        assert (out[:, -1] - x[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("residual", ["state", "encoder", "mean"])
def test_the_model_s_own_trajectory_has_zero_losses(residual):
    """A trajectory the model generated itself (rollout from a context under given controls) is what the
    teacher-forced and the rollout loss both score as exact: targets and rollouts use the same anchor."""
    model = random_model(layers=1, context=6, residual=residual, scale=0.1)
    x, u = _context(B=2, T=6)
    g = torch.Generator().manual_seed(3)
    future = torch.randn(2, 20, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        pred = model.rollout(x, u, 0.02, 20, future_controls=future)
        states = torch.cat([x, pred], dim=1)
        controls = torch.cat([u, future], dim=1)
        batch = decoder_batch(model, states, controls, torch.full((2, 26, 1), 0.02, dtype=torch.float64))
        assert increment_loss(model, batch, None, start=5) < 1e-20
        assert rollout_loss(model, batch, None, horizon=8) < 1e-20
        # and a wrong anchor is not: the other residual's loss on the same trajectory
        other = MetaSym(model.encoder, ActiveDecoder(**{**model.decoder.config(),
                                                        "residual": {"state": "encoder", "encoder": "state",
                                                                     "mean": "state"}[residual]}
                                              ).double())
        other.load_state_dict(model.state_dict())
        assert increment_loss(other, decoder_batch(other, states, controls,
                                                   torch.full((2, 26, 1), 0.02, dtype=torch.float64)),
                              None, start=5) > 1e-6


def test_the_residual_travels_in_checkpoints_and_old_ones_read_as_state(tmp_path):
    model = random_model(residual="encoder")
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(path)[0]
    assert loaded.decoder.residual == "encoder" and loaded.encoder_residual
    old = {k: v for k, v in model.decoder.config().items() if k != "residual"}
    assert ActiveDecoder(**old).residual == "state"


def test_a_bad_residual_is_a_one_line_error():
    with pytest.raises(MetaSymError,
                       match="residual must be one of state, encoder, mean or nominal:<system>, got 'latent'"):
        ActiveDecoder(4, 0, 8, residual="latent")
    with pytest.raises(MetaSymError, match="no nominal model 'pendulum'; known: nominal:quadrotor"):
        ActiveDecoder(4, 0, 8, residual="nominal:pendulum")


def test_coordinates_the_data_never_moved_are_held():
    """`set_normalization` marks coordinates constant in the training data (the spring mesh's fixed row);
    the encoder residual holds them exactly, in the rollout and in the losses' anchor, while it mixes
    every coordinate (so without the mark it would move them)."""
    model = random_model(layers=1, context=6, residual="encoder", scale=0.1)
    g = torch.Generator().manual_seed(5)
    data = torch.randn(3, 40, 12, generator=g, dtype=torch.float64)
    data[..., [2, 8]] = torch.tensor([0.5, -0.25], dtype=torch.float64)  # a fixed node: q and p
    model.set_normalization(data, torch.randn(3, 40, 4, generator=g, dtype=torch.float64), 0.02)
    assert model.fixed.tolist() == [i in (2, 8) for i in range(12)]
    _zero_head(model)
    x, u = data[:2, :8], torch.randn(2, 8, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model.rollout(x, u, 0.02, 10)
        ref = model.rollout_reference(x, u, 0.02, 10)
    assert (out[..., [2, 8]] == x[:, -1:, [2, 8]]).all() and (out - ref).abs().max() < 1e-12
    assert (out[:, -1] - x[:, -1]).abs().max() > 1e-3  # the others move


@pytest.mark.parametrize("backend", ["auto", "native", "torch", "reference"])
def test_the_mean_residual_rolls_out_alike_on_every_backend_that_takes_it(backend):
    """The compiled kernel adds the increment to the training mean too (`auto` takes it); the NumPy path adds it
    to x_t or Φ_θ only and declines a mean-residual model. Every backend that takes it equals the reference
    rollout."""
    from metasym_core.models import backends

    model = random_model(layers=1, context=6, residual="mean", scale=0.1).float()
    model.state_mean.copy_(torch.linspace(-1.0, 2.0, 12))
    x, u = (t.float() for t in _context(B=3, T=6))
    g = torch.Generator().manual_seed(5)
    future = torch.randn(3, 12, 4, generator=g)
    with torch.no_grad():
        ref = model.rollout(x, u, 0.02, 12, future_controls=future, backend="reference")
        out = model.rollout(x, u, 0.02, 12, future_controls=future, backend=backend)
        h = torch.full((3, 6 + 12, 1), 0.02)
        assert backends.BACKENDS["numpy"](model, x, u, h, future, 12, None) is None
        native = backends.BACKENDS["native"](model, x, u, h, future, 12, None)
        assert native is not None and (native - ref).abs().max() < 1e-5
    assert (out - ref).abs().max() < 1e-5
    assert (ref[:, 0] - x[:, -1]).abs().max() > 0.1  # not the hold of the last state
