"""The decoder's linear skip (`ActiveDecoder(linear_skip=True)`): a linear map of the step's normalised inputs
added to the increment, so that the increment can grow with the inputs where the layer-normed head alone is
bounded; zero at init, global (θ), carried by checkpoints, and the same in prediction, rollout and training."""

import pytest
import torch
from _models import random_model

from metasym_core.baselines import make_baseline
from metasym_core.checkpoint import load_checkpoint, save_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.meta.losses import decoder_batch, increment_loss
from metasym_core.models.decoder import ActiveDecoder


def _inputs(B=2, T=8, D=12, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, D, generator=g, dtype=torch.float64),
            torch.randn(B, T, m, generator=g, dtype=torch.float64), torch.full((B, T, 1), 0.02, dtype=torch.float64))


def _increment(model, x, u, h) -> torch.Tensor:
    """The last step's increment over the anchor (x_t), in state units."""
    with torch.no_grad():
        return model.predict_next(x, u, h)[:, -1] - x[:, -1]


def test_a_zero_skip_predicts_what_the_model_without_it_does():
    """At init the skip is zero, so adding it to a trained model changes no prediction (to round-off)."""
    plain = random_model(layers=2, context=6)
    skipped = random_model(layers=2, context=6, linear_skip=True)
    with torch.no_grad():
        skipped.decoder.skip.weight.zero_()
        skipped.decoder.skip.bias.zero_()
    skipped.load_state_dict({**skipped.state_dict(), **plain.state_dict()})
    x, u, h = _inputs()
    with torch.no_grad():
        assert (skipped.predict_next(x, u, h) - plain.predict_next(x, u, h)).abs().max() < 1e-14
        assert (skipped.rollout(x, u, 0.02, 10) - plain.rollout(x, u, 0.02, 10)).abs().max() < 1e-12
    assert (ActiveDecoder(12, 4, 16, linear_skip=True).skip.weight == 0).all()


def test_the_increment_grows_with_the_inputs_only_with_the_skip():
    """The head reads the token through a layer norm: scaling the inputs 10× then barely changes its increment
    (it is bounded), while the skip's part scales with them, so the whole increment does too."""
    x, u, h = _inputs()
    mean_x = x.mean(dim=(0, 1))
    for skip in (False, True):
        model = random_model(layers=1, context=6, linear_skip=skip, scale=0.3)
        model.state_mean.copy_(mean_x)
        grow = [_increment(model, mean_x + k * (x - mean_x), u, h).norm() for k in (10.0, 100.0)]
        ratio = float(grow[1] / grow[0])
        if skip:
            assert 8.0 < ratio < 12.0, ratio
        else:
            assert ratio < 1.5, ratio


def test_the_skip_is_global_trained_and_outside_phi():
    """φ stays the meta-attention's W_Q, W_V, b_V; the skip is θ and the training loss reaches it."""
    model = random_model(layers=1, context=6, linear_skip=True)
    assert not any("skip" in name for name in model.decoder.local_parameters())
    assert {"skip.weight", "skip.bias"} <= set(model.decoder.global_parameters())
    x, u, h = _inputs(T=12)
    model.train()
    increment_loss(model, decoder_batch(model, torch.cat([x, x[:, :1]], 1), torch.cat([u, u[:, :1]], 1),
                                        torch.cat([h, h[:, :1]], 1)), None, start=5).backward()
    assert model.decoder.skip.weight.grad.abs().sum() > 0


def test_the_skip_travels_in_checkpoints_and_old_ones_read_without_it(tmp_path):
    model = random_model(linear_skip=True)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model))[0]
    assert loaded.decoder.linear_skip
    assert (loaded.decoder.skip.weight == model.decoder.skip.weight).all()
    x, u, h = _inputs()
    with torch.no_grad():
        assert (loaded.rollout(x, u, 0.02, 5) - model.rollout(x, u, 0.02, 5)).abs().max() < 1e-12
    old = {k: v for k, v in model.decoder.config().items() if k != "linear_skip"}
    assert not ActiveDecoder(**old).linear_skip and ActiveDecoder(**old).skip is None
    with pytest.raises(MetaSymError, match="linear_skip must be true or false, got 'yes'"):
        ActiveDecoder(4, 0, 8, linear_skip="yes")


def test_the_transformer_baseline_takes_the_same_skip():
    """Table 1 gives the Transformer MetaSym's skip; zero at init, it is the plain Transformer until trained."""
    plain = make_baseline("transformer", 12, 4, d_model=16, context=6)
    skipped = make_baseline("transformer", 12, 4, d_model=16, context=6, linear_skip=True)
    assert skipped.n_params() - plain.n_params() == (12 + 4 + 1) * 12 + 12
    assert skipped.config()["linear_skip"] and not plain.config()["linear_skip"]
    skipped.load_state_dict({**skipped.state_dict(), **plain.state_dict()})
    x, u, h = (t.float() for t in _inputs())
    with torch.no_grad():
        assert (skipped.predict_next(x, u, h) - plain.predict_next(x, u, h)).abs().max() == 0
        skipped.skip.bias.fill_(0.5)
        assert (skipped.predict_next(x, u, h) - plain.predict_next(x, u, h)).abs().max() > 1e-3
