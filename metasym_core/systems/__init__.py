"""Physical system families and their registry.

`make_family(name, **options)` imports the family's module only when asked, so
the heavy simulators (QuTiP, Crocoddyl) load only for the system in use.
"""

from __future__ import annotations

import importlib
import inspect

from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SPLITS, SystemFamily, Trajectory

SYSTEM_NAMES: tuple[str, ...] = ("spring_mesh", "quantum", "quadrotor")
# Families beyond the paper's three (small synthetic ones for tests and demos).
EXTRA_SYSTEMS: tuple[str, ...] = ("oscillator",)

# name -> "module:Class"; tests may add entries (see `register_family`).
_REGISTRY: dict[str, str] = {
    "spring_mesh": "metasym_core.systems.spring_mesh:SpringMesh",
    "quantum": "metasym_core.systems.quantum:OpenQuantumSystem",
    "quadrotor": "metasym_core.systems.quadrotor:Quadrotor",
    "oscillator": "metasym_core.systems.oscillator:Oscillator",
}

__all__ = ["EXTRA_SYSTEMS", "SPLITS", "SYSTEM_NAMES", "SystemFamily", "Trajectory", "family_class", "make_family",
           "register_family"]


def register_family(name: str, target: str) -> None:
    """Register an extra family as "module:Class" (for plugins and tests)."""
    _REGISTRY[name] = target


def family_class(name: str) -> type[SystemFamily]:
    """The class behind `name`, importing its module on first use."""
    if name not in _REGISTRY:
        raise MetaSymError(f"unknown system {name!r}; expected one of {', '.join(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MetaSymError(f"system {name!r} is unavailable: {exc}") from exc
    return getattr(module, cls_name)


def make_family(name: str, **options) -> SystemFamily:
    """Construct the family `name` with constructor `options` (e.g. grid=10)."""
    cls = family_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        valid = ", ".join(inspect.signature(cls).parameters) or "none"
        raise MetaSymError(f"bad option for {name}: {exc}; valid options: {valid}") from exc
    return cls(**options)
