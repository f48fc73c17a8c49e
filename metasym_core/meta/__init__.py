"""Meta-learning (METHOD §4-5): encoder MAML, decoder bi-level training and online adaptation."""

from metasym_core.meta.adapt import AdaptResult, adapt

__all__ = ["AdaptResult", "adapt"]
