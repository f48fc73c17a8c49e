"""Spring mesh ground truth (METHOD §6): topology, physics properties, input checks."""

import time

import numpy as np
import pytest

from metasym_core.errors import MetaSymError
from metasym_core.systems import make_family
from metasym_core.systems.spring_mesh import SpringMesh


def _run(mesh: SpringMesh, split: str, steps: int, seed: int = 0, **overrides: float):
    rng = np.random.default_rng(seed)
    params = {**mesh.sample_params(split, rng), **overrides}
    return mesh.simulate(params, steps, rng)


def test_topology_of_default_and_small_grids():
    mesh = make_family("spring_mesh")
    assert isinstance(mesh, SpringMesh)
    assert mesh.n_springs == 342 and mesh.state_dim == 400 and len(mesh.state_names) == 400
    assert mesh.control_dim == 0 and mesh.default_systems == {"train": 25, "ood": 10}
    assert mesh.default_steps == 2000
    assert SpringMesh(grid=3).n_springs == 2 * 3 * 2 + 2 * 2 * 2
    # top row (largest y) is fixed; rest lengths are 1 (axis) or sqrt(2) (diagonal)
    assert np.all(mesh.mesh.rest_positions[mesh.mesh.fixed_nodes, 1] == 9)
    assert set(np.round(mesh.mesh.rest_lengths, 12)) == {1.0, round(np.sqrt(2), 12)}


def test_stiffness_jacobian_matches_finite_differences():
    op = SpringMesh(grid=4).mesh
    rng = np.random.default_rng(1)
    x = (op.rest_positions + 0.2 * rng.standard_normal(op.rest_positions.shape)).ravel()

    def force(x):  # free-coordinate force for k = 1
        length, nx, ny = op.spring_geometry(x)
        stretch = length - op.rest_lengths
        return -op.scatter(stretch * nx, stretch * ny)

    length, nx, ny = op.spring_geometry(x)
    minus_K = op.system_matrix(op.stiffness_blocks(length, nx, ny), 1.0, 0.0).toarray()
    eps = 1e-6
    fd = np.empty_like(minus_K)
    for col, dof in enumerate(op.free_dofs):
        e = np.zeros_like(x)
        e[dof] = eps
        fd[:, col] = (force(x + e) - force(x - e)) / (2 * eps)
    np.testing.assert_allclose(-minus_K, fd, atol=1e-8)
    np.testing.assert_array_equal(minus_K, minus_K.T)


@pytest.mark.slow
def test_undamped_default_mesh_conserves_energy_over_2000_steps():
    mesh = SpringMesh(grid=10, damped=False)
    assert "gamma" not in mesh.param_ranges("train")
    start = time.perf_counter()
    traj = _run(mesh, "ood", 2000, radius=0.45)  # largest displacement: the most nonlinear case
    elapsed = time.perf_counter() - start
    energy = traj.extras["energy"]
    assert traj.states.shape == (2000, 400)
    assert np.abs(energy / energy[0] - 1).max() < 0.01
    print(f"10x10 mesh, 2000 steps: {elapsed:.2f} s")


def test_undamped_small_mesh_conserves_energy_and_backward_euler_would_not():
    trap = _run(SpringMesh(grid=3, damped=False), "train", 2000, radius=0.35).extras["energy"]
    assert np.abs(trap / trap[0] - 1).max() < 1e-3
    # θ = 1 (plain linearised backward Euler) damps numerically: why θ = 1/2 is the default.
    euler = _run(SpringMesh(grid=3, damped=False, theta=1.0, substeps=1), "train", 2000,
                 radius=0.35).extras["energy"]
    assert euler[-1] < 0.95 * euler[0]


@pytest.mark.parametrize("split", ["train", "ood"])
def test_damped_energy_decreases_every_frame(split):
    mesh = SpringMesh(grid=4)
    extreme = {"gamma": 0.05, "radius": 0.35} if split == "train" else {"radius": 0.45}
    traj = _run(mesh, split, 2000, **extreme)
    energy = traj.extras["energy"]
    np.testing.assert_allclose(energy, mesh.energy(traj.states, traj.params), rtol=1e-12)
    # dE/dt = -γ|v|² < 0 once moving; the scheme keeps that frame by frame (float noise allowance)
    assert np.all(np.diff(energy) <= 1e-12 * energy[0])
    assert energy[-1] < 0.9 * energy[0]


