"""Quadrotor poses of stored states ([log6 pose, twist], 12-D) for path display."""

from __future__ import annotations

import numpy as np


def quadrotor_poses(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions [N, 3], quaternions [N, 4] as x, y, z, w) of states [N, 12] via pinocchio.exp6."""
    import pinocchio as pin

    states = np.asarray(states, dtype=np.float64).reshape(-1, 12)
    positions = np.empty((len(states), 3))
    quats = np.empty((len(states), 4))
    for i, x in enumerate(states):
        xyzquat = pin.SE3ToXYZQUAT(pin.exp6(pin.Motion(x[:6])))
        positions[i], quats[i] = xyzquat[:3], xyzquat[3:7]
    return positions, quats
