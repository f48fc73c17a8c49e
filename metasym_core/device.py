"""Device choice: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from metasym_core.errors import MetaSymError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` | `cpu` | `cuda[:i]` → a usable torch.device (error if CUDA is asked for but absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MetaSymError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MetaSymError(f"device {name!r} requested but CUDA is not available")
    return dev
