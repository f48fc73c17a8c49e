"""How accepted local (meta-attention) parameters travel from the learner to the predictor.

The learner writes `{format, version, system, params: {name: tensor}}` to a file
atomically (temp file + rename, `metasym_core.io`) and then publishes an
AdaptationStatus carrying `version` and `params_path`. The predictor loads the
file with `weights_only=True`, checks names and shapes against its model, and
swaps the dict in between two rollouts. Files, not messages, because a model's
φ can be large (spring mesh) and because a late-joining predictor can still
load the latest file named by the transient-local status message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from metasym_core.errors import MetaSymError
from metasym_core.io import atomic_path

FORMAT = "metasym-local-params"


def save_local_params(path: str | os.PathLike, params: dict[str, torch.Tensor], version: int,
                      system: str) -> Path:
    """Write local parameters atomically (readers never see a partial file)."""
    payload = {"format": FORMAT, "version": int(version), "system": str(system),
               "params": {k: v.detach().cpu().clone() for k, v in params.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_local_params(path: str | os.PathLike, expected: dict[str, torch.Tensor],
                      device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], int]:
    """(params on `device` with the dtype of `expected`, version); names and shapes must match `expected`."""
    path = Path(path)
    if not path.is_file():
        raise MetaSymError(f"local parameter file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read (truncated, not a torch file, bad pickle) means unusable
        raise MetaSymError(f"local parameter file {path} is unreadable: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MetaSymError(f"{path} is not a MetaSym local parameter file")
    params = payload.get("params")
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise MetaSymError(f"local parameters in {path} have keys {got}, expected {sorted(expected)}")
    out = {}
    for name, ref in expected.items():
        value = params[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MetaSymError(f"local parameter {name} in {path} has shape {shape}, expected {list(ref.shape)}")
        if not torch.isfinite(value).all():
            raise MetaSymError(f"local parameter {name} in {path} contains NaN or Inf")
        out[name] = value.to(device=device, dtype=ref.dtype)
    return out, int(payload.get("version", 0))
