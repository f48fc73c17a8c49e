"""Checkpoints: one file holding the model config, its state_dict and any extra
(plain-data) training state. Saved atomically, loaded with `weights_only=True`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from metasym_core.errors import MetaSymError
from metasym_core.io import atomic_path
from metasym_core.models.metasym import MetaSym

FORMAT = "metasym-checkpoint"
VERSION = 1
#: buffers added after format version 1 was fixed: a checkpoint without them loads them as zeros
#: (`encoder.shift`: a zero shift is the uncentred encoder those checkpoints were trained with; `fixed`: no
#: coordinate held, which only the encoder residual reads, newer than those checkpoints)
OPTIONAL_ZERO_BUFFERS = ("encoder.shift", "fixed")
#: models bundled with the package, `<system>.pt` with the `<system>.recipe.json` that made them
PRETRAINED = Path(__file__).resolve().parent / "pretrained"


def resolve_checkpoint(value: str | os.PathLike, system: str) -> str:
    """The checkpoint path behind a `checkpoint` setting: `pretrained` names the model bundled for
    `system` (`<system>.pt`; the quadrotor's is what `metasym demo` makes, see its recipe),
    `pretrained:<name>` another bundled model of it (`<system>_<name>.pt`, e.g. the quadrotor's
    `pretrained:mppi`, trained for a sampling controller); anything else is returned as given."""
    text = os.fspath(value)
    if text != "pretrained" and not text.startswith("pretrained:"):
        return text
    name = text.partition(":")[2]
    path = PRETRAINED / (f"{system}_{name}.pt" if name else f"{system}.pt")
    if (name and not name.replace("_", "").isalnum()) or not path.is_file():  # no paths through the name
        bundled = ", ".join(sorted(p.stem for p in PRETRAINED.glob("*.pt"))) or "none"
        raise MetaSymError(f"checkpoint {text}: no such bundled model for {system} (bundled: {bundled})")
    return str(path)


def bundled_learner(value: str | os.PathLike, system: str) -> dict:
    """The learner settings a bundled model was tuned with (its recipe's `learner`, e.g. the quadrotor's
    `pretrained:nominal_mass`: an adaptation rate and detector threshold of its own), or {} for any other
    checkpoint. Overrides of the config's learner (`online.learner.learner_settings`)."""
    path = Path(resolve_checkpoint(value, system))
    if path.parent != PRETRAINED:
        return {}
    recipe = path.with_suffix(".recipe.json")
    return dict(json.loads(recipe.read_text(encoding="utf-8")).get("learner", {})) if recipe.is_file() else {}


def save_checkpoint(path: str | os.PathLike, model: MetaSym, extra: dict | None = None) -> Path:
    """Write `model` (+ `extra`: tensors, numbers, strings, lists, dicts) to `path` atomically."""
    payload = {"format": FORMAT, "version": VERSION, "config": model.config(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; any problem is a one-line `MetaSymError`."""
    path = Path(path)
    if not path.is_file():
        raise MetaSymError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first[:160]
        raise MetaSymError(f"checkpoint {path} is unreadable (truncated or not a checkpoint): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MetaSymError(f"{path} is not a MetaSym checkpoint")
    if payload.get("version") != VERSION:
        raise MetaSymError(f"checkpoint {path} has format version {payload.get('version')}, "
                           f"this MetaSym reads version {VERSION}")
    return payload


def content_tag(data: bytes) -> str:
    """The identity of a checkpoint's bytes: "model-" + the first 12 hex digits of their sha256."""
    return "model-" + hashlib.sha256(data).hexdigest()[:12]


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MetaSym, dict]:
    """Rebuild the model from `path` on `device`; returns `(model, extra)`."""
    payload = read_checkpoint(path)
    try:
        model = MetaSym.from_config(payload["config"])
    except (KeyError, TypeError) as exc:
        raise MetaSymError(f"checkpoint {path} has a bad model config: {exc}") from None
    state = dict(payload["state_dict"])
    own = model.state_dict()
    for name in OPTIONAL_ZERO_BUFFERS:
        if name in own and name not in state:
            state[name] = torch.zeros_like(own[name])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise MetaSymError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise MetaSymError(f"checkpoint {path}: {name} has shape {list(value.shape)}, "
                               f"the model expects {list(own[name].shape)}")
    model = model.to(next(iter(state.values())).dtype)
    model.load_state_dict(state)
    return model.to(device), payload["extra"]
