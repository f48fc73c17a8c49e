"""The quadrotor's dynamics step in PyTorch, batched: the nominal model a MetaSym model may correct.

`step(x, u, h)` is `_model.step` (Crocoddyl's `IntegratedActionModelEuler` on the free-flyer
with four thrusters) for any batch of stored states at once, differentiable, in the states'
dtype: the body twist first (v' = v + a·h, with the rigid body's acceleration in its own
frame: a = (f/m + Rᵀg − ω×v, J⁻¹(τ − ω×Jω)); the hector's centre of mass is its base origin
and its inertia diagonal), then the pose (M' = M · exp6(v'·h)), stored as log6(M'). Thrusts
saturate at [0, MAX_THRUST] as in the plant. Why: `decoder.residual: nominal:quadrotor` adds
the decoder's increment to this step at nominal parameters, so rigid-body motion (attitude,
yaw torque, gravity) is known and the model learns only what differs (a mass, an arm, drag):
a sampling controller then cannot find a free torque in a model error (docs/decisions.md).
"""

from __future__ import annotations

import functools

import torch

from metasym_core.systems.quadrotor._model import GRAVITY, MAX_THRUST, PARAM_NAMES, physical_params

_SMALL = 1e-4  # below this rotation angle the exp/log coefficients use their series


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def _series(theta2: torch.Tensor, exact, series) -> torch.Tensor:
    """`exact(θ)` away from 0, `series(θ²)` near it, with no NaN in either branch's gradient."""
    small = theta2 < _SMALL ** 2
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    return torch.where(small, series(theta2), exact(theta))


def exp6(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SE(3) exponential of twists `[..., 6]` (linear, angular) → (R `[..., 3, 3]`, p `[..., 3]`)."""
    v, w = xi[..., :3], xi[..., 3:]
    t2 = (w * w).sum(-1)
    a = _series(t2, lambda t: torch.sin(t) / t, lambda s: 1 - s / 6)
    b = _series(t2, lambda t: (1 - torch.cos(t)) / t ** 2, lambda s: 0.5 - s / 24)
    c = _series(t2, lambda t: (t - torch.sin(t)) / t ** 3, lambda s: 1 / 6 - s / 120)
    W = _skew(w)
    W2 = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    return R, (V @ v[..., None])[..., 0]


def log6(R: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """SE(3) logarithm of (R, p) → twists `[..., 6]` (linear, angular), as `pinocchio.log6` (angles < π)."""
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    cos = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    sin = 0.5 * vee.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    t2 = theta * theta
    k = _series(t2, lambda t: t / (2 * torch.sin(t)), lambda s: 0.5 + s / 12)  # θ / (2 sin θ)
    w = k[..., None] * vee
    d = _series(t2, lambda t: 1 / t ** 2 - (1 + torch.cos(t)) / (2 * t * torch.sin(t)), lambda s: 1 / 12 + s / 720)
    W = _skew(w)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    v = ((eye - 0.5 * W + d[..., None, None] * (W @ W)) @ p[..., None])[..., 0]  # V(ω)⁻¹ p
    return torch.cat([v, w], -1)


@functools.lru_cache(maxsize=8)
def _constants(scales: tuple[float, ...]) -> tuple[float, tuple[float, float, float], float, float]:
    pp = physical_params(dict(zip(PARAM_NAMES, scales, strict=True)))
    return pp["mass"], (pp["ixx"], pp["iyy"], pp["izz"]), pp["arm"], pp["torque_coeff"]


@functools.lru_cache(maxsize=16)
def _inertia(scales: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The principal inertias as a tensor, made once per dtype and device (no host copy inside a CUDA graph);
    a normal tensor even when first asked for under inference mode, so autograd may save it later."""
    with torch.inference_mode(False):
        return torch.tensor(_constants(scales)[1], dtype=dtype, device=device)


def step(x: torch.Tensor, u: torch.Tensor, h: torch.Tensor,
         scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """The stored states after one step: `x [..., 12]`, thrusts `u [..., 4]`, steps `h [..., 1]` (module doc)."""
    scales = tuple(float(s) for s in scales)
    mass, _, arm, ctorque = _constants(scales)
    J = _inertia(scales, x.dtype, x.device)
    u = u.clamp(0.0, MAX_THRUST)
    R, p = exp6(x[..., :6])
    v, w = x[..., 6:9], x[..., 9:12]
    zero = torch.zeros_like(u[..., 0])
    force = torch.stack([zero, zero, u.sum(-1)], -1)
    # rotors on +x, +y, -x, -y spinning CCW, CW, CCW, CW (`_model.Dynamics`)
    torque = torch.stack([arm * (u[..., 1] - u[..., 3]), arm * (u[..., 2] - u[..., 0]),
                          ctorque * (u[..., 1] + u[..., 3] - u[..., 0] - u[..., 2])], -1)
    gravity = -GRAVITY * R[..., 2, :]  # Rᵀ (0, 0, -g)
    v2 = v + h * (force / mass + gravity - torch.linalg.cross(w, v))
    w2 = w + h * (torque - torch.linalg.cross(w, J * w)) / J
    dR, dp = exp6(torch.cat([v2, w2], -1) * h)
    return torch.cat([log6(R @ dR, p + (R @ dp[..., None])[..., 0]), v2, w2], -1)


def kernel_constants(scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> list[float]:
    """The constants of `step` in the compiled kernel's order (models/csrc/nominal.h): mass, the principal
    inertias, arm, torque coefficient, gravity, thrust limit."""
    mass, inertia, arm, ctorque = _constants(tuple(float(s) for s in scales))
    return [mass, *inertia, arm, ctorque, GRAVITY, MAX_THRUST]
