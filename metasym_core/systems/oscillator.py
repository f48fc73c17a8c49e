"""Damped, driven harmonic oscillators: a tiny synthetic family for meta-learning tests.

    q' = p,   p' = -ω² q - 2ζω p + u,   u(t) = A sin(Ω t)   (unit mass)

Each system draws the natural frequency ω, damping ratio ζ, drive amplitude A and
drive frequency Ω; the drive is observed as the control (piecewise constant over
each step, its value at the step's start). Steps are irregular: dt·(1 + U[-j, j]).
Integration: RK4 with `substeps` substeps per stored frame (error ≪ any model's).
Optional Gaussian sensor noise on the stored states. OOD systems are stiffer and
more damped than any training system, so a model must adapt to them.
"""

from __future__ import annotations

import numpy as np

from metasym_core.systems.base import SystemFamily, Trajectory

_RANGES = {
    "train": {"omega": (1.0, 2.0), "zeta": (0.02, 0.10), "drive_amp": (0.0, 0.5), "drive_freq": (0.5, 1.5)},
    "ood": {"omega": (2.2, 2.8), "zeta": (0.10, 0.15), "drive_amp": (0.0, 0.5), "drive_freq": (0.5, 1.5)},
}


class Oscillator(SystemFamily):
    """1-D damped driven oscillator; state (q, p), control u (force)."""

    name = "oscillator"
    state_dim = 2
    control_dim = 1
    state_names = ["q", "p"]
    control_names = ["u"]
    units = {"q": "m", "p": "m/s", "u": "N/kg"}
    version = "1"
    default_systems = {"train": 16, "ood": 4}
    default_steps = 200

    def __init__(self, dt: float = 0.05, jitter: float = 0.1, noise_std: float = 0.0, substeps: int = 4) -> None:
        self.dt, self.jitter, self.noise_std, self.substeps = float(dt), float(jitter), float(noise_std), int(substeps)

    def options(self) -> dict:
        return {"dt": self.dt, "jitter": self.jitter, "noise_std": self.noise_std, "substeps": self.substeps}

    def param_ranges(self, split: str) -> dict[str, tuple[float, float]]:
        return dict(_RANGES[self.check_split(split)])

    def simulate(self, params: dict[str, float], steps: int, rng: np.random.Generator) -> Trajectory:
        params = self.check_params(params)
        steps = self.check_steps(steps)
        w, z, amp, freq = params["omega"], params["zeta"], params["drive_amp"], params["drive_freq"]
        dts = self.dt * (1.0 + rng.uniform(-self.jitter, self.jitter, steps - 1))
        times = np.concatenate([[0.0], np.cumsum(dts)])
        controls = (amp * np.sin(freq * times))[:, None]
        x = np.array([rng.uniform(-1, 1), w * rng.uniform(-1, 1)])

        def f(s: np.ndarray, u: float) -> np.ndarray:
            return np.array([s[1], -w * w * s[0] - 2 * z * w * s[1] + u])

        states = np.empty((steps, 2))
        states[0] = x
        for k in range(steps - 1):
            h, u = dts[k] / self.substeps, controls[k, 0]
            for _ in range(self.substeps):
                k1 = f(x, u)
                k2 = f(x + 0.5 * h * k1, u)
                k3 = f(x + 0.5 * h * k2, u)
                k4 = f(x + h * k3, u)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            states[k + 1] = x
        clean = states.copy()
        if self.noise_std > 0:
            states = states + rng.normal(0.0, self.noise_std, states.shape)
        return Trajectory(params, times, states, controls, {"clean_states": clean})
