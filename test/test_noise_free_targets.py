"""`training.noise_free_targets`: models learn the noise-free expectation of each next frame (what a simulator
knows: `SystemFamily.noise_free_states`) while their inputs stay the observed, noisy frames; MetaSym, the
baselines and the linear reference alike."""

import math

import numpy as np
import pytest
import torch

from metasym_core.baselines import make_baseline, train_baseline
from metasym_core.baselines.linear import LinearNextStep
from metasym_core.baselines.train import dataset_tensors, next_step_loss
from metasym_core.config import load_config
from metasym_core.errors import MetaSymError
from metasym_core.systems import make_family, noise_free_states
from metasym_core.systems.dataset import SystemDataset, generate
from metasym_core.train.config import TrainingConfig
from metasym_core.train.data import TrainData
from metasym_core.train.trainer import Trainer

TINY = {"encoder_steps": 3, "outer_steps": 4, "inner_steps": 2, "batch_systems": 2, "window": 12,
        "checkpoint_interval": 50, "eval_interval": 2, "patience": 50}

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: 1 thread (conftest)


def _oscillators(noise_std: float, split: str = "train", seed: int = 0) -> SystemDataset:
    family = make_family("oscillator", noise_std=noise_std)
    return SystemDataset.from_arrays(generate(family, split, systems=4, steps=60, seed=seed, workers=1,
                                              progress=False))


@pytest.fixture(scope="module")
def noisy() -> tuple[SystemDataset, SystemDataset]:
    return _oscillators(0.05), _oscillators(0.05, "ood", 1)


def _cfg(**training) -> dict:
    cfg = load_config("oscillator")
    cfg["training"] = {**cfg["training"], **TINY, **training}
    return cfg


def test_each_family_says_what_its_noise_free_states_are(noisy):
    """Sensor noise: the stored clean states; no noise: the states themselves; the quantum record: its mean given
    the record before, √(2ηγ(n̄+1))·(⟨x⟩, ⟨p⟩); a record without those extras is refused in one line."""
    train, _ = noisy
    clean = noise_free_states(train)
    assert np.array_equal(clean, train.extras["clean_states"])
    assert 0.03 < float(np.std(train.states - clean)) < 0.07  # the noise is really there
    quiet = _oscillators(0.0)
    assert np.array_equal(noise_free_states(quiet), quiet.states)

    pytest.importorskip("qutip")
    family = make_family("quantum", fock_dim=12, alpha_range=(0.5, 1.5))
    ds = SystemDataset.from_arrays(generate(family, "train", systems=2, steps=30, seed=0, workers=1, progress=False))
    signal = noise_free_states(ds)
    assert signal.shape == ds.states.shape
    for i in range(len(ds)):
        scale = family.signal_scale(ds.param_dict(i))
        assert np.allclose(signal[i, :, 0], scale * ds.extras["hidden_x"][i], rtol=1e-12)
        assert np.allclose(signal[i, :, 1], scale * ds.extras["hidden_p"][i], rtol=1e-12)
    # the record's white noise (variance 2/dt = 20 per quadrature) is what the targets leave out
    assert float(np.var(ds.states - signal)) == pytest.approx(2.0 / family.dt, rel=0.3)
    bare = SystemDataset(ds.metadata, ds.system_index, ds.params, ds.times, ds.states, ds.controls, {})
    with pytest.raises(MetaSymError, match="no hidden_x / hidden_p extras"):
        noise_free_states(bare)


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_the_decoder_learns_the_noise_free_next_state_from_the_observed_one(noisy, tmp_path, noise):
    """Inputs: the observed frames (plus `input_noise` when set); targets: the clean next frame, measured from the
    input's anchor. Without the option the targets are the observed next frames, as before."""
    train, val = noisy
    model = Trainer(_cfg(), train, val, tmp_path, seed=0, progress=False).model.eval()
    observed = TrainData(train, model, 0.5, 12, "training")
    clean = TrainData(train, model, 0.5, 12, "training", noise_free=True)
    systems, first = torch.tensor([0, 3]), torch.tensor([4, 7])
    gen = (lambda: torch.Generator().manual_seed(1)) if noise else (lambda: None)
    a = observed.decoder_window(model, systems, first, lead=2, noise=noise, gen=gen())
    b = clean.decoder_window(model, systems, first, lead=2, noise=noise, gen=gen())
    assert torch.equal(a.x, b.x) and torch.equal(a.e, b.e)  # the same inputs
    idx = (first - 2)[:, None] + torch.arange(clean.window + 3)
    rows = systems[:, None]
    x_in, e_in = (b.x * model.state_std + model.state_mean, b.e * model.state_std + model.state_mean)
    anchor = model.anchor(x_in, e_in, clean.controls[rows, idx], clean.h[rows, idx])[:, :-1]
    truth = torch.from_numpy(train.extras["clean_states"]).to(anchor.dtype)[rows, idx]
    assert torch.allclose(anchor + b.target * model.delta_std, truth[:, 1:], atol=1e-9)
    assert torch.allclose(anchor + a.target * model.delta_std, observed.states[rows, idx][:, 1:], atol=1e-9)
    assert not torch.allclose(a.target, b.target)


