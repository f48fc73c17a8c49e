"""Shared fixtures."""

import pytest
import torch
from _models import random_model

from metasym_core import MetaSym


@pytest.fixture
def model64() -> MetaSym:
    return random_model()


@pytest.fixture
def one_thread():
    """One torch thread for the test (2 shared cores: one thread is faster for small models)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
