"""Physical system families and their registry: one `SystemSpec` per system.

`SPECS` is the one list of the systems the project knows; every other list is derived from
it (`SYSTEM_NAMES`, the node graphs' `GRAPH_SYSTEMS`, the controller's `CLOSED_LOOP_SYSTEMS`,
the live streams of `online.streams`). `make_family(name, **options)` imports the family's
module only when asked, so the heavy simulators (QuTiP, Crocoddyl) load only for the system
in use.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np

from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SPLITS, SystemFamily, Trajectory


@dataclass(frozen=True)
class SystemSpec:
    """One system: its dataset family, its live stream (for the node graph) and what runs it.

    Its config is `config/<name>.yaml` (`config.load_config(name)`), whose `ros:` section holds the
    graph's node parameters."""

    name: str
    family: str  # "module:Class" of its `SystemFamily`
    stream: str | None = None  # class name in `metasym_core.online.streams` (None: no node graph)
    paper: bool = False  # one of the paper's three systems (Table 1, `--system all`)
    closed_loop: bool = False  # the MetaSym MPPI controller (`control.live_controller`) flies it


SPECS: dict[str, SystemSpec] = {spec.name: spec for spec in (
    SystemSpec("spring_mesh", "metasym_core.systems.spring_mesh:SpringMesh", "SpringMeshStream", paper=True),
    SystemSpec("quantum", "metasym_core.systems.quantum:OpenQuantumSystem", "QuantumStream", paper=True),
    SystemSpec("quadrotor", "metasym_core.systems.quadrotor:Quadrotor", "QuadrotorStream", paper=True,
               closed_loop=True),
    SystemSpec("oscillator", "metasym_core.systems.oscillator:Oscillator"),  # small and synthetic: tests, demos
)}
SYSTEM_NAMES: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.paper)
# Families beyond the paper's three (small synthetic ones for tests and demos).
EXTRA_SYSTEMS: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if not spec.paper)
#: the systems with a live stream: a node graph (`metasym launch`, the launch files)
GRAPH_SYSTEMS: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.stream)
#: the systems the closed loop (`controller=mppi`) flies
CLOSED_LOOP_SYSTEMS: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.closed_loop)

# name -> "module:Class" of the family; plugins and tests may add entries (see `register_family`).
_REGISTRY: dict[str, str] = {name: spec.family for name, spec in SPECS.items()}

__all__ = ["CLOSED_LOOP_SYSTEMS", "EXTRA_SYSTEMS", "GRAPH_SYSTEMS", "SPECS", "SPLITS", "SYSTEM_NAMES", "SystemFamily",
           "SystemSpec", "Trajectory", "family_class", "make_family", "noise_free_states", "register_family"]


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


def noise_free_states(ds) -> np.ndarray:
    """The noise-free expectation of every frame of dataset `ds` (`SystemFamily.noise_free_states` of its family)."""
    return family_class(ds.family).noise_free_states(ds)


def make_family(name: str, **options) -> SystemFamily:
    """Construct the family `name` with constructor `options` (e.g. grid=10)."""
    cls = family_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        valid = ", ".join(inspect.signature(cls).parameters) or "none"
        raise MetaSymError(f"bad option for {name}: {exc}; valid options: {valid}") from exc
    return cls(**options)