def test_fixed_nodes_never_move_and_start_at_rest():
    mesh = SpringMesh(grid=4)
    traj = _run(mesh, "ood", 300)
    n = mesh.grid**2
    q = traj.states[:, : 2 * n].reshape(-1, n, 2)
    p = traj.states[:, 2 * n:].reshape(-1, n, 2)
    fixed, free = mesh.mesh.fixed_nodes, mesh.mesh.free_nodes
    assert np.all(q[:, fixed] == mesh.mesh.rest_positions[fixed])
    assert np.all(p[:, fixed] == 0)
    # every free node starts displaced by exactly `radius`, at rest, then moves
    shift = np.linalg.norm(q[0, free] - mesh.mesh.rest_positions[free], axis=1)
    np.testing.assert_allclose(shift, traj.params["radius"], rtol=1e-12)
    assert np.all(p[0] == 0) and np.abs(p[-1, free]).max() > 0


def test_irregular_frame_times():
    mesh = SpringMesh(grid=3)
    traj = _run(mesh, "train", 500)
    h = np.diff(traj.times)
    assert traj.times[0] == 0 and np.all(h >= 0.9 * mesh.dt) and np.all(h <= 1.1 * mesh.dt)
    assert h.std() > 0.01 * mesh.dt
    assert traj.controls.shape == (500, 0)


def test_ood_parameters_lie_outside_training_ranges():
    mesh = SpringMesh()
    train, ood = mesh.param_ranges("train"), mesh.param_ranges("ood")
    rng = np.random.default_rng(0)
    draws = [mesh.sample_params("ood", rng) for _ in range(200)]
    for name, (_, hi) in train.items():
        values = np.array([d[name] for d in draws])
        assert ood[name][0] >= hi
        assert np.all(values > hi) and np.all(values <= ood[name][1])


def test_same_generator_state_gives_identical_trajectories():
    mesh = SpringMesh(grid=3)
    a, b = _run(mesh, "train", 200, seed=7), _run(mesh, "train", 200, seed=7)
    assert np.array_equal(a.states, b.states) and np.array_equal(a.times, b.times)
    assert not np.array_equal(a.states, _run(mesh, "train", 200, seed=8).states)


def test_bad_inputs_raise_one_line_errors():
    mesh = SpringMesh(grid=3)
    rng = np.random.default_rng(0)
    good = mesh.sample_params("train", rng)
    with pytest.raises(MetaSymError, match="unknown split"):
        mesh.sample_params("test", rng)
    with pytest.raises(MetaSymError, match="unknown split"):
        mesh.param_ranges("validation")
    for steps in (0, -5, 2.5):
        with pytest.raises(MetaSymError, match="steps"):
            mesh.simulate(good, steps, rng)
    with pytest.raises(MetaSymError, match="k=9 is outside"):
        mesh.simulate({**good, "k": 9.0}, 10, rng)
    with pytest.raises(MetaSymError, match="missing"):
        mesh.simulate({"k": 1.0}, 10, rng)
    with pytest.raises(MetaSymError, match="grid"):
        SpringMesh(grid=1)
    with pytest.raises(MetaSymError, match="unknown system"):
        make_family("pendulum")
    with pytest.raises(MetaSymError, match="bad option"):
        make_family("spring_mesh", size=3)


def test_generation_bench_quick(tmp_path):
    from metasym_core.bench.generate import run_generate_bench

    doc = tmp_path / "benchmarks.md"
    figures = run_generate_bench(["spring_mesh", "no_such_system"], quick=True, doc=doc)
    assert figures["spring_mesh_train_gen_target_s"] == 60.0
    assert figures["spring_mesh_train_gen_s"] > 0 and "no_such_system_train_gen_s" not in figures
    assert "## Dataset generation" in doc.read_text()
