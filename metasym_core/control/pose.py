"""Quadrotor poses of stored states ([log6 pose, body twist], 12-D), vectorised for a cost over K×H states.

`systems.quadrotor.position_of` maps one state at a time through Pinocchio; a sampling controller
scores thousands per control period, so this is the same SE(3) exponential in NumPy: for the log
(v, ω), R = exp(ω×) and p = V(ω) v, V = I + (1 − cos θ)/θ² ω× + (θ − sin θ)/θ³ (ω×)². Tested
against Pinocchio to round-off.
"""

from __future__ import annotations

import numpy as np

_SMALL = 1e-6  # below this angle the series of the coefficients is used


def _skew(w: np.ndarray) -> np.ndarray:
    z = np.zeros(w.shape[:-1])
    return np.stack([np.stack([z, -w[..., 2], w[..., 1]], -1),
                     np.stack([w[..., 2], z, -w[..., 0]], -1),
                     np.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def pose_arrays(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions [..., 3], rotations [..., 3, 3]) in the world frame of stored states [..., 12]."""
    states = np.asarray(states, dtype=np.float64)
    v, w = states[..., 0:3], states[..., 3:6]
    theta2 = np.sum(w * w, axis=-1)
    theta = np.sqrt(theta2)
    small = theta < _SMALL
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta2 / 6.0, np.sin(safe) / safe)  # sin θ / θ
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / safe ** 2)  # (1 − cos θ)/θ²
    c = np.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - np.sin(safe)) / safe ** 3)  # (θ − sin θ)/θ³
    W = _skew(w)
    W2 = W @ W
    eye = np.eye(3)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    p = np.einsum("...ij,...j->...i", V, v)
    return p, R
