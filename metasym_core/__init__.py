"""MetaSym core: symplectic meta-learning of physical system families (pure PyTorch, no ROS)."""

from metasym_core.checkpoint import load_checkpoint, save_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.models import ActiveDecoder, ControlNet, MetaSym, SymplecticEncoder

__all__ = ["ActiveDecoder", "ControlNet", "MetaSym", "MetaSymError", "SymplecticEncoder",
           "load_checkpoint", "save_checkpoint"]
__version__ = "0.1.0"
