"""Small random MetaSym models for tests."""

import torch

from metasym_core import ActiveDecoder, MetaSym, SymplecticEncoder


def random_model(state_dim: int = 12, control_dim: int = 4, d_model: int = 32, context: int = 10,
                 layers: int = 1, dtype: torch.dtype = torch.float64, scale: float = 0.3,
                 seed: int = 0) -> MetaSym:
    """A MetaSym with non-trivial random weights (init values are near zero by design)."""
    torch.manual_seed(seed)
    model = MetaSym(SymplecticEncoder(state_dim), ActiveDecoder(state_dim, control_dim, d_model, heads=4,
                                                               layers=layers, context=context)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model.eval()
