"""`make_baseline(name, ...)`: the baselines by name, with their applicability per system."""

from __future__ import annotations

from metasym_core.baselines.base import Baseline
from metasym_core.baselines.dhnn import DHNN
from metasym_core.baselines.mlp import MLPBaseline
from metasym_core.baselines.quantum_lstm import QuantumLSTM
from metasym_core.baselines.transformer import TransformerBaseline
from metasym_core.errors import MetaSymError

_CLASSES: dict[str, type[Baseline]] = {"transformer": TransformerBaseline, "dhnn": DHNN, "mlp": MLPBaseline,
                                       "quantum_lstm": QuantumLSTM}
BASELINE_NAMES: tuple[str, ...] = tuple(_CLASSES)


def applicable_baselines(system: str) -> list[str]:
    """Names of the baselines that apply to `system` (paper Table 1 columns)."""
    out = []
    for name, cls in _CLASSES.items():
        try:
            cls.check_system(system)
        except MetaSymError:
            continue
        out.append(name)
    return out


def make_baseline(name: str, state_dim: int, control_dim: int, system: str | None = None, **sizes) -> Baseline:
    """An untrained baseline; `system` (if given) is checked for applicability; `sizes` are its options."""
    if name not in _CLASSES:
        raise MetaSymError(f"unknown baseline {name!r}; expected one of {', '.join(_CLASSES)}")
    cls = _CLASSES[name]
    cls.check_system(system)
    try:
        return cls(state_dim, control_dim, **sizes)
    except TypeError as exc:
        raise MetaSymError(f"bad option for baseline {name}: {exc}") from None


def from_config(config: dict) -> Baseline:
    """Rebuild an untrained baseline from its `config()`."""
    cfg = dict(config)
    return make_baseline(cfg.pop("name"), cfg.pop("state_dim"), cfg.pop("control_dim"), **cfg)
