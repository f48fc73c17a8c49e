"""Open quantum system under continuous heterodyne detection (METHOD §6), via QuTiP 5.

One bosonic mode in a Fock space of dimension N (`fock_dim`, default 20):

    H  = ω a†a + (κ/2)(a†² + a²) + ε (a + a†)³
    L1 = √(γ(n̄+1)) a   (loss to a thermal bath),   L2 = √(γ n̄) a†   (thermal excitation)

with γ fixed per family (`gamma`, default 0.1). The output field of L1 is
heterodyned with efficiency η. QuTiP has no η, so the monitored part √η·L1 is the
stochastic operator and the unmonitored rest √(1-η)·L1 (plus L2) are ordinary
collapse operators; the unconditional dynamics are then independent of η.

Observed state (what models see): the heterodyne record (I, Q) as a (q, p)-like
pair, `states[k] = (I_k, Q_k)` = the record averaged over [t_k, t_{k+1}). With
c = √(ηγ(n̄+1))·a, QuTiP's record is I = ⟨c + c†⟩ + √2·dW_I/dt and
Q = ⟨-i(c - c†)⟩ + √2·dW_Q/dt, so

    E[I_k] ≈ 2√(ηγ(n̄+1))·Re⟨a⟩(t_k) = √(2ηγ(n̄+1))·hidden_x[k],   std(noise) = √(2/dt) ≈ 4.47,

and likewise Q with Im⟨a⟩ / hidden_p. QuTiP's `store_measurement="middle"` takes the
record's mean part as the mean of ⟨c + c†⟩ at t_k and t_{k+1} (the trapezoid of the
integrated record). The quantum state is never observed.
Diagnostics in `extras` (never model input): `hidden_x` = ⟨x⟩, `hidden_p` = ⟨p⟩ of
the conditional state at t_k, the start of interval k, with x = (a + a†)/√2,
p = -i(a - a†)/√2 (so ⟨a⟩ = (⟨x⟩ + i⟨p⟩)/√2); `hidden_n` = ⟨a†a⟩ at t_k; `alpha`
= (Re α, Im α). Given the record before t_k, E[I_k] = √(2ηγ(n̄+1))·hidden_x[k] up
to the O(ω dt) drift inside the interval. (The value at t_{k+1}, hence any
interval mean, already carries the backaction of the interval's own noise: for
mixed states, regressing I_k on it overestimates the scale by 10-20 % at n̄ = 0.5, η = 1.)

Chosen values (METHOD leaves them open):
- Initial coherent state |α⟩, |α| ~ U[0.5, 2], arg α ~ U[0, 2π), both splits:
  at least some signal, and ⟨n⟩ ≤ 4 keeps N = 20 adequate (at the corners of the
  ranges the top two Fock levels hold ≲ 2 % population; N = 30 moves ⟨a⟩ by
  ≲ 0.1, far below the record noise).
- Parameters: train ω ∈ [0.8, 1.2], κ ∈ [0, 0.2], ε ∈ [0, 0.01], n̄ ∈ [0, 0.5],
  η ∈ [0.5, 1]; OOD ω ∈ [1.2, 1.5], κ ∈ [0.2, 0.3], ε ∈ [0.01, 0.02] (chosen:
  the next interval up, as for the other parameters), n̄ ∈ [0.5, 1], η ∈ [0.3, 0.5].
  κ/ω ≤ 0.25 everywhere, so the squeezed oscillator stays stable.
- Record step dt = 0.1 (regular): ≥ 42 samples per period (ω ≤ 1.5), per-sample
  noise √(2/dt) ≈ 4.5 instead of 6.3 at dt = 0.05, and a 30-step context window
  spans half an oscillation. A coarser record is the block average of a finer
  one, so no information is lost beyond an averaging of the oscillation by
  sinc(ω dt/2) ≥ 0.996.
- Solver: QuTiP's default explicit Platen scheme with `substeps` internal steps
  per record step. Its stability needs dt_int·S small, S = spread of H's
  spectrum + γ(2n̄+1)(N-1) (the stiffest coherence): at ω = 1.5, κ = 0.3,
  ε = 0.02 (spectral spread ≈ 38) records diverge at dt_int = 0.025 and, with
  n̄ = 0, mostly at 0.02; 0.0125 is stable. `substeps=None` (default) picks per
  system the least count with dt_int·S ≤ 0.25 (2-3× margin): 7-18 at N = 20,
  dt = 0.1 (checked: all 64 range corners at |α| = 2, two seeds each). Rouchon's
  positivity-preserving scheme was far off the master equation at these steps.
  The ensemble mean of ⟨a⟩, ⟨a†a⟩ matches `mesolve` within sampling error.
- Sizes: 50 train / 10 OOD systems × 500 steps (t ∈ [0, 50) = 5/γ: the coherent
  amplitude decays as e^{-γt/2} to 8 %, later records are almost pure noise).
  One default system takes ≈ 0.3 s (train) / 0.45 s (OOD, more substeps) on one
  core of the 2-core dev machine, up to 2× that under load, so the default train
  set generates in well under a minute (budget 300 s). The count follows the
  paper's 25-30 systems of the other families and downstream training cost, not
  generation time.

Determinism: all randomness comes from the `rng` passed in: α first, then a
SeedSequence for QuTiP's Wiener process (one trajectory per system).
"""

