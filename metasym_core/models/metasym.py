"""MetaSym = SymplecticEncoder + ActiveDecoder, with data normalisation and the
autoregressive rollout (METHOD §5).

Alignment convention (every tensor `[batch, time, feature]`): `controls[:, t]`
and `steps[:, t]` belong to `states[:, t]`: `u_t` acts over `[t_t, t_{t+1})` and
`h_t = t_{t+1} - t_t`. Token t predicts `x_{t+1}`.
"""

from __future__ import annotations

import torch
from torch import nn

from metasym_core.errors import MetaSymError
from metasym_core.models import backends, nominal
from metasym_core.models.decoder import ActiveDecoder
from metasym_core.models.encoder import SymplecticEncoder
from metasym_core.models.normalization import fit_normalization, normalize, register_normalization
from metasym_core.models.streaming import StreamingPlan, denominators_safe, initial_windows
from metasym_core.validation import check_finite, check_positive_int, check_sequence, model_inputs


class MetaSym(nn.Module):
    """The full model. Normalisation statistics are buffers, saved with the weights."""

    def __init__(self, encoder: SymplecticEncoder, decoder: ActiveDecoder) -> None:
        super().__init__()
        if encoder.dim != decoder.state_dim:
            raise MetaSymError(f"encoder dim {encoder.dim} != decoder state_dim {decoder.state_dim}")
        self.encoder, self.decoder = encoder, decoder
        register_normalization(self, decoder.state_dim, decoder.control_dim)
        # coordinates that never moved in the training data (the spring mesh's fixed row): the encoder
        # residual holds them (`anchor`); fitted by `set_normalization`, all False before
        self.register_buffer("fixed", torch.zeros(decoder.state_dim, dtype=torch.bool))
        # the known step a `nominal:<name>` residual corrects (`models.nominal`), else None
        self._nominal = nominal.nominal_step(decoder.residual) if nominal.is_nominal(decoder.residual) else None

    @property
    def state_dim(self) -> int:
        return self.decoder.state_dim

    @property
    def control_dim(self) -> int:
        return self.decoder.control_dim

    @property
    def context(self) -> int:
        return self.decoder.context

    def config(self) -> dict:
        """Constructor arguments of both parts, for checkpoints."""
        return {"encoder": self.encoder.config(), "decoder": self.decoder.config()}

    @classmethod
    def from_config(cls, config: dict) -> MetaSym:
        """Build an (untrained) model from `config()` output."""
        return cls(SymplecticEncoder(**config["encoder"]), ActiveDecoder(**config["decoder"]))

    def set_normalization(self, states: torch.Tensor, controls: torch.Tensor, steps: torch.Tensor) -> None:
        """Fit the normalisation buffers to training data `[B, T, ·]` (steps `[B, T]` or `[B, T, 1]`),
        and centre the encoder on the state mean (`SymplecticEncoder.shift`)."""
        fit_normalization(self, states, controls, steps, self.state_dim, self.control_dim)
        with torch.no_grad():
            self.encoder.shift.copy_(self.state_mean)
            flat = states.reshape(-1, self.state_dim)
            self.fixed.copy_((flat == flat[:1]).all(dim=0))

    # -- pieces ------------------------------------------------------------------------------------
    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return normalize(self, name, x)

    @property
    def encoder_residual(self) -> bool:
        """Whether the increment is added to the encoder's latent Φ_θ(x_t, h_t)."""
        return self.decoder.residual == "encoder"

    @property
    def state_residual(self) -> bool:
        """Whether the increment is added to the state x_t (the default; all rollout backends apply)."""
        return self.decoder.residual == "state"

    def anchor(self, states: torch.Tensor, latents: torch.Tensor, controls: torch.Tensor,
               h: torch.Tensor) -> torch.Tensor:
        """What the decoder's increment is added to (all `[..., ·]`, unnormalised; `h [..., 1]`): the state
        `x_t`; with the encoder residual the raw latent `Φ_θ(x_t, h_t)` (but `x_t` on the `fixed`
        coordinates: the encoder mixes every coordinate and would move a boundary the data never moved);
        with a nominal residual the nominal step f(x_t, u_t, h_t) (`models.nominal`); with the mean residual
        the training mean of the state (the head predicts the next state itself)."""
        if self._nominal is not None:
            return self._nominal(states, controls, h)
        if self.decoder.residual == "mean":
            return self.state_mean.to(states.dtype).expand_as(states)
        return torch.where(self.fixed, states, latents) if self.encoder_residual else states

    def tokens(self, x: torch.Tensor, u: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised decoder inputs `(x, u, h, e)` with `e = Φ_θ(x, h)` the encoder latent."""
        e = self.encoder(x, h)
        return self._norm("state", x), self._norm("control", u), self._norm("step", h), self._norm("state", e)

    def _inputs(self, states: torch.Tensor, controls: torch.Tensor, steps, extra: int = 0):
        return model_inputs(self, states, controls, steps, self.state_dim, self.control_dim, extra)

    def check_local_params(self, local_params: dict[str, torch.Tensor] | None) -> None:
        """Names and shapes of adapted local parameters must match the decoder's (None is fine)."""
        if local_params is None:
            return
        known = self.decoder.local_parameters()
        for name, value in local_params.items():
            if name not in known:
                raise MetaSymError(f"local_params has unknown key {name!r}; expected keys {sorted(known)}")
            if value.shape != known[name].shape:
                raise MetaSymError(f"local_params[{name!r}] has shape {list(value.shape)}, "
                                   f"expected {list(known[name].shape)}")

    # -- teacher-forced prediction -------------------------------------------------------------------
    def forward(self, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor,
                local_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Next-state predictions `[B, T, D]` (entry t predicts `x_{t+1}`), teacher forced."""
        self.check_local_params(local_params)
        states, controls, h = self._inputs(states, controls, steps)
        return self.predict_next(states, controls, h, local_params)

    def predict_next(self, states: torch.Tensor, controls: torch.Tensor, h: torch.Tensor,
                     local_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Unchecked `forward` for inner loops (`h` is `[B, T, 1]`); pure, so `torch.func` can transform it."""
        e = self.encoder(states, h)
        delta = self.decoder(self._norm("state", states), self._norm("control", controls), self._norm("step", h),
                             self._norm("state", e), local=local_params)
        return self.anchor(states, e, controls, h) + delta * self.delta_std

    # -- autoregressive rollout ------------------------------------------------------------------------
    def _rollout_args(self, states, controls, steps, horizon, future_controls, local_params):
        check_positive_int("horizon", horizon)
        self.check_local_params(local_params)
        states, controls, h = self._inputs(states, controls, steps, extra=horizon)
        B, T = states.shape[:2]
        if future_controls is None:
            future = controls[:, -1:].expand(B, horizon, self.control_dim)
        else:
            future = future_controls.to(device=states.device, dtype=states.dtype)
            check_sequence("future_controls", future, self.control_dim, B, horizon)
        return states, controls, h, future

    def rollout(self, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor, horizon: int,
                future_controls: torch.Tensor | None = None,
                local_params: dict[str, torch.Tensor] | None = None, backend: str = "auto") -> torch.Tensor:
        """Predict the `horizon` states after the last observed one: `[B, horizon, D]`.

        Args:
            states, controls: observed context `[B, T, D]`, `[B, T, m]`.
            steps: a float, `[B, T]` (future steps repeat the last) or `[B, T + horizon]`.
            future_controls: `[B, horizon, m]`, entry k applied at predicted state k
                (the last entry is unused); default: hold the last control.
            local_params: adapted meta-attention weights (from `adapt`); the module is not changed.
            backend: "auto" (the fastest that applies: the compiled kernel for CPU inference, CUDA graphs on
                the GPU, streaming torch with autograd), or one of `backends.BACKENDS` by name, which must
                apply (see `metasym_core.models.backends`). All give the same rollout to round-off.
        """
        states, controls, h, future = self._rollout_args(states, controls, steps, horizon, future_controls,
                                                         local_params)
        return backends.run(backend, self, states, controls, h, future, horizon, local_params)

    def _rollout_cached(self, states, controls, h, future, horizon, local_params, shift: bool | None = None
                        ) -> torch.Tensor:
        """Prefill on the context, then `horizon - 1` streaming steps (see `streaming`).

        Without autograd the step softmaxes skip the max shift; if a denominator left the
        safe range (see `streaming.denominators_safe`) the rollout is redone with it."""
        if shift is None:
            shift = torch.is_grad_enabled() or states.dtype not in (torch.float32, torch.float64)
        T = states.shape[1]
        e = self.encoder(states, h[:, :T])
        delta, kv = self.decoder.forward_with_kv(self._norm("state", states), self._norm("control", controls),
                                                 self._norm("step", h[:, :T]), self._norm("state", e), local_params)
        x = self.anchor(states[:, -1], e[:, -1], controls[:, -1], h[:, T - 1]) + delta[:, -1] * self.delta_std
        rings = initial_windows(kv, self.context)
        plan = StreamingPlan(self, local_params, future[:, :horizon - 1], h[:, T:T + horizon - 1], T, shift=shift)
        out = [x]
        for k in range(horizon - 1):
            x = plan.step(x, h[:, T + k], k, T + k, rings)
            out.append(x)
        if not shift and not denominators_safe(plan.denoms):
            return self._rollout_cached(states, controls, h, future, horizon, local_params, shift=True)
        return torch.stack(out, dim=1)

    def rollout_reference(self, states: torch.Tensor, controls: torch.Tensor, steps: float | torch.Tensor,
                          horizon: int, future_controls: torch.Tensor | None = None,
                          local_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The plain rollout: re-run the whole sequence every step. Slow; the yardstick for `rollout`."""
        states, controls, h, future = self._rollout_args(states, controls, steps, horizon, future_controls,
                                                         local_params)
        return self._rollout_plain(states, controls, h, future, horizon, local_params)

    def _rollout_plain(self, states, controls, h, future, horizon, local_params) -> torch.Tensor:
        T = states.shape[1]
        xs, us = states, controls
        outs = []
        for k in range(horizon):
            nxt = self.predict_next(xs, us, h[:, :T + k], local_params)[:, -1:]
            check_finite("rollout", nxt)
            outs.append(nxt)
            xs = torch.cat([xs, nxt], dim=1)
            us = torch.cat([us, future[:, k:k + 1]], dim=1)
        return torch.cat(outs, dim=1)
