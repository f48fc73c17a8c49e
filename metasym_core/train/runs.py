"""Training runs: a run folder opened once (`open_trainer`), run folders for a long-lived process, datasets
made once, a stoppable training thread.

`open_trainer` is how every caller (`metasym train`, `metasym demo`, the learner, `bench table1`) opens a
run folder: fresh, or continued from its `last.pt`, with one rule and one set of errors.

A process that meta-trains while it serves (the ROS learner node) keeps its runs in numbered folders
`<train_dir>/run001`, `run002`, ... At start it reuses the newest finished run (`final.pt`) or resumes
the newest interrupted one (`last.pt`); on request it starts a new one. `BackgroundTraining` runs one
training at a time on a thread: data (generated system by system into `<train_dir>/data/`, stoppable in
between), `Trainer.run` (stoppable between outer steps: `last.pt` is saved), then `on_model(final.pt)`.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from metasym_core.config import data_options, data_tag
from metasym_core.errors import MetaSymError
from metasym_core.online.throttle import Throttled
from metasym_core.systems.dataset import SystemDataset, generate, load_dataset, merge, save_dataset
from metasym_core.train.trainer import Trainer

PROGRESS_EVERY_S = 2.0  # throttle of the progress lines
_RUN = re.compile(r"run(\d+)$")


#: how `open_trainer` treats a run folder's `last.pt`
RESUME_MODES = ("auto", "always", "never", "fresh")


def open_trainer(cfg: dict, train: SystemDataset, val: SystemDataset, folder: str | os.PathLike,
                 resume: str = "auto", **trainer_options) -> Trainer:
    """A `Trainer` writing to `folder`, continued from its `last.pt` or not, by `resume`:

    - "auto": continue when `last.pt` is there (an interrupted run), else start;
    - "always": continue; no `last.pt` is an error (`metasym train --resume`);
    - "never": start; a folder that already holds a run is an error (`metasym train`: nothing is overwritten
      unless asked);
    - "fresh": start over whatever the folder holds (a benchmark's scratch run).

    A `last.pt` that cannot be continued (another model config, a damaged file) is a one-line MetaSymError."""
    if resume not in RESUME_MODES:
        raise MetaSymError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    folder = Path(folder)
    last = folder / "last.pt"
    if resume == "always" and not last.is_file():
        raise MetaSymError(f"nothing to resume: {last} does not exist")
    if resume == "never" and last.is_file():
        raise MetaSymError(f"{folder} already holds a run; pass --resume or choose another --out")
    trainer = Trainer(cfg, train, val, folder, **trainer_options)
    if resume in ("auto", "always") and last.is_file():
        try:
            trainer.resume()
        except (MetaSymError, KeyError, ValueError, RuntimeError) as exc:
            raise MetaSymError(f"cannot resume {last} ({exc}); remove that run folder or start a new run") from None
    return trainer


def run_folders(train_dir: str | os.PathLike) -> list[Path]:
    """The run folders `run<N>` of `train_dir`, oldest (lowest N) first."""
    root = Path(train_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and _RUN.match(p.name)]
    return sorted(runs, key=lambda p: int(_RUN.match(p.name).group(1)))


def next_run(train_dir: str | os.PathLike, at_start: bool) -> tuple[str, Path]:
    """("reuse" | "resume" | "new", run folder): at start the newest run is reused when finished or
    resumed when interrupted; otherwise (and on request) a new folder, or the newest one left empty."""
    runs = run_folders(train_dir)
    if runs:
        newest = runs[-1]
        if at_start and (newest / "final.pt").is_file():
            return "reuse", newest
        if at_start and (newest / "last.pt").is_file():
            return "resume", newest
        if not any(newest.iterdir()):
            return "new", newest  # left empty (e.g. stopped while generating data)
    number = int(_RUN.match(runs[-1].name).group(1)) + 1 if runs else 1
    return "new", Path(train_dir) / f"run{number:03d}"


#: (parameter ranges, seed) of the systems a training here early-stops on: held-out systems from the training
#: ranges, never the OOD test systems (issue 17; `metasym bench table1` uses the same).
VALIDATION = ("train", 7)


def dataset_once(path: str | os.PathLike, family, split: str, systems: int, steps: int | None, seed: int, *,
                 log: Callable[[str], None] = lambda _text: None, should_stop: Callable[[], bool] | None = None,
                 workers: int | None = None, progress: bool = False) -> Path | None:
    """`path`, simulated first when missing (`systems` systems of `family`'s `split`, `seed`), atomically.

    With `should_stop`, generation runs one system at a time in this thread (the same bytes as one run) and
    returns None as soon as it is true; without, one `generate` call with `workers` processes (and its
    progress bar with `progress`)."""
    path = Path(path)
    if path.is_file():
        return path
    name = getattr(family, "name", family)
    if should_stop is None:
        log(f"simulating {systems} {split} {name} systems -> {path}")
        data = generate(family, split, systems, steps, seed=seed, workers=workers, progress=progress)
    else:
        parts = []
        for i in range(systems):  # one shard per system: stoppable in between
            if should_stop():
                return None
            log(f"generating {name}/{split} data: system {i + 1}/{systems}")
            parts.append(generate(family, split, systems=systems, steps=steps, seed=seed, shard=(i, systems),
                                  workers=1, progress=False))
        data = merge(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dataset(data, path)
    return path


def prepare_datasets(system: str, train_data: str, val_data: str, data_dir: str | os.PathLike,
                     should_stop: Callable[[], bool] = lambda: False,
                     log: Callable[[str], None] = lambda _text: None, systems: int | None = None,
                     steps: int | None = None, family_options: dict | None = None
                     ) -> tuple[SystemDataset, SystemDataset] | None:
    """(train, val) datasets: the given files, or the family's default train set (seed 0) and validation
    systems (`VALIDATION`: held-out systems from the training ranges, as many as the family's OOD set)
    generated into `data_dir` (reused when present; `systems`/`steps` override the family's sizes,
    `family_options` its options: the config's `data:` section). Generation runs system by system in
    this thread (no process pool: the caller may be a ROS process) and returns None as soon as
    `should_stop()` is true."""
    out = []
    options = dict(family_options or {})
    tag = data_tag(options)
    for name, given, (split, seed), size_of, file in (
            ("train_data", train_data, ("train", 0), "train", "train"),
            ("val_data", val_data, VALIDATION, "ood", f"val_{VALIDATION[0]}{VALIDATION[1]}")):
        path = Path(given) if given else Path(data_dir) / f"{system}{tag}_{file}.npz"
        if not path.is_file():
            if given:
                raise MetaSymError(f"parameter {name}: dataset not found: {path}")
            from metasym_core.systems import make_family

            family = make_family(system, **options)
            n = family.default_systems[size_of] if systems is None else systems
            if dataset_once(path, family, split, n, steps, seed, log=log, should_stop=should_stop) is None:
                return None
        ds = load_dataset(path)
        if ds.family != system:
            raise MetaSymError(f"{name} {path} holds {ds.family} systems, not {system}")
        out.append(ds)
    return out[0], out[1]


class BackgroundTraining:
    """One meta-training at a time on a thread (see module doc); `stop` ends it at the next outer step.

    `on_model(path)` gets each finished run's `final.pt` (on the training thread); `info` and `error`
    get one line each about what happens, progress lines at most every PROGRESS_EVERY_S."""

    def __init__(self, system: str, cfg: dict, train_dir: str | os.PathLike, on_model: Callable[[Path], None], *,
                 train_data: str = "", val_data: str = "", max_steps: int = 0, device: str = "cpu",
                 threads: int = 1, info: Callable[[str], None] = lambda _text: None,
                 error: Callable[[str], None] = lambda _text: None):
        for name, value in (("train_data", train_data), ("val_data", val_data)):
            if value and not os.path.isfile(value):
                raise MetaSymError(f"parameter {name}: dataset not found: {value}")
        if max_steps < 0:
            raise MetaSymError(f"parameter train_steps: must be >= 0, got {max_steps}")
        self.system, self.cfg, self.train_dir, self.on_model = system, cfg, Path(os.path.abspath(train_dir)), on_model
        self.train_data, self.val_data, self.max_steps = train_data, val_data, max_steps
        self.device, self.threads, self.info, self.error = device, threads, info, error
        self.progress = Throttled(info, PROGRESS_EVERY_S, count=False)
        self.summaries: list[dict] = []  # of the finished trainings
        self.state = "idle"  # what the thread does: "idle", "new <folder>", "step 12/400 in <folder>", ...
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_val = math.nan

    @property
    def running(self) -> bool:
        """Whether a training (or the start-up reuse of one) is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def step(self) -> int:
        """The outer step of the running training (0 before the first)."""
        state = self.state
        return int(state.split()[1].split("/")[0]) if state.startswith("step ") else 0

    def start(self, at_start: bool = False) -> tuple[bool, str]:
        """Start (or refuse) a training: (started, message). At start the newest run is reused or resumed."""
        with self._lock:
            if self.running:
                return False, f"a training is already running ({self.state})"
            if self._stop.is_set():
                return False, "shutting down"
            kind, folder = next_run(self.train_dir, at_start)
            folder.mkdir(parents=True, exist_ok=True)
            self.state = f"{kind} {folder}"
            self._thread = threading.Thread(target=self._train, args=(kind, folder), name="metasym-trainer",
                                            daemon=True)
            self._thread.start()
        verb = {"reuse": "using the model meta-trained in", "resume": "resuming meta-training in",
                "new": "meta-training in"}[kind]
        self.info(f"{verb} {folder}")
        return True, f"{verb} {folder}"

    def stop(self, wait_s: float) -> bool:
        """Stop a running training at its next outer step (it saves last.pt); false if it did not end
        within `wait_s` seconds."""
        self._stop.set()
        if self.running:
            self._thread.join(timeout=wait_s)
        return not self.running

    def _train(self, kind: str, folder: Path) -> None:
        """Training thread: data, Trainer.run (stoppable), then `on_model(final.pt)`."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)  # per thread (OpenMP)
        try:
            if kind != "reuse" and not self._fit(kind, folder):
                return
            self.on_model(folder / "final.pt")
        except (MetaSymError, RuntimeError, OSError, KeyError, ValueError) as exc:
            self.error(f"meta-training in {folder} failed: {exc}")
        finally:
            with self._lock:
                self.state = "idle"

    def _fit(self, kind: str, folder: Path) -> bool:
        """Meta-train (or resume) in `folder`; true when final.pt was written."""
        options, steps = data_options(self.cfg)
        datasets = prepare_datasets(self.system, self.train_data, self.val_data, self.train_dir / "data",
                                    self._stop.is_set, lambda text: self.progress("data", text), steps=steps,
                                    family_options=options)
        if datasets is None:
            self.info("meta-training stopped while generating data")
            return False
        trainer = open_trainer(self.cfg, *datasets, folder, "always" if kind == "resume" else "never",
                               max_steps=self.max_steps or None, progress=False, device=self.device)
        self._last_val = math.nan
        self.info(f"meta-training {self.system} in {folder}: {len(datasets[0])} training / {len(datasets[1])} "
                  f"validation systems, steps {trainer.step}..{trainer.total}")
        summary = trainer.run(should_stop=lambda: self._progress(trainer))
        if summary.get("stopped"):
            self.info(f"meta-training stopped at step {summary['steps']}: saved {summary['checkpoint']} "
                      "(a start-up training resumes it)")
            return False
        self.summaries.append(summary)
        best = summary["best_val_loss"]
        self.info(f"meta-training done after {summary['steps']} steps (best validation loss "
                  f"{'of the decoder phase: none yet' if best is None else f'{best:.4g}'}): {folder / 'final.pt'}")
        return True

    def _progress(self, trainer: Trainer) -> bool:
        """Called by Trainer.run before every outer step: a throttled progress line; true = stop."""
        with self._lock:
            self.state = f"step {trainer.step}/{trainer.total} in {trainer.out}"
        if trainer.history:
            row = trainer.history[-1]
            if row["val_loss"] != "":
                self._last_val = float(row["val_loss"])
            val = f"{self._last_val:.4g}" if math.isfinite(self._last_val) else "not yet"
            self.progress("step", f"meta-training step {row['step']}/{trainer.total} ({row['phase']}): loss "
                          f"{row['loss']:.4g}, validation {val}")
        return self._stop.is_set()