from __future__ import annotations

import math

import numpy as np
import qutip

from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SystemFamily, Trajectory

_TRAIN = {"omega": (0.8, 1.2), "kappa": (0.0, 0.2), "epsilon": (0.0, 0.01), "nbar": (0.0, 0.5),
          "eta": (0.5, 1.0)}
_OOD = {"omega": (1.2, 1.5), "kappa": (0.2, 0.3), "epsilon": (0.01, 0.02), "nbar": (0.5, 1.0),
        "eta": (0.3, 0.5)}
DEFAULT_GAMMA = 0.1  # loss rate γ of the family (an option, recorded in each dataset's metadata)
# Largest internal step × stiffness S accepted by the automatic substep count (see module doc).
STIFFNESS_STEP = 0.25


def _positive(name: str, value: float) -> float:
    """`value` as a finite float > 0, else MetaSymError naming `name`."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0.0:
        raise MetaSymError(f"quantum {name} must be a finite number > 0, got {value!r}")
    return out


def _signal_scale(eta, gamma, nbar):
    """√(2ηγ(n̄+1)): the record's mean over the conditional quadrature (module doc); floats or arrays."""
    return np.sqrt(2.0 * np.asarray(eta) * gamma * (np.asarray(nbar) + 1.0))


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class OpenQuantumSystem(SystemFamily):
    """Heterodyne record of a damped, squeezed, cubic oscillator; see the module docstring."""

    name = "quantum"
    version = "1"
    state_dim = 2
    control_dim = 0
    state_names = ["I", "Q"]
    control_names: list[str] = []
    units = {"time": "1 (ω ≈ 1)", "I": "time^-1/2", "Q": "time^-1/2", "omega": "rad/time",
             "kappa": "rad/time", "epsilon": "rad/time", "nbar": "1", "eta": "1", "gamma": "1/time"}
    default_systems = {"train": 50, "ood": 10}
    default_steps = 500

    def __init__(self, fock_dim: int = 20, gamma: float = DEFAULT_GAMMA, dt: float = 0.1, substeps: int | None = None,
                 alpha_range: tuple[float, float] = (0.5, 2.0)):
        if not _is_int(fock_dim) or fock_dim < 3:
            raise MetaSymError(f"quantum fock_dim must be an integer >= 3, got {fock_dim!r}")
        if substeps is not None and (not _is_int(substeps) or substeps < 1):
            raise MetaSymError(f"quantum substeps must be a positive integer or None (automatic), "
                               f"got {substeps!r}")
        self.fock_dim = int(fock_dim)
        self.gamma = _positive("gamma", gamma)
        self.dt = _positive("dt", dt)
        self.substeps = None if substeps is None else int(substeps)
        try:
            lo, hi = (float(v) for v in alpha_range)
        except (TypeError, ValueError):
            raise MetaSymError(f"quantum alpha_range must be two numbers (lo, hi), "
                               f"got {alpha_range!r}") from None
        if not (math.isfinite(hi) and 0.0 <= lo <= hi):
            raise MetaSymError(f"quantum alpha_range must satisfy 0 <= lo <= hi, got {alpha_range!r}")
        # A coherent state's photon number is Poisson(|α|²): keep mean + 3 std inside the Fock space.
        if hi * hi + 3.0 * hi > self.fock_dim - 1:
            raise MetaSymError(f"quantum alpha_range upper bound {hi:g} does not fit "
                               f"fock_dim={self.fock_dim} (need |α|² + 3|α| <= fock_dim - 1)")
        self.alpha_range = (lo, hi)

    def options(self) -> dict:
        return {"fock_dim": self.fock_dim, "gamma": self.gamma, "dt": self.dt, "substeps": self.substeps,
                "alpha_range": list(self.alpha_range), "method": "platen",
                "stiffness_step": STIFFNESS_STEP}

    def param_ranges(self, split: str) -> dict[str, tuple[float, float]]:
        return dict(_TRAIN if self.check_split(split) == "train" else _OOD)

    # -- physics ----------------------------------------------------------------------

    def operators(self, params: dict[str, float]) -> tuple[qutip.Qobj, list[qutip.Qobj], list[qutip.Qobj]]:
        """(H, c_ops, sc_ops): √η·L1 is monitored, √(1-η)·L1 and L2 are not."""
        a = qutip.destroy(self.fock_dim)
        x = a + a.dag()
        H = params["omega"] * a.dag() * a + 0.5 * params["kappa"] * (a.dag() ** 2 + a**2) \
            + params["epsilon"] * x**3
        L1 = math.sqrt(self.gamma * (params["nbar"] + 1.0)) * a
        eta = params["eta"]
        c_ops = [math.sqrt(1.0 - eta) * L1] if eta < 1.0 else []
        if params["nbar"] > 0.0:
            c_ops.append(math.sqrt(self.gamma * params["nbar"]) * a.dag())
        return H, c_ops, [math.sqrt(eta) * L1]

    def auto_substeps(self, params: dict[str, float], H: qutip.Qobj) -> int:
        """Least substep count with (dt/substeps)·S <= STIFFNESS_STEP (Platen stability)."""
        energies = np.linalg.eigvalsh(H.full())
        damping = self.gamma * (2.0 * params["nbar"] + 1.0) * (self.fock_dim - 1)
        stiffness = energies[-1] - energies[0] + damping
        return max(1, math.ceil(self.dt * stiffness / STIFFNESS_STEP))

    def signal_scale(self, params: dict[str, float]) -> float:
        """E[I_k] / hidden_x[k] = E[Q_k] / hidden_p[k] = √(2ηγ(n̄+1))."""
        return float(_signal_scale(params["eta"], self.gamma, params["nbar"]))

    @classmethod
    def noise_free_states(cls, ds) -> np.ndarray:
        """The record's mean given the record before each frame, `[N, T, 2]`: √(2ηγ(n̄+1))·(hidden_x, hidden_p).

        Each frame is that plus white noise of variance ≈ 2/dt, so it is also what the best predictor of the
        frame can know (and what Table 1 scores against beside the raw record)."""
        if "hidden_x" not in ds.extras or "hidden_p" not in ds.extras:
            raise MetaSymError(f"{ds.family} dataset has no hidden_x / hidden_p extras: its noise-free record is "
                               "unknown (regenerate it with `metasym generate`)")
        gamma = float(ds.metadata.get("options", {}).get("gamma", DEFAULT_GAMMA))
        names = ds.param_names
        eta, nbar = ds.params[:, names.index("eta")], ds.params[:, names.index("nbar")]
        scale = _signal_scale(eta, gamma, nbar)[:, None, None]
        return scale * np.stack([ds.extras["hidden_x"], ds.extras["hidden_p"]], axis=-1)

    def simulate(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        """One heterodyne trajectory: `steps` record samples (I, Q) at times k·dt."""
        params = self.check_params(params)
        steps = self.check_steps(steps)
        lo, hi = self.alpha_range
        alpha = rng.uniform(lo, hi) * np.exp(1j * rng.uniform(0.0, 2.0 * np.pi))
        noise_seed = np.random.SeedSequence(rng.integers(0, 2**63, size=2).tolist())

        H, c_ops, sc_ops = self.operators(params)
        substeps = self.substeps or self.auto_substeps(params, H)
        a = qutip.destroy(self.fock_dim)
        tlist = self.dt * np.arange(steps + 1, dtype=np.float64)  # steps intervals -> steps samples
        rho0 = qutip.ket2dm(qutip.coherent(self.fock_dim, alpha))
        result = qutip.smesolve(
            H, rho0, tlist, c_ops=c_ops, sc_ops=sc_ops, heterodyne=True, e_ops=[a, a.dag() * a],
            ntraj=1, seeds=[noise_seed],
            options={"store_measurement": "middle", "progress_bar": "", "method": "platen",
                     "dt": self.dt / substeps},
        )
        # [ntraj=1, n_sc_ops=1, 2, steps]; complex whenever QuTiP's Hermiticity test of the measured
        # operator fails on round-off at some step (imaginary parts ~1e-16), so keep the real part.
        record = np.real(np.asarray(result.measurement))
        states = np.ascontiguousarray(record[0, 0].T, dtype=np.float64)
        mean_a = np.asarray(result.expect[0], dtype=np.complex128)[:-1]  # at t_k, before interval k
        photons = np.real(np.asarray(result.expect[1]))
        if not (np.isfinite(states).all() and np.isfinite(photons).all()
                and photons.max() <= self.fock_dim):
            raise MetaSymError(f"quantum SME integration diverged for {params} with {substeps} substeps; "
                               f"pass a larger substeps")
        return Trajectory(
            params=params, times=tlist[:-1].copy(), states=states, controls=np.zeros((steps, 0)),
            extras={"hidden_x": math.sqrt(2.0) * mean_a.real, "hidden_p": math.sqrt(2.0) * mean_a.imag,
                    "hidden_n": photons[:-1], "alpha": np.array([alpha.real, alpha.imag])},
        )
