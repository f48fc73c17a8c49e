"""2-D spring mesh (Otness et al. 2021), METHOD §6.

Nodes sit on an integer grid; every pair of nodes at Chebyshev distance 1 is
joined by a spring (10×10: 342 springs) whose rest length is the initial grid
distance; the top row is fixed. Node force `-k(|d| - L0) d/|d|` per spring plus
damping `-γ q̇` (none in the conservative ablation `damped=False`), mass `m`.

State layout (q, p): q = node positions flattened node by node
(x_0, y_0, x_1, y_1, ...; node n = row·grid + column, row 0 at the bottom, the
fixed top row included), p = m·velocity in the same order; 10×10 → 400-D.

Ground truth: a linearly implicit (linearised backward) θ-scheme with fine
substeps. One substep of length h solves, over the free coordinates
(10×10: 180 unknowns),

    (m + θhγ - θ²h² K) Δv = h (F - γ v + θ h K v),    Δq = h (v + θ Δv),

with K = ∂F/∂q the stiffness Jacobian, assembled as a scipy.sparse matrix every
substep from index arrays (no Python loop over springs or nodes) and solved by
sparse conjugate gradients (the matrix is ≈ m·I at these step sizes; sparse LU
if CG does not converge). θ = 1 is linearised backward Euler (Baraff & Witkin);
it damps every mode numerically at a rate ≈ hω², which over 2000 frames removes
7–27 % of an undamped mesh's energy at 1–4 substeps. The default θ = 1/2 (the
linearly implicit trapezoidal rule) has no numerical damping — it is exactly
energy-conserving on the linearised dynamics — so the undamped ablation stays
conservative (drift < 1e-4 over 2000 frames) and the damped mesh loses energy
through γ only. Default: 4 equal substeps per frame.

Frames: step h_t = dt·(1 + jitter·U[-1, 1]), dt = 0.00781, jitter = 0.1, i.e.
h_t uniform in [0.00703, 0.00859] (irregular sampling; times[0] = 0).
Initial condition: every free node displaced by exactly `radius` in a uniform
random direction, all nodes at rest.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SystemFamily, Trajectory

_TRAIN = {"k": (0.8, 1.2), "m": (0.8, 1.2), "gamma": (0.05, 0.15), "radius": (0.0, 0.35)}
_OOD = {"k": (1.2, 1.5), "m": (1.2, 1.5), "gamma": (0.15, 0.25), "radius": (0.35, 0.45)}
# Neighbour offsets (row, column) that give each Chebyshev-distance-1 pair once.
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
# Sign of each of the 4 node-pair blocks of one spring's Jacobian: (a,a), (a,b), (b,a), (b,b).
_BLOCK_SIGNS = np.array([1.0, -1.0, -1.0, 1.0])


class _MeshOperator:
    """Fixed topology of a grid: springs, free coordinates, the sparse pattern of K."""

    def __init__(self, grid: int):
        n_nodes = grid * grid
        row, col = np.divmod(np.arange(n_nodes), grid)
        self.rest_positions = np.stack([col, row], axis=1).astype(np.float64)
        pairs = []
        for dr, dc in _OFFSETS:
            r2, c2 = row + dr, col + dc
            ok = (r2 < grid) & (c2 >= 0) & (c2 < grid)
            pairs.append(np.stack([np.flatnonzero(ok), (r2 * grid + c2)[ok]], axis=1))
        self.springs = np.concatenate(pairs)  # [E, 2] node indices (a, b)
        a, b = self.springs.T
        n_springs = len(a)
        self.rest_lengths = np.linalg.norm(self.rest_positions[a] - self.rest_positions[b], axis=1)
        self.fixed_nodes = np.flatnonzero(row == grid - 1)
        self.free_nodes = np.flatnonzero(row != grid - 1)
        # Coordinates: dof = 2·node + axis; only the free ones are unknowns.
        free_index = -np.ones(2 * n_nodes, dtype=np.int64)
        self.free_dofs = (2 * self.free_nodes[:, None] + np.arange(2)).ravel()
        free_index[self.free_dofs] = np.arange(len(self.free_dofs))
        self.n_free = len(self.free_dofs)
        # Every spring adds ±H_e to the 4 node-pair blocks (a,a), (a,b), (b,a), (b,b): 16 entries
        # per spring, listed [16, E]; keep those coupling two free coordinates.
        rows, cols, signs, h_rows = [], [], [], []
        for sign, (ni, nj) in zip(_BLOCK_SIGNS, ((a, a), (a, b), (b, a), (b, b)), strict=True):
            for ax_i in range(2):
                for ax_j in range(2):
                    rows.append(free_index[2 * ni + ax_i])
                    cols.append(free_index[2 * nj + ax_j])
                    signs.append(np.full(n_springs, sign))
                    h_rows.append(np.full(n_springs, 2 * ax_i + ax_j))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        keep = (rows >= 0) & (cols >= 0)
        self._sign = np.concatenate(signs)[keep]
        # H is laid out [4, E] (xx, xy, yx, yy): flat index of each kept contribution.
        self._h_index = (np.concatenate(h_rows) * n_springs + np.tile(np.arange(n_springs), 16))[keep]
        rows, cols = rows[keep], cols[keep]
        diag = np.arange(self.n_free)
        # CSC order (column, then row); `_slot` sends each contribution to its data index.
        keys = np.r_[cols, diag] * self.n_free + np.r_[rows, diag]
        unique_keys, slot = np.unique(keys, return_inverse=True)
        self.nnz = len(unique_keys)
        self._slot, self._diag_slot = slot[: len(rows)], slot[len(rows):]
        self.indices = (unique_keys % self.n_free).astype(np.int32)
        self.indptr = np.searchsorted(unique_keys // self.n_free, np.arange(self.n_free + 1)).astype(np.int32)
        # Scatter a per-spring vector g: +g onto node a, -g onto node b.
        self._ax, self._ay, self._bx, self._by = 2 * a, 2 * a + 1, 2 * b, 2 * b + 1
        self._scatter = np.concatenate([self._ax, self._ay, self._bx, self._by])

    def differences(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per spring x_a - x_b of a flat node vector x [2·n_nodes] as (dx, dy) [E]."""
        return x[self._ax] - x[self._bx], x[self._ay] - x[self._by]

    def spring_geometry(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per spring: length [E] and unit direction (nx, ny) [E] of d = x_a - x_b."""
        dx, dy = self.differences(x)
        length = np.sqrt(dx * dx + dy * dy)
        if length.min() < 1e-9:
            raise MetaSymError("spring mesh collapsed: a spring reached zero length")
        return length, dx / length, dy / length

    def stiffness_blocks(self, length: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
        """H_e = (1 - L0/l) I + (L0/l) n nᵀ per spring as [4, E] (xx, xy, yx, yy); K = -k Σ Bᵀ H B."""
        ratio = self.rest_lengths / length
        c = 1.0 - ratio
        H = np.empty((4, len(length)))
        H[0] = c + ratio * nx * nx
        H[1] = ratio * nx * ny
        H[2] = H[1]
        H[3] = c + ratio * ny * ny
        return H

    def scatter(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Dᵀ g over the free coordinates: +g on node a, -g on node b of every spring -> [n_free]."""
        full = np.bincount(self._scatter, weights=np.concatenate([gx, gy, -gx, -gy]),
                           minlength=2 * len(self.rest_positions))
        return full[self.free_dofs]

    def system_matrix(self, H: np.ndarray, scale: float, diag: float,
                      out: sparse.csc_matrix | None = None) -> sparse.csc_matrix:
        """diag·I + scale·Σ_e Bᵀ H_e B restricted to the free coordinates (CSC, symmetric).

        With `out` (a matrix this method returned before) its values are overwritten in place.
        """
        values = self._sign * H.ravel().take(self._h_index)
        data = np.bincount(self._slot, weights=values, minlength=self.nnz)
        data *= scale
        data[self._diag_slot] += diag
        if out is not None:
            out.data[:] = data
            return out
        return sparse.csc_matrix((data, self.indices.copy(), self.indptr.copy()),
                                 shape=(self.n_free, self.n_free))


def _solve_spd(A: sparse.csc_matrix, rhs: np.ndarray, guess: np.ndarray, rtol: float = 1e-13,
               maxiter: int = 50) -> np.ndarray:
    """Solve A x = rhs for the symmetric system matrix by conjugate gradients (A ≈ m·I at
    these step sizes, so 2–3 iterations reach round-off); sparse LU if CG does not converge."""
    x = guess.copy()
    r = rhs - A @ x
    p = r.copy()
    rr = r @ r
    stop = (rtol * np.sqrt(rhs @ rhs)) ** 2
    for _ in range(maxiter):
        if rr <= stop:
            return x
        Ap = A @ p
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr, rr_old = r @ r, rr
        p *= rr / rr_old
        p += r
    if rr <= stop:
        return x
    return sparse_linalg.splu(A, permc_spec="NATURAL").solve(rhs)


def _number(name: str, value: object, lo: float, hi: float, low_open: bool = False,
            high_open: bool = False) -> float:
    """A float option within [lo, hi] (ends optionally open), else a one-line error."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    ok = (lo < x if low_open else lo <= x) and (x < hi if high_open else x <= hi)
    if not ok:
        brackets = ("(" if low_open else "[") + f"{lo:g}, {hi:g}" + (")" if high_open else "]")
        raise MetaSymError(f"spring_mesh {name} must be a number in {brackets}, got {value!r}")
    return x


class SpringMesh(SystemFamily):
    """Square spring mesh with a fixed top row; see the module docstring."""

    name = "spring_mesh"
    version = "1"
    default_systems = {"train": 25, "ood": 10}
    default_steps = 2000
    control_dim = 0
    control_names: list[str] = []

    def __init__(self, grid: int = 10, damped: bool = True, substeps: int = 4, dt: float = 0.00781,
                 jitter: float = 0.1, theta: float = 0.5):
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 2:
            raise MetaSymError(f"spring_mesh grid must be an integer >= 2, got {grid!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or substeps < 1:
            raise MetaSymError(f"spring_mesh substeps must be a positive integer, got {substeps!r}")
        if not isinstance(damped, (bool, np.bool_)):
            raise MetaSymError(f"spring_mesh damped must be true or false, got {damped!r}")
        self.dt = _number("dt", dt, 0.0, np.inf, low_open=True, high_open=True)
        self.jitter = _number("jitter", jitter, 0.0, 1.0, high_open=True)
        self.theta = _number("theta", theta, 0.5, 1.0)
        self.grid, self.damped, self.substeps = int(grid), bool(damped), int(substeps)
        self.mesh = _MeshOperator(self.grid)
        self._matrix: sparse.csc_matrix | None = None  # reused system matrix (fixed sparsity)
        n_nodes = self.grid * self.grid
        self.state_dim = 4 * n_nodes
        cells = [f"r{r}c{c}" for r in range(self.grid) for c in range(self.grid)]
        self.state_names = ([f"{ax}_{cell}" for cell in cells for ax in ("x", "y")]
                            + [f"p{ax}_{cell}" for cell in cells for ax in ("x", "y")])
        self.units = {"time": "s", "q": "m", "p": "kg m/s", "k": "N/m", "m": "kg", "gamma": "kg/s",
                      "radius": "m"}

    def options(self) -> dict:
        return {"grid": self.grid, "damped": self.damped, "substeps": self.substeps, "dt": self.dt,
                "jitter": self.jitter, "theta": self.theta}

    @property
    def n_springs(self) -> int:
        return len(self.mesh.springs)

    def param_ranges(self, split: str) -> dict[str, tuple[float, float]]:
        ranges = dict(_TRAIN if self.check_split(split) == "train" else _OOD)
        if not self.damped:
            del ranges["gamma"]
        return ranges

    def sample_params(self, split: str, rng: np.random.Generator) -> dict[str, float]:
        """Uniform draws; γ is drawn (then dropped) even when undamped, so that the
        damped and undamped meshes of one seed share k, m and the initial condition."""
        full = dict(_TRAIN if self.check_split(split) == "train" else _OOD)
        draws = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in full.items()}
        if not self.damped:
            del draws["gamma"]
        return draws

    def initial_state(self, params: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        """Grid positions with every free node moved by `radius` in a uniform random direction."""
        X = self.mesh.rest_positions.copy()
        angle = rng.uniform(0.0, 2.0 * np.pi, size=len(self.mesh.free_nodes))
        X[self.mesh.free_nodes] += params["radius"] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return X

    def simulate(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        params = self.check_params(params)
        steps = self.check_steps(steps)
        k, m = params["k"], params["m"]
        gamma = params["gamma"] if self.damped else 0.0
        x = self.initial_state(params, rng).ravel()
        v = np.zeros_like(x)
        h = self.dt * (1.0 + self.jitter * rng.uniform(-1.0, 1.0, size=steps - 1))
        times = np.concatenate([[0.0], np.cumsum(h)])
        states = np.empty((steps, self.state_dim))
        half = self.state_dim // 2
        states[0, :half], states[0, half:] = x, m * v
        for j in range(steps - 1):
            sub = h[j] / self.substeps
            for _ in range(self.substeps):
                self.substep(x, v, sub, k, m, gamma)
            states[j + 1, :half], states[j + 1, half:] = x, m * v
        return Trajectory(params=params, times=times, states=states, controls=np.zeros((steps, 0)),
                          extras={"energy": self.energy(states, params)})

    def substep(self, x: np.ndarray, v: np.ndarray, h: float, k: float, m: float, gamma: float) -> None:
        """Advance flat positions x and velocities v [2·n_nodes] in place by one θ-step of length h."""
        mesh, theta = self.mesh, self.theta
        length, nx, ny = mesh.spring_geometry(x)
        H = mesh.stiffness_blocks(length, nx, ny)
        dvx, dvy = mesh.differences(v)
        # F + θh K v = -Dᵀ(k s n + θhk H Δv) over the free coordinates (s = stretch, Δv = v_a - v_b).
        tension, c = k * (length - mesh.rest_lengths), theta * h * k
        gx = tension * nx + c * (H[0] * dvx + H[1] * dvy)
        gy = tension * ny + c * (H[2] * dvx + H[3] * dvy)
        v_free = v[mesh.free_dofs]
        rhs = h * (-mesh.scatter(gx, gy) - gamma * v_free)
        diag = m + theta * h * gamma
        A = self._matrix = mesh.system_matrix(H, (theta * h) ** 2 * k, diag, out=self._matrix)
        delta_v = _solve_spd(A, rhs, rhs / diag)
        x[mesh.free_dofs] += h * (v_free + theta * delta_v)
        v[mesh.free_dofs] = v_free + delta_v

    def energy(self, states: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Kinetic plus spring potential energy of states [..., D] -> [...]."""
        states = np.asarray(states, dtype=np.float64)
        if states.shape[-1] != self.state_dim:
            raise MetaSymError(f"spring_mesh energy: expected {self.state_dim}-D states, got {states.shape}")
        n_nodes = self.grid * self.grid
        q = states[..., : 2 * n_nodes].reshape(*states.shape[:-1], n_nodes, 2)
        p = states[..., 2 * n_nodes:]
        a, b = self.mesh.springs.T
        length = np.linalg.norm(q[..., a, :] - q[..., b, :], axis=-1)
        potential = 0.5 * params["k"] * ((length - self.mesh.rest_lengths) ** 2).sum(axis=-1)
        return 0.5 * (p**2).sum(axis=-1) / params["m"] + potential
