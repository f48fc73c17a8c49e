"""The MetaSym models: encoder, decoder and the assembled model."""

from metasym_core.models.decoder import ActiveDecoder, ControlNet
from metasym_core.models.encoder import SymplecticEncoder
from metasym_core.models.metasym import MetaSym

__all__ = ["ActiveDecoder", "ControlNet", "MetaSym", "SymplecticEncoder"]
