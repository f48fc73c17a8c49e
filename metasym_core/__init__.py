"""MetaSym core: symplectic meta-learning of physical system families (pure PyTorch, no ROS).

The public names are imported on first use (PEP 562), so that `import metasym_core` does not import
torch: the `metasym` command takes SIGINT over before its seconds of imports (`metasym_core.cli`).
"""

from __future__ import annotations

import importlib

from metasym_core.errors import MetaSymError

_LAZY = {
    "load_checkpoint": "metasym_core.checkpoint",
    "save_checkpoint": "metasym_core.checkpoint",
    "ActiveDecoder": "metasym_core.models",
    "ControlNet": "metasym_core.models",
    "MetaSym": "metasym_core.models",
    "SymplecticEncoder": "metasym_core.models",
}

__all__ = ["ActiveDecoder", "ControlNet", "MetaSym", "MetaSymError", "SymplecticEncoder",
           "load_checkpoint", "save_checkpoint"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metasym_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
