"""Baselines of the paper's Table 1 (METHOD §7): autoregressive Transformer, D-HNN,
naive MLP and QuantumLSTM, all with MetaSym's tensor conventions, plus their registry
and pooled trainer."""

from metasym_core.baselines.base import Baseline
from metasym_core.baselines.registry import BASELINE_NAMES, applicable_baselines, make_baseline
from metasym_core.baselines.train import train_baseline

__all__ = ["BASELINE_NAMES", "Baseline", "applicable_baselines", "make_baseline", "train_baseline"]
