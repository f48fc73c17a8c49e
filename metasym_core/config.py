"""Per-system configuration (`config/<system>.yaml`): one file feeds the CLI,
training and the ROS nodes, so a model is always built the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from metasym_core.errors import MetaSymError
from metasym_core.models import ActiveDecoder, MetaSym, SymplecticEncoder

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def config_dirs() -> list[Path]:
    """Where bare system names are looked up, in order: this checkout's `config/`, then
    `share/metasym/config` of the Python prefix (`pip install .`) and of each ament prefix (colcon)."""
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [CONFIG_DIR] + [Path(p) / "share" / "metasym" / "config" for p in prefixes]


def _find(name: str) -> Path | None:
    """`name` in the first config folder that has it (see `config_dirs`)."""
    return next((folder / name for folder in config_dirs() if (folder / name).is_file()), None)


def config_file(name: str) -> Path:
    """A non-system file shipped in the config folder (e.g. `fastdds.xml`), found like the configs."""
    found = _find(name)
    if found is None:
        raise MetaSymError(f"config file {name} not found in {', '.join(str(d) for d in config_dirs())}")
    return found


def config_path(system_or_path: str | os.PathLike) -> Path:
    """A YAML path as given, or `<config dir>/<system>.yaml` for a bare system name."""
    text = str(system_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        return path
    return _find(f"{text}.yaml") or CONFIG_DIR / f"{text}.yaml"


def load_config(system_or_path: str | os.PathLike) -> dict:
    """Read and validate a system config; errors name the file and the bad key."""
    path = config_path(system_or_path)
    if not path.is_file():
        raise MetaSymError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MetaSymError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise MetaSymError(f"config {path} must be a mapping")
    for key in ("system", "state_dim", "control_dim", "model"):
        if key not in cfg:
            raise MetaSymError(f"config {path} lacks the key {key!r}")
    for key in ("encoder", "decoder"):
        if not isinstance(cfg["model"].get(key), dict):
            raise MetaSymError(f"config {path} lacks the mapping model.{key}")
    cfg["_path"] = str(path)
    return cfg


def build_model(cfg: dict) -> MetaSym:
    """An untrained MetaSym with the sizes of `cfg`."""
    try:
        enc = SymplecticEncoder(cfg["state_dim"], **cfg["model"]["encoder"])
        dec = ActiveDecoder(cfg["state_dim"], cfg["control_dim"], **cfg["model"]["decoder"])
    except TypeError as exc:
        raise MetaSymError(f"config {cfg.get('_path', '?')}: bad model option: {exc}") from None
    return MetaSym(enc, dec)


def data_tag(options: dict) -> str:
    """File-name tag of a dataset made with family `options`: `_flight-r2`, `_flight-r2_fixed-mass`, ...
    Flights carry the simulator's `FLIGHT_REVISION`, so a dataset (or a demo model) cached from flights an
    older simulator flew is made again rather than reused."""
    def part(key, value) -> str:
        if isinstance(value, list | tuple):
            return f"_{key}-{'+'.join(map(str, value))}"
        if key == "source" and value == "flight":
            from metasym_core.systems.quadrotor.flight import FLIGHT_REVISION

            return f"_flight-r{FLIGHT_REVISION}"
        return f"_{value}"

    return "".join(part(k, v) for k, v in options.items())


def data_options(cfg: dict) -> tuple[dict, int | None]:
    """The `data:` section: (family options, stored steps) of the datasets that `metasym demo` and the
    learner node generate for meta-training; ({}, None) = the family's defaults."""
    where = cfg.get("_path", "config")
    section = cfg.get("data") or {}
    if not isinstance(section, dict):
        raise MetaSymError(f"{where}: data must be a mapping")
    unknown = sorted(set(section) - {"family", "steps"})
    if unknown:
        raise MetaSymError(f"{where}: unknown data keys {unknown}; valid: ['family', 'steps']")
    family = section.get("family") or {}
    if not isinstance(family, dict):
        raise MetaSymError(f"{where}: data.family must be a mapping of family options")
    steps = section.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise MetaSymError(f"{where}: data.steps = {steps!r} must be a positive integer")
    return dict(family), steps
