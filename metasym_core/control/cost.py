"""The quadrotor's reference-tracking cost over predicted stored states, for sampling MPC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metasym_core.control.reference import FigureEight
from metasym_core.systems.quadrotor import pose_terms


@dataclass(frozen=True)
class TrackingWeights:
    """Weights of the terms of `tracking_cost` (per predicted step; the last step counts `terminal`×)."""

    position: float = 10.0  # ‖p − p_ref‖² [m²]
    velocity: float = 0.5  # ‖R v_body − v_ref‖² [(m/s)²]
    attitude: float = 1.0  # 3 − trace(R): tilt and heading away from level, heading 0
    rates: float = 0.05  # ‖ω_body‖² [(rad/s)²]
    thrust: float = 0.01  # ‖u − hover‖² [N²]
    terminal: float = 5.0
    floor: float = 0.1  # [m]: predicted states below it cost `crash`
    crash: float = 1e4


def tracking_cost(states: np.ndarray, controls: np.ndarray, reference: FigureEight, t0: float, dt: float,
                  hover: float, weights: TrackingWeights | None = None) -> np.ndarray:
    """Cost [K] of predicted states [K, H, 12] (state h at t0 + (h + 1)·dt) under controls [K, H, 4]."""
    weights = weights or TrackingWeights()
    K, H, _ = states.shape
    times = t0 + dt * np.arange(1, H + 1)
    p, v_world, tilt = pose_terms(states)
    ref_p, ref_v = reference.position(times), reference.velocity(times)  # [H, 3]
    u = np.moveaxis(np.asarray(controls, dtype=np.float64), -1, 0) - hover
    rates = np.moveaxis(np.asarray(states, dtype=np.float64)[..., 9:12], -1, 0)
    per_step = weights.attitude * tilt + weights.crash * (p[2] < weights.floor)
    for i in range(3):
        per_step += (weights.position * (p[i] - ref_p[:, i]) ** 2 + weights.velocity * (v_world[i] - ref_v[:, i]) ** 2
                     + weights.rates * rates[i] ** 2)
    per_step += weights.thrust * np.sum(u * u, axis=0)
    per_step[:, -1] *= weights.terminal
    return per_step.sum(axis=1)
