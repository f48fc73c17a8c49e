"""Dissipative Hamiltonian neural network (D-HNN) baseline (METHOD §7).

Two scalar MLPs, a Hamiltonian `H(z)` and a dissipation potential `D(z)`, on the
normalised state `z = (x - μ)/σ`; the vector field is

    ż = r · (∇D(z) + J ∇H(z)) + B u_n,     J = [[0, I], [-I, 0]],

with `r` a fixed scalar rate (mean `delta_std/state_std` per unit time, fitted
with the normalisation) that puts an untrained field on the data's time scale,
and `B` a learned linear map of the normalised control — the control enters as
an additive input term, the usual port-Hamiltonian choice `G(x)u` with a constant
`G`. A scalar `r` keeps `J∇H` Hamiltonian in z: with D ≡ 0 and u = 0 the flow
conserves H exactly, RK4 to its order. Gradients come from autograd
(`create_graph` while training so the loss can differentiate through them).
Each stored step is integrated by one classical RK4 step of its own size `h_t`
(irregular sampling), control held over the step; written in torch, no solver
library. Not defined for the quantum record, which has no phase-space dynamics.
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.baselines.base import Baseline
from metasym_core.errors import MetaSymError


def _scalar_mlp(dim: int, hidden: int, layers: int) -> nn.Sequential:
    dims = [dim] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        mods += [nn.Linear(a, b), nn.Tanh()]  # smooth: the field is a gradient, the loss needs its derivative
    mods.append(nn.Linear(dims[-1], 1))
    return nn.Sequential(*mods)


class DHNN(Baseline):
    """D-HNN integrated by RK4 over each (irregular) step; `dissipative=False` gives a plain HNN."""

    name = "dhnn"
    not_systems = ("quantum",)

    def __init__(self, state_dim: int, control_dim: int, hidden: int = 64, layers: int = 2,
                 dissipative: bool = True) -> None:
        super().__init__(state_dim, control_dim)
        if state_dim % 2:
            raise MetaSymError(f"dhnn needs an even state_dim (q, p), got {state_dim}")
        self.hidden, self.layers, self.dissipative = int(hidden), int(layers), bool(dissipative)
        self.H = _scalar_mlp(state_dim, self.hidden, self.layers)
        self.D = _scalar_mlp(state_dim, self.hidden, self.layers) if self.dissipative else None
        self.B = nn.Linear(control_dim, state_dim, bias=False) if control_dim else None
        if self.B is not None:
            nn.init.zeros_(self.B.weight)
        self.register_buffer("rate", torch.ones(()))

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "layers": self.layers, "dissipative": self.dissipative}

    @torch.no_grad()
    def set_normalization(self, states: torch.Tensor, controls: torch.Tensor, steps: torch.Tensor) -> None:
        """Fit the buffers of `Baseline` and the rate `r` (moving dimensions only)."""
        super().set_normalization(states, controls, steps)
        moving = self.state_std > 1e-6
        ratio = (self.delta_std / self.state_std)[moving]
        if ratio.numel():
            self.rate.copy_(ratio.mean() / self.step_mean[0].clamp_min(1e-12))

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """The learned Hamiltonian `H(z)` `[..., 1]` of normalised states."""
        return self.H(z)

    def field(self, z: torch.Tensor, drive: torch.Tensor | None) -> torch.Tensor:
        """`ż` at normalised states `z`; `drive` = `B u_n` (or None)."""
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            gH = torch.autograd.grad(self.H(z).sum(), z, create_graph=outer)[0]
            d = self.state_dim // 2
            out = torch.cat([gH[..., d:], -gH[..., :d]], dim=-1)
            if self.D is not None:
                out = out + torch.autograd.grad(self.D(z).sum(), z, create_graph=outer)[0]
        out = self.rate * out
        if drive is not None:
            out = out + drive
        return out if outer else out.detach()

    def rk4(self, z: torch.Tensor, drive: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """One classical RK4 step of size `h` (broadcast, `[..., 1]`) from `z`, control held."""
        k1 = self.field(z, drive)
        k2 = self.field(z + 0.5 * h * k1, drive)
        k3 = self.field(z + 0.5 * h * k2, drive)
        k4 = self.field(z + h * k3, drive)
        return z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z = self.norm("state", states)
        drive = self.B(self.norm("control", controls)) if self.B is not None else None
        return self.rk4(z, drive, h) * self.state_std + self.state_mean
