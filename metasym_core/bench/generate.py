"""Dataset generation benchmark: wall time to simulate and write each family's
default training set (what `metasym generate <system> --split train` does).

`quick` times one round of the process pool (one full-length system per core)
and multiplies by the number of rounds the default set needs (start-up costs
are counted per round, so it slightly overestimates); the table marks it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from metasym_core.bench.report import DEFAULT_DOC, markdown_table, text_table, update_section
from metasym_core.errors import MetaSymError
from metasym_core.systems import make_family
from metasym_core.systems.dataset import generate, save_dataset

# Wall-clock targets for the default training set on the 2-core reference machine.
GENERATION_TARGETS_S: dict[str, float] = {"spring_mesh": 60.0, "quadrotor": 120.0, "quantum": 300.0}


def time_generation(name: str, systems: int, steps: int, workers: int | None = None) -> float:
    """Seconds to generate and write `systems` × `steps` of the train split of `name`."""
    family = make_family(name)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_dataset(generate(family, "train", systems, steps, seed=0, workers=workers, progress=False),
                     Path(tmp) / f"{name}_train.npz")
        return time.perf_counter() - start


def run_generate_bench(systems: list[str], quick: bool, doc: str | Path = DEFAULT_DOC,
                       command: str = "metasym bench generate") -> dict[str, float]:
    """Time each family's default training set; figures `<system>_train_gen_s` and
    `<system>_train_gen_target_s`. Families whose module does not import are skipped."""
    figures: dict[str, float] = {}
    rows = []
    cores = os.cpu_count() or 1
    for name in systems:
        try:
            family = make_family(name)
        except MetaSymError as exc:
            rows.append([name, "-", "-", "-", f"skipped: {exc}"])
            continue
        full_n, full_t = family.default_systems["train"], family.default_steps
        n = min(full_n, cores) if quick else full_n
        seconds = time_generation(name, n, full_t)
        estimate = seconds
        if quick:  # one round of the pool (one system per core), scaled by the number of rounds
            estimate = seconds * math.ceil(full_n / cores)
            figures[f"{name}_train_gen_quick_s"] = round(seconds, 2)
        figures[f"{name}_train_gen_s"] = round(estimate, 2)
        target = GENERATION_TARGETS_S.get(name, getattr(family, "generation_target_s", None))
        if target is not None:
            figures[f"{name}_train_gen_target_s"] = float(target)
        how = f"estimated from {n} × {full_t}" if quick else "measured"
        rows.append([name, f"{full_n} × {full_t}", f"{estimate:.1f}",
                     "-" if target is None else f"{target:.0f}", how])
    header = ["system", "systems × steps", "wall s", "target s", "how"]
    print(text_table(header, rows))
    body = (f"Default training set per family, generated with {cores} worker processes and written "
            f"to .npz.\n\n{markdown_table(header, rows)}")
    update_section("Dataset generation", body, command + (" --quick" if quick else ""), doc=doc)
    return figures
