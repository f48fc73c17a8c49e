"""Energy of spring-mesh rollouts for Table 1 (ablation D.1): fixed coordinates restored, true
energy reproduced, a conservative mesh's energy constant, drift measured."""

import numpy as np
import pytest

from metasym_core.bench.energy import energy_curves, energy_errors, moving_mask
from metasym_core.bench.table1 import drop_constant_coordinates
from metasym_core.errors import MetaSymError
from metasym_core.systems import make_family
from metasym_core.systems.dataset import SystemDataset, generate


@pytest.fixture(scope="module")
def mesh():
    family = make_family("spring_mesh", grid=3, damped=False)
    full = SystemDataset.from_arrays(generate(family, "ood", 2, 80, seed=3, workers=1, progress=False))
    return family, full, drop_constant_coordinates({"train": full, "ood": full})["ood"]


def test_energy_of_the_truth_matches_the_simulator_and_is_conserved(mesh):
    family, full, reduced = mesh
    assert moving_mask(full).sum() == reduced.state_dim < full.state_dim  # the fixed row was dropped
    shots, horizon = 20, 40
    truth = reduced.states[:, shots:shots + horizon]
    hold = np.repeat(reduced.states[:, shots - 1:shots], horizon, axis=1)
    slow = truth.copy()
    slow[..., reduced.state_dim // 2:] *= 0.5  # momenta halved: a quarter of the kinetic energy
    curves = energy_curves(family, full, moving_mask(full), {"copy": truth, "hold": hold, "slow": slow}, shots,
                           horizon)
    np.testing.assert_allclose(curves["truth"], full.extras["energy"][:, shots:shots + horizon], rtol=1e-12)
    np.testing.assert_allclose(curves["copy"], curves["truth"], rtol=1e-12)
    drift = np.abs(curves["truth"] / curves["truth"][:, :1] - 1).max()
    assert drift < 1e-3  # undamped mesh: conserved
    errors = energy_errors(curves)
    assert errors["copy"] == 0.0 and errors["slow"] > 0.05
    assert errors["hold"] < 1e-3  # a held state keeps its energy, and so does this mesh


def test_energy_refuses_predictions_of_the_wrong_size(mesh):
    family, full, reduced = mesh
    with pytest.raises(MetaSymError, match="predictions have shape"):
        energy_curves(family, full, moving_mask(full), {"bad": np.zeros((2, 10, reduced.state_dim + 2))}, 20, 10)
