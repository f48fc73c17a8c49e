"""Open quantum system family: record layout, determinism, ranges, physics of the record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("qutip")

from metasym_core.errors import MetaSymError  # noqa: E402
from metasym_core.systems import make_family  # noqa: E402
from metasym_core.systems.quantum import OpenQuantumSystem  # noqa: E402

TRAIN_MID = {"omega": 1.0, "kappa": 0.1, "epsilon": 0.005, "nbar": 0.25, "eta": 0.75}


@pytest.fixture(scope="module")
def small() -> OpenQuantumSystem:
    """A small Fock space keeps the tests fast; |α| ≤ 1.5 fits it."""
    return OpenQuantumSystem(fock_dim=12, alpha_range=(0.5, 1.5))


def test_record_layout(small):
    steps = 40
    traj = small.simulate(TRAIN_MID, steps, np.random.default_rng(0))
    assert (small.name, small.state_dim, small.control_dim) == ("quantum", 2, 0)
    assert small.state_names == ["I", "Q"] and small.control_names == []
    assert traj.states.shape == (steps, 2) and traj.states.dtype == np.float64
    assert traj.controls.shape == (steps, 0) and traj.controls.dtype == np.float64
    assert traj.times.dtype == np.float64
    np.testing.assert_allclose(traj.times, small.dt * np.arange(steps), rtol=0, atol=1e-12)
    assert traj.times[0] == 0.0 and np.all(np.diff(traj.times) > 0)
    for key in ("hidden_x", "hidden_p", "hidden_n"):
        assert traj.extras[key].shape == (steps,) and np.isfinite(traj.extras[key]).all()
    alpha = complex(*traj.extras["alpha"])
    assert 0.5 <= abs(alpha) <= 1.5
    # The first sample's hidden mean starts near √2·α (x = (a + a†)/√2 convention).
    assert abs(complex(traj.extras["hidden_x"][0], traj.extras["hidden_p"][0]) - math.sqrt(2) * alpha) < 0.15
    assert traj.params == TRAIN_MID
    json.dumps(small.options())  # recorded in dataset metadata


def test_same_seed_same_record(small):
    params = small.sample_params("ood", np.random.default_rng(3))
    one = small.simulate(params, 30, np.random.default_rng(11))
    two = small.simulate(params, 30, np.random.default_rng(11))
    other = small.simulate(params, 30, np.random.default_rng(12))
    assert np.array_equal(one.states, two.states) and np.array_equal(one.times, two.times)
    for key in one.extras:
        assert np.array_equal(one.extras[key], two.extras[key])
    assert not np.array_equal(one.states, other.states)


def test_ranges_and_sampling():
    family = OpenQuantumSystem()
    train, ood = family.param_ranges("train"), family.param_ranges("ood")
    assert list(train) == list(ood) == ["omega", "kappa", "epsilon", "nbar", "eta"]
    for name in train:
        (t_lo, t_hi), (o_lo, o_hi) = train[name], ood[name]
        assert o_lo >= t_hi or o_hi <= t_lo, f"OOD {name} overlaps the train range"
    for split, ranges in (("train", train), ("ood", ood)):
        draws = [family.sample_params(split, np.random.default_rng(i)) for i in range(100)]
        for name, (lo, hi) in ranges.items():
            values = np.array([d[name] for d in draws])
            assert np.all((lo <= values) & (values <= hi))
            assert values.std() > 0.2 * (hi - lo) / math.sqrt(12)  # actually spread over the range
    assert family.sample_params("ood", np.random.default_rng(5)) == family.sample_params(
        "ood", np.random.default_rng(5))
    assert make_family("quantum", fock_dim=12, alpha_range=(0.5, 1.5)).fock_dim == 12


@pytest.mark.slow
def test_record_mean_is_scaled_hidden_quadrature():
    """E[I_k] = √(2ηγ(n̄+1))·⟨x⟩(t_k), E[Q_k] = √(2ηγ(n̄+1))·⟨p⟩(t_k), noise std √(2/dt).

    Least-squares slope of the record on that predicted mean, pooled over M
    records. Its noise is independent of ⟨x⟩(t_k) (Itô), so the slope is unbiased
    with standard error √(2/dt / Σ s²) ≈ 1/(|α|√(M η (n̄+1))) when the records run
    until the mode has decayed; γ = 1 makes that 5 time units. With |α| = 2.5,
    M = 100 it is ≈ 0.03, so the 15 % band is ≈ 5 standard errors (checked below).
    """
    family = OpenQuantumSystem(fock_dim=16, gamma=1.0, alpha_range=(2.5, 2.5))
    params = {"omega": 1.0, "kappa": 0.1, "epsilon": 0.005, "nbar": 0.5, "eta": 1.0}
    scale = family.signal_scale(params)
    assert scale == pytest.approx(2 * math.sqrt(params["eta"] * 1.0 * (params["nbar"] + 1)) / math.sqrt(2))
    rng = np.random.default_rng(2024)
    trajs = [family.simulate(params, 50, rng) for _ in range(100)]
    noise_var = 2.0 / family.dt
    for col, key in ((0, "hidden_x"), (1, "hidden_p")):
        record = np.concatenate([t.states[:, col] for t in trajs])
        signal = scale * np.concatenate([t.extras[key] for t in trajs])
        slope = record @ signal / (signal @ signal)
        stderr = math.sqrt(noise_var / (signal @ signal))
        assert stderr < 0.04, f"test lacks power: slope standard error {stderr:.3f}"
        assert slope == pytest.approx(1.0, abs=0.15), f"{key}: slope {slope:.3f} (se {stderr:.3f})"
        # The residual is the noise plus the small change of the mean inside the interval
        # (drift, backaction): 1-4 % above √(2/dt) here; a wrong noise scale would be ≥ 40 % off.
        residual = record - signal
        assert residual.std() == pytest.approx(math.sqrt(noise_var), rel=0.08)
        assert np.corrcoef(record, signal)[0, 1] > 0.1  # noise dominates single samples


def test_free_mode_decays_at_half_gamma_for_any_efficiency():
    """κ = ε = n̄ = 0: a coherent state stays coherent, ⟨a⟩ = α e^{-(iω + γ/2)t} whatever η
    is (the unmonitored √(1-η)·L1 and the monitored √η·L1 add up to L1)."""
    family = OpenQuantumSystem(fock_dim=16, alpha_range=(2.0, 2.0))
    for eta in (0.3, 1.0):
        params = {"omega": 1.3, "kappa": 0.0, "epsilon": 0.0, "nbar": 0.0, "eta": eta}
        traj = family.simulate(params, 200, np.random.default_rng(1))
        alpha = complex(*traj.extras["alpha"])
        exact = alpha * np.exp(-(1j * params["omega"] + 0.05) * traj.times)
        hidden = (traj.extras["hidden_x"] + 1j * traj.extras["hidden_p"]) / math.sqrt(2)
        np.testing.assert_allclose(hidden, exact, rtol=0, atol=0.02)
        np.testing.assert_allclose(traj.extras["hidden_n"], np.abs(exact) ** 2, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("call, match", [
    (lambda f: f.param_ranges("test"), "unknown split"),
    (lambda f: f.sample_params("validation", np.random.default_rng(0)), "unknown split"),
    (lambda f: f.simulate({**TRAIN_MID, "omega": 2.0}, 5, np.random.default_rng(0)), "omega"),
    (lambda f: f.simulate({**TRAIN_MID, "eta": 0.1}, 5, np.random.default_rng(0)), "eta"),
    (lambda f: f.simulate({k: v for k, v in TRAIN_MID.items() if k != "nbar"}, 5,
                          np.random.default_rng(0)), "missing"),
    (lambda f: f.simulate({**TRAIN_MID, "gamma": 0.1}, 5, np.random.default_rng(0)), "unknown"),
    (lambda f: f.simulate(TRAIN_MID, 0, np.random.default_rng(0)), "steps"),
    (lambda f: f.simulate(TRAIN_MID, -3, np.random.default_rng(0)), "steps"),
    (lambda f: f.simulate(TRAIN_MID, 2.5, np.random.default_rng(0)), "steps"),
])
def test_bad_calls_raise(small, call, match):
    with pytest.raises(MetaSymError, match=match):
        call(small)


@pytest.mark.parametrize("kwargs, match", [
    ({"fock_dim": 2}, "fock_dim"), ({"fock_dim": 20.0}, "fock_dim"), ({"fock_dim": True}, "fock_dim"),
    ({"gamma": 0.0}, "gamma"), ({"gamma": float("nan")}, "gamma"), ({"dt": -0.1}, "dt"),
    ({"substeps": 0}, "substeps"), ({"alpha_range": (2.0, 1.0)}, "alpha_range"),
    ({"alpha_range": 1.0}, "alpha_range"), ({"fock_dim": 8}, "alpha_range"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(MetaSymError, match=match):
        OpenQuantumSystem(**kwargs)
