"""Baselines of Table 1: shapes, causality, rollout = teacher forcing, D-HNN energy, applicability errors."""

import pytest
import torch

from metasym_core.baselines import applicable_baselines, make_baseline, train_baseline
from metasym_core.baselines.registry import from_config
from metasym_core.bench.train import synthetic_dataset
from metasym_core.errors import MetaSymError

CASES = [("mlp", 12, 4, {"hidden": 16}), ("transformer", 12, 4, {"d_model": 16, "context": 5}),
         ("dhnn", 12, 4, {"hidden": 16}), ("quantum_lstm", 2, 0, {"hidden": 8})]


def _random(name, D, m, opts, seed=0):
    torch.manual_seed(seed)
    model = make_baseline(name, D, m, **opts).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def _data(D, m, T=12, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    u = torch.randn(B, T, m, generator=g, dtype=torch.float64)
    h = 0.01 + 0.02 * torch.rand(B, T, generator=g, dtype=torch.float64)
    return x, u, h


@pytest.mark.parametrize("name,D,m,opts", CASES)
def test_shapes_and_step_forms(name, D, m, opts):
    model = _random(name, D, m, opts)
    x, u, h = _data(D, m)
    assert model(x, u, h).shape == (2, 12, D)
    assert model(x, u, 0.02).shape == (2, 12, D)
    with torch.no_grad():
        for steps in (0.02, h, torch.cat([h, h[:, -1:].expand(2, 6)], 1)):
            assert model.rollout(x, u, steps, 6).shape == (2, 6, D)
    with pytest.raises(MetaSymError):
        model(x[..., :-1], u, h)
    with pytest.raises(MetaSymError):
        model.rollout(x, u, h, 0)


@pytest.mark.parametrize("name,D,m,opts", CASES)
def test_rollout_equals_teacher_forcing(name, D, m, opts):
    """Feeding the rollout's own predictions back teacher-forced reproduces them (future controls applied at k)."""
    model = _random(name, D, m, opts)
    x, u, h = _data(D, m, T=16)
    fut = _data(D, m, T=5, seed=3)[1]
    with torch.no_grad():
        roll = model.rollout(x[:, :11], u[:, :11], h, 5, future_controls=fut)
    xs = torch.cat([x[:, :11], roll[:, :4]], 1)
    us = torch.cat([u[:, :11], fut[:, :4]], 1)
    tf = model(xs, us, h[:, :15])[:, -5:]
    assert torch.allclose(tf.detach(), roll, atol=1e-10)
    if m:  # default: hold the last control
        with torch.no_grad():
            held = model.rollout(x[:, :11], u[:, :11], h, 5)
            same = model.rollout(x[:, :11], u[:, :11], h, 5, future_controls=u[:, 10:11].expand(2, 5, m))
        assert torch.allclose(held, same)


def test_transformer_is_causal_within_its_window():
    model = _random("transformer", 6, 2, {"d_model": 16, "context": 4})
    x, u, h = _data(6, 2, T=12)
    base = model(x, u, h).detach()
    x2 = x.clone()
    x2[:, 5] += 1.0
    out = model(x2, u, h).detach()
    assert torch.equal(out[:, :5], base[:, :5])  # the past does not see the future
    assert not torch.allclose(out[:, 5:9], base[:, 5:9])  # the window sees it
    assert torch.allclose(out[:, 9:], base[:, 9:], atol=1e-12)  # beyond the context window: forgotten


def _energy_drift(model, z0, h, n):
    z, e0 = z0, model.energy(z0).detach()
    with torch.no_grad():
        for _ in range(n):
            z = model.rk4(z, None, torch.tensor(h, dtype=z.dtype))
    return float((model.energy(z).detach() - e0).abs().max())


def test_dhnn_without_dissipation_conserves_h_to_rk4_accuracy():
    model = _random("dhnn", 4, 0, {"hidden": 16, "dissipative": False})
    model.rate.fill_(20.0)  # a fast flow, so the RK4 error is well above round-off
    z0 = torch.randn(3, 4, dtype=torch.float64)
    coarse = _energy_drift(model, z0, 0.02, 50)
    fine = _energy_drift(model, z0, 0.01, 100)
    assert 0 < coarse < 1e-8
    assert fine < coarse / 10  # fourth order: halving h cuts the drift ~16x (measured 15.8)
    dissipative = _random("dhnn", 4, 0, {"hidden": 16})
    dissipative.rate.fill_(20.0)
    assert _energy_drift(dissipative, z0, 0.02, 50) > 1e-3  # D moves the state off H's level set


def test_applicability_and_registry_errors():
    assert applicable_baselines("quantum") == ["transformer", "mlp", "quantum_lstm"]
    assert applicable_baselines("quadrotor") == ["transformer", "dhnn", "mlp"]
    with pytest.raises(MetaSymError, match="does not apply to the quantum"):
        make_baseline("dhnn", 2, 0, system="quantum")
    with pytest.raises(MetaSymError, match="does not apply to the spring_mesh"):
        make_baseline("quantum_lstm", 36, 0, system="spring_mesh")
    with pytest.raises(MetaSymError, match="unknown baseline"):
        make_baseline("gru", 2, 0)
    with pytest.raises(MetaSymError, match="even state_dim"):
        make_baseline("dhnn", 3, 0)
    with pytest.raises(MetaSymError, match="bad option"):
        make_baseline("mlp", 2, 0, width=3)
    model = make_baseline("transformer", 12, 4, d_model=8, context=7)
    assert from_config(model.config()).config() == model.config()


def test_train_baseline_lowers_the_validation_loss():
    ds = synthetic_dataset(4, 1, systems=3, steps=40)
    model = make_baseline("mlp", 4, 1, hidden=16)
    history = train_baseline(model, ds, ds, steps=60, window=10, eval_interval=20, noise=0.01)
    vals = [r["val_loss"] for r in history if r["val_loss"] is not None]
    assert len(vals) == 3 and min(vals) < 1.0  # 1 = predicting no motion; the start (zero head) scores ~1
    assert not model.training
    with pytest.raises(MetaSymError, match="dims"):
        train_baseline(make_baseline("mlp", 2, 1), ds, ds, steps=2)


def test_train_baseline_device_option():
    ds = synthetic_dataset(4, 1, systems=3, steps=40)
    model = make_baseline("mlp", 4, 1, hidden=8)
    train_baseline(model, ds, ds, steps=3, window=10, device="cpu", noise=0.01)
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(MetaSymError, match="device"):
        train_baseline(model, ds, ds, steps=2, window=10, device="gpu0")
