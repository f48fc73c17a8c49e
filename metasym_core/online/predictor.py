"""Online predictor: a MetaSym model, its current local parameters and a context
window → predictions for the latest state, and batched candidate rollouts.

Local parameters are swapped by reference (`set_local`), so a rollout in progress
keeps the dict it started with and no prediction is ever dropped for a swap.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from metasym_core.checkpoint import load_checkpoint, resolve_checkpoint
from metasym_core.config import build_model, load_config
from metasym_core.device import resolve_device
from metasym_core.errors import MetaSymError
from metasym_core.models.metasym import MetaSym
from metasym_core.online.local_params import from_entries, load_local_params
from metasym_core.online.realised import Hindcast
from metasym_core.online.window import ContextWindow

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

def load_model(system: str, checkpoint: str | os.PathLike = "", device: str = "auto",
               seed: int = 0) -> tuple[MetaSym, dict, str | None]:
    """(model in eval mode on `device`, config, warning). An empty `checkpoint` gives an
    untrained model built from config/<system>.yaml (the graph still runs) plus a warning;
    `pretrained` the model bundled for `system` (`resolve_checkpoint`)."""
    checkpoint = resolve_checkpoint(checkpoint, system)
    cfg = load_config(system)
    dev = resolve_device(device)
    warning = None
    if checkpoint:
        model, _ = load_checkpoint(checkpoint, device=dev)
        if model.state_dim != cfg["state_dim"] or model.control_dim != cfg["control_dim"]:
            raise MetaSymError(f"checkpoint {checkpoint} has state/control dims "
                               f"{model.state_dim}/{model.control_dim}, config {system} wants "
                               f"{cfg['state_dim']}/{cfg['control_dim']}")
    else:
        torch.manual_seed(seed)
        model = build_model(cfg).to(dev)
        warning = f"no checkpoint given: using an UNTRAINED {system} model (predictions are meaningless)"
    return model.eval(), cfg, warning


def describe_model(system: str, checkpoint: str | os.PathLike, model: MetaSym) -> str:
    """One line saying which model a node runs: the file (`pretrained` names resolved), the recipe that made
    it when one lies beside it (`<name>.recipe.json`, or a run folder's `recipe.json`), and its parameter
    count; without a checkpoint, an untrained model of config/<system>.yaml."""
    count = f"{sum(p.numel() for p in model.parameters()):,} parameters"
    if not checkpoint:
        return f"model: UNTRAINED {system} model from config/{system}.yaml, {count}"
    path = resolve_checkpoint(checkpoint, system)
    recipes = [os.path.splitext(path)[0] + ".recipe.json", os.path.join(os.path.dirname(path), "recipe.json")]
    recipe = next((r for r in recipes if os.path.isfile(r)), None)
    named = f" ({checkpoint})" if os.fspath(checkpoint) != path else ""
    return f"model: {path}{named}, recipe {recipe or 'none beside it'}, {count}"


def load_model_bytes(system: str, data: bytes, sha256: str, device: str = "auto") -> tuple[MetaSym, dict]:
    """`load_model` from a checkpoint's bytes (as a ModelCheckpoint message carries them): refused unless
    their sha256 is `sha256`; read through a private temporary file with `weights_only=True`."""
    data = bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise MetaSymError(f"checkpoint bytes do not match their checksum ({len(data)} bytes, sha256 "
                           f"{digest[:12]}…, announced {sha256[:12]}…)")
    with tempfile.TemporaryDirectory(prefix="metasym-model-") as tmp:
        path = os.path.join(tmp, "model.pt")
        with open(path, "wb") as f:
            f.write(data)
        model, cfg, _ = load_model(system, path, device)
    return model, cfg


@dataclass
class PredictionResult:
    """One prediction from the newest window sample."""

    states: np.ndarray  # [H, D]
    times: np.ndarray  # [H], seconds after the newest sample
    version: int
    latency_ms: float
    controls: np.ndarray | None = None  # [H, m]: entry k applied from predicted state k-1 (the newest sample
    #                                     for k = 0) to predicted state k


class OnlinePredictor:
    """Rollouts of `model` from a context window, with hot-swappable local parameters."""

    def __init__(self, model: MetaSym, horizon: int):
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise MetaSymError(f"horizon must be an integer >= 1, got {horizon!r}")
        self.model, self.horizon = model, horizon
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.local: dict[str, torch.Tensor] | None = None
        self.version = 0

    @property
    def context(self) -> int:
        return self.model.context

    def make_window(self, max_age_s: float = float("inf")) -> ContextWindow:
        """A window sized to the model's context."""
        return ContextWindow(self.model.state_dim, self.model.control_dim, self.model.context, max_age_s)

    def set_local(self, params: dict[str, torch.Tensor] | None, version: int) -> None:
        """Use `params` from the next rollout on (validated by the model on use)."""
        self.model.check_local_params(params)
        self.local, self.version = params, int(version)

    def set_local_entries(self, entries, version: int) -> None:
        """Swap in local parameters as a message carries them (`local_params.to_entries`), checked against
        the model (errors leave the old ones)."""
        expected = {k: v.detach() for k, v in self.model.decoder.local_parameters().items()}
        self.set_local(from_entries(entries, expected, self.device), version)

    def load_local(self, path: str | os.PathLike, version: int) -> None:
        """Load a learner's local parameter file and swap it in (errors leave the old ones)."""
        expected = {k: v.detach() for k, v in self.model.decoder.local_parameters().items()}
        params, file_version = load_local_params(path, expected, self.device)
        if file_version != version:
            raise MetaSymError(f"local parameter file {path} holds version {file_version}, "
                               f"the status announced {version}")
        self.set_local(params, version)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """`array` as a tensor of the model's dtype and device; on the CPU converted by NumPy (a torch
        conversion of a large batch would leave torch's intra-op threads spinning while the rollout runs)."""
        if self.device.type == "cpu" and self.dtype in _NUMPY_DTYPES:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[self.dtype]))
        return torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)

    @staticmethod
    def _numpy(out: torch.Tensor) -> np.ndarray:
        """A rollout as float64 NumPy (converted by NumPy on the CPU, see `_tensor`)."""
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float64)

    def warm_up(self) -> float:
        """One throw-away rollout (first calls pay lazy initialisation); returns its time in ms."""
        c, D, m = self.model.context, self.model.state_dim, self.model.control_dim
        return self.predict_arrays(np.zeros((c, D)), np.zeros((c, m)), np.full(c, 0.01)).latency_ms

    def predict(self, window: ContextWindow, future_controls: np.ndarray | None = None) -> PredictionResult:
        """Roll out `horizon` steps after the newest sample of `window` with its step; `future_controls`
        `[horizon, m]` as in `MetaSym.rollout` (e.g. from `PlanFollower`), default: hold its control."""
        return self.predict_arrays(*window.arrays(), future_controls=future_controls)

    @torch.inference_mode()
    def predict_arrays(self, states: np.ndarray, controls: np.ndarray, steps: np.ndarray,
                       future_controls: np.ndarray | None = None) -> PredictionResult:
        """`predict` from a window snapshot `(states [T, D], controls [T, m], steps [T])`; the horizon is
        that of `future_controls` where given."""
        t0 = time.perf_counter()
        local, version = self.local, self.version  # one consistent snapshot
        m = self.model.control_dim
        if future_controls is None:
            future = np.repeat(np.asarray(controls, dtype=np.float64)[-1:], self.horizon, axis=0)
        else:  # its length is the horizon of this prediction
            future = np.asarray(future_controls, dtype=np.float64)
            if future.ndim != 2 or future.shape[0] < 1 or future.shape[1] != m:
                raise MetaSymError(f"future controls must be [H>=1, {m}], got {list(future.shape)}")
        H = future.shape[0]
        out = self.model.rollout(self._tensor(states)[None], self._tensor(controls)[None],
                                 self._tensor(steps)[None], H, future_controls=self._tensor(future)[None],
                                 local_params=local)
        pred = self._numpy(out[0])
        times = steps[-1] * np.arange(1, H + 1)
        applied = np.concatenate([np.asarray(controls, dtype=np.float64)[-1:], future[:-1]])
        return PredictionResult(pred, times, version, 1e3 * (time.perf_counter() - t0), applied)

    @torch.inference_mode()
    def hindcast(self, batch: Hindcast) -> np.ndarray:
        """Per-row model error of `batch` (one batched rollout under the controls that were applied)."""
        local = self.local
        out = self.model.rollout(self._tensor(batch.states), self._tensor(batch.controls), self._tensor(batch.steps),
                                 batch.truth.shape[1], future_controls=self._tensor(batch.future_controls),
                                 local_params=local)
        return batch.mse(self._numpy(out))

    @torch.inference_mode()
    def rollout_candidates(self, context_states: np.ndarray, past_controls: np.ndarray, candidates: np.ndarray,
                           dt: float) -> np.ndarray:
        """A controller's rollout: K control sequences [K, H, m] applied from the newest context state on, so
        `candidates[:, 0]` is what would be applied now → trajectories [K, H, D]. `context_states` [L, D] at
        steps of `dt`; `past_controls` [L - 1, m]: those applied from the first L − 1 of them."""
        D, m = self.model.state_dim, self.model.control_dim
        xs, us = np.asarray(context_states, dtype=np.float64), np.asarray(past_controls, dtype=np.float64)
        cand = np.asarray(candidates, dtype=np.float64)
        L = xs.shape[0]
        if xs.ndim != 2 or xs.shape[1] != D or L < 1 or us.reshape(-1, m).shape != (L - 1, m):
            raise MetaSymError(f"context states must be [L>=1, {D}] and past controls [L-1, {m}], got "
                               f"{list(xs.shape)} and {list(us.shape)}")
        if cand.ndim != 3 or cand.shape[0] < 1 or cand.shape[1] < 1 or cand.shape[2] != m:
            raise MetaSymError(f"candidates must be [K>=1, H>=1, {m}], got {list(cand.shape)}")
        K, H = cand.shape[:2]
        ctx_u = np.concatenate([np.broadcast_to(us.reshape(L - 1, m), (K, L - 1, m)), cand[:, :1]], axis=1)
        future = np.concatenate([cand[:, 1:], cand[:, -1:]], axis=1)  # entry k applied from predicted state k
        steps = torch.full((K, L + H), float(dt), dtype=self.dtype, device=self.device)
        out = self.model.rollout(self._tensor(xs)[None].expand(K, L, D), self._tensor(ctx_u), steps, H,
                                 future_controls=self._tensor(future), local_params=self.local)
        return self._numpy(out)

    @torch.inference_mode()
    def rollout_batch(self, context_states: np.ndarray, context_controls: np.ndarray, context_dt: np.ndarray,
                      candidate_controls: np.ndarray, dt: float) -> tuple[np.ndarray, int]:
        """K candidate control sequences [K, H, m] from one context → trajectories [K, H, D] (one call)."""
        D, m = self.model.state_dim, self.model.control_dim
        xs = np.asarray(context_states, dtype=np.float64)
        us = np.asarray(context_controls, dtype=np.float64)
        hs = np.asarray(context_dt, dtype=np.float64)
        cand = np.asarray(candidate_controls, dtype=np.float64)
        if xs.ndim != 2 or xs.shape[1] != D or xs.shape[0] < 1:
            raise MetaSymError(f"context states must be [L>=1, {D}], got {list(xs.shape)}")
        L = xs.shape[0]
        if us.shape != (L, m):
            raise MetaSymError(f"context controls must be [{L}, {m}], got {list(us.shape)}")
        if hs.shape != (L,):
            raise MetaSymError(f"context dt must be [{L}], got {list(hs.shape)}")
        if cand.ndim != 3 or cand.shape[0] < 1 or cand.shape[1] < 1 or cand.shape[2] != m:
            raise MetaSymError(f"candidate controls must be [K>=1, H>=1, {m}], got {list(cand.shape)}")
        if not (np.isfinite(xs).all() and np.isfinite(us).all() and np.isfinite(cand).all()):
            raise MetaSymError("rollout request contains NaN or Inf")
        if not (np.isfinite(hs).all() and (hs > 0).all() and np.isfinite(dt) and dt > 0):
            raise MetaSymError("rollout steps (context_dt, dt) must be positive and finite")
        K, H = cand.shape[:2]
        local, version = self.local, self.version
        steps = np.concatenate([hs, np.full(H, float(dt))])
        out = self.model.rollout(
            self._tensor(xs)[None].expand(K, L, D), self._tensor(us)[None].expand(K, L, m),
            self._tensor(steps)[None].expand(K, L + H), H, future_controls=self._tensor(cand),
            local_params=local)
        return self._numpy(out), version