def test_training_with_noise_free_targets(noisy, tmp_path):
    """MetaSym's trainer takes the option (a boolean) for training and validation, and trains a different model;
    the baselines' training and the linear reference take it too: each fits the clean next states."""
    train, val = noisy
    runs = {}
    for flag in (False, True):
        trainer = Trainer(_cfg(noise_free_targets=flag), train, val, tmp_path / str(flag), seed=3, progress=False)
        assert (trainer.val_data.targets is trainer.val_data.states) != flag  # validation scores the same targets
        trainer.run()
        runs[flag] = trainer.model
    sa, sb = runs[False].state_dict(), runs[True].state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(MetaSymError, match="training.noise_free_targets = 1 must be a boolean"):
        TrainingConfig.from_config(_cfg(noise_free_targets=1))

    # baselines: the loss is against the targets; training with them runs and lowers the validation loss
    x, u, h, y = dataset_tensors(train, torch.float64, noise_free=True)
    assert torch.equal(y, torch.from_numpy(train.extras["clean_states"]))
    mlp = make_baseline("mlp", train.state_dim, train.control_dim, hidden=16).double()
    mlp.set_normalization(x, u, h)
    expected = ((mlp.predict_next(x[:, :-1], u[:, :-1], h[:, :-1]) - y[:, 1:]) / mlp.delta_std).pow(2).mean()
    assert torch.allclose(next_step_loss(mlp, x, u, h, y), expected)
    history = train_baseline(mlp, train, val, steps=40, window=10, eval_interval=20, noise_free=True)
    vals = [r["val_loss"] for r in history if r["val_loss"] is not None]
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals)

    # the linear reference: least squares towards the clean next states fits them at least as well in sample
    fits = {flag: LinearNextStep().fit(train, flag) for flag in (False, True)}

    def clean_error(lin):
        feats = lin._features(train.states[:, :-1], train.controls[:, :-1],
                              np.diff(train.times, axis=1))
        pred = train.states[:, :-1] + feats @ lin.weights
        return float(((pred - train.extras["clean_states"][:, 1:]) ** 2).mean())
    assert clean_error(fits[True]) < clean_error(fits[False])


def test_dropping_constant_coordinates_drops_them_from_the_clean_states_too():
    """Table 1 trains without the mesh's fixed row; a dataset's clean states lose the same coordinates, so the
    noise-free targets keep matching the states."""
    from metasym_core.bench.table1 import drop_constant_coordinates

    mesh = SystemDataset.from_arrays(generate(make_family("spring_mesh", grid=3), "train", 2, 30, seed=0, workers=1,
                                              progress=False))
    rng = np.random.default_rng(0)
    noisy = SystemDataset(mesh.metadata, mesh.system_index, mesh.params, mesh.times,
                          mesh.states + rng.normal(0.0, 0.01, mesh.states.shape), mesh.controls,
                          {**mesh.extras, "clean_states": mesh.states})
    reduced = drop_constant_coordinates({"train": mesh, "ood": noisy})["ood"]
    assert reduced.state_dim < mesh.state_dim
    keep = np.ptp(mesh.states.reshape(-1, mesh.state_dim), axis=0) > 0
    assert np.array_equal(noise_free_states(reduced), mesh.states[..., keep])
