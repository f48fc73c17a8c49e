"""Shared fixtures."""

import pytest
from _models import random_model

from metasym_core import MetaSym


@pytest.fixture
def model64() -> MetaSym:
    return random_model()
