"""The quadrotor (hector, Crocoddyl/Pinocchio): its model (`_model`), the dataset family (`family`) and the
closed-loop flight simulator (`flight`). `from metasym_core.systems import quadrotor as quad` gives the model's
names and `Quadrotor`; `family` and `flight` import `_model`, never this package, so there is no import cycle."""

from metasym_core.systems.quadrotor._model import *  # noqa: F403 - the model's public names (its __all__)
from metasym_core.systems.quadrotor._model import __all__ as _MODEL_NAMES
from metasym_core.systems.quadrotor.family import Quadrotor

__all__ = [*_MODEL_NAMES, "Quadrotor"]
