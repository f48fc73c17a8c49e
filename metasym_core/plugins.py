"""Subcommands and benchmarks that other installed packages add to `metasym`, found by entry point.

The core names no other package: a package adds commands by declaring, in its distribution's
metadata, an entry point in the group `metasym.commands` (a module with `register(subparsers)`)
or `metasym.bench` (a module with `register_bench(subparsers, common)`). One that cannot be
imported (its dependencies are missing) is left out and listed by `metasym --help`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from types import ModuleType

COMMANDS, BENCHES = "metasym.commands", "metasym.bench"


def load(group: str) -> tuple[list[ModuleType], list[str]]:
    """(the modules of `group`'s entry points, "name (module: why)" of those that failed to import)."""
    modules, failed = [], []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            modules.append(importlib.import_module(ep.value.split(":")[0]))
        except ImportError as exc:
            failed.append(f"{ep.name} ({ep.value}: {exc})")
    return modules, failed
