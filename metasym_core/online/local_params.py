"""How accepted local (meta-attention) parameters travel from the learner to the predictor.

In the message: an AdaptationStatus carries every tensor of φ as (name, shape, flat values)
(`to_entries` / `from_entries`), so a learner on a ground station and a predictor on board,
which share no filesystem, still hand over adaptations; the transient-local status reaches a
predictor that starts late. The predictor checks names, shapes and values against its model
and swaps the dict in between two rollouts.

As an optional extra the learner also writes `{format, version, system, params}` to a file
atomically (temp file + rename, `metasym_core.io`; `save_local_params`), which
`load_local_params` reads with `weights_only=True` (and `metasym flight`'s reruns used).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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
    return checked(payload.get("params"), expected, device, f"in {path}"), int(payload.get("version", 0))


def checked(params, expected: dict[str, torch.Tensor], device: str | torch.device = "cpu",
            where: str = "") -> dict[str, torch.Tensor]:
    """`params` on `device` with the dtypes of `expected`, after checking names, shapes and finiteness
    (MetaSymError naming the first problem; `where` says where they came from)."""
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise MetaSymError(f"local parameters {where} have keys {got}, expected {sorted(expected)}")
    out = {}
    for name, ref in expected.items():
        value = params[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MetaSymError(f"local parameter {name} {where} has shape {shape}, expected {list(ref.shape)}")
        if not torch.isfinite(value).all():
            raise MetaSymError(f"local parameter {name} {where} contains NaN or Inf")
        out[name] = value.to(device=device, dtype=ref.dtype)
    return out


def to_entries(params: dict[str, torch.Tensor]) -> list[tuple[str, list[int], np.ndarray]]:
    """(name, shape, flat float64 values) per tensor, in name order: what a message carries."""
    return [(name, list(value.shape), value.detach().cpu().double().numpy().ravel())
            for name, value in sorted(params.items())]


def from_entries(entries, expected: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 where: str = "in the message") -> dict[str, torch.Tensor]:
    """The inverse of `to_entries`, checked against `expected` (`checked`); a length that does not match
    its shape is a MetaSymError."""
    params = {}
    for name, shape, values in entries:
        flat = np.asarray(values, dtype=np.float64).ravel()
        shape = [int(n) for n in shape]
        if flat.size != int(np.prod(shape, dtype=np.int64)):
            raise MetaSymError(f"local parameter {name} {where} has {flat.size} values for shape {shape}")
        params[name] = torch.from_numpy(flat.copy()).reshape(shape)
    return checked(params, expected, device, where)
