"""Dataset generation, storage and torch views for the system families.

Generation: system i of a run uses `np.random.default_rng(SeedSequence([seed, i]))`
for both `sample_params` and `simulate`, so it is the same whichever shard or
worker computes it. Shard k/n holds the systems i with i % n == k; `merge`
puts shards back in system order, bit-identical to the unsharded run.

Storage: one `.npz` per family and split (uncompressed, written with fixed zip
timestamps so one seed gives one byte sequence), arrays
`system_index` [N], `params` [N, P], `times` [N, T], `states` [N, T, D],
`controls` [N, T, m], `extras/<name>` [N, ...], and `metadata`, a JSON string
(generator version, family options, parameter names and ranges, seed, split,
shard, units, state and control names). Writes are atomic.

Torch views (`[batch, time, feature]`): `WindowDataset` gives context windows
with next-step targets; `SystemSplits` splits every system in time into a
support (adaptation) part and a query (meta) part.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metasym_core.errors import MetaSymError
from metasym_core.io import atomic_path, progress_interval
from metasym_core.systems.base import SPLITS, SystemFamily, Trajectory

FORMAT = "metasym-systems"
FORMAT_VERSION = 1
_REQUIRED = ("metadata", "system_index", "params", "times", "states", "controls")
_METADATA_KEYS = ("family", "generator_version", "options", "split", "seed", "systems", "steps", "shard",
                  "param_names", "param_ranges", "state_dim", "control_dim", "state_names", "control_names",
                  "units")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# -- generation ---------------------------------------------------------------------

def system_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of system `index` in a run with `seed` (same for every shard/worker)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def simulate_system(family: SystemFamily, split: str, steps: int, seed: int, index: int) -> Trajectory:
    """Sample the parameters of system `index` and simulate it."""
    rng = system_rng(seed, index)
    return family.simulate(family.sample_params(split, rng), steps, rng)


def shard_indices(systems: int, shard: tuple[int, int] | None) -> list[int]:
    """The system indices a shard (k, n) holds: i % n == k; all of them without a shard."""
    if shard is None:
        return list(range(systems))
    k, n = shard
    return list(range(k, systems, n))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse "k/n" into (k, n) with 0 <= k < n."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise MetaSymError(f"bad shard {text!r}; expected k/n with integers 0 <= k < n, e.g. 0/4") from None
    return _check_shard((k, n))


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    k, n = shard
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= k < n):
        raise MetaSymError(f"bad shard {k}/{n}; expected 0 <= k < n")
    return int(k), int(n)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise MetaSymError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


_WORKER_FAMILY: SystemFamily | None = None


def _init_worker(family: SystemFamily) -> None:
    global _WORKER_FAMILY
    _WORKER_FAMILY = family


def _worker_simulate(split: str, steps: int, seed: int, index: int) -> Trajectory:
    assert _WORKER_FAMILY is not None
    return simulate_system(_WORKER_FAMILY, split, steps, seed, index)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork hands the (possibly unpicklable) family to the workers without pickling it.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def generate(family: SystemFamily | str, split: str, systems: int | None = None, steps: int | None = None,
             seed: int = 0, shard: tuple[int, int] | None = None, workers: int | None = None,
             progress: bool = True) -> dict[str, np.ndarray]:
    """Simulate a dataset (or one shard of it) and return its arrays (see module doc).

    `systems`/`steps` default to the family's; `workers` defaults to all cores
    (a process pool over systems; 1 runs in this process).
    """
    if isinstance(family, str):
        from metasym_core.systems import make_family

        family = make_family(family)
    if split not in SPLITS:
        raise MetaSymError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    systems = _positive_int("systems", family.default_systems[split] if systems is None else systems)
    steps = _positive_int("steps", family.default_steps if steps is None else steps)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MetaSymError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if shard is not None:
        shard = _check_shard(tuple(shard))
    indices = shard_indices(systems, shard)
    if not indices:
        raise MetaSymError(f"shard {shard[0]}/{shard[1]} holds no systems (only {systems} in the run)")
    workers = _positive_int("workers", (os.cpu_count() or 1) if workers is None else workers)
    workers = min(workers, len(indices))
    label = f"{family.name}/{split}"
    bar = tqdm(total=len(indices), desc=label, unit="system", disable=not progress, mininterval=progress_interval())
    results: dict[int, Trajectory] = {}
    try:
        if workers == 1:
            for i in indices:
                results[i] = simulate_system(family, split, steps, seed, i)
                bar.update()
        else:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context(),
                                                        initializer=_init_worker, initargs=(family,)) as pool:
                futures = {pool.submit(_worker_simulate, split, steps, seed, i): i for i in indices}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)  # do not finish the other systems
                    raise
    finally:
        bar.close()
    trajectories = [results[i] for i in indices]
    param_names = list(family.param_ranges(split))
    for i, traj in zip(indices, trajectories, strict=True):
        _check_trajectory(family, traj, steps, param_names, i)
    metadata = _metadata(family, split, systems, steps, seed, shard, param_names)
    return _stack(metadata, indices, trajectories, param_names)


def _check_trajectory(family: SystemFamily, traj: Trajectory, steps: int, param_names: list[str],
                      index: int) -> None:
    """Reject a family's output that breaks the Trajectory contract (a bug, named precisely)."""
    where = f"{family.name} system {index}"
    want = {"times": (steps,), "states": (steps, family.state_dim), "controls": (steps, family.control_dim)}
    for name, shape in want.items():
        arr = getattr(traj, name)
        if not isinstance(arr, np.ndarray) or arr.shape != shape:
            got = getattr(arr, "shape", type(arr).__name__)
            raise MetaSymError(f"{where}: {name} has shape {got}, expected {shape}")
        if not np.isfinite(arr).all():
            raise MetaSymError(f"{where}: {name} contains NaN or Inf")
    if traj.times[0] != 0 or (steps > 1 and not (np.diff(traj.times) > 0).all()):
        raise MetaSymError(f"{where}: times must start at 0 and strictly increase")
    if sorted(traj.params) != sorted(param_names):
        raise MetaSymError(f"{where}: params {sorted(traj.params)} differ from {sorted(param_names)}")


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _metadata(family: SystemFamily, split: str, systems: int, steps: int, seed: int,
              shard: tuple[int, int] | None, param_names: list[str]) -> dict:
    ranges = family.param_ranges(split)
    return _jsonable({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "family": family.name, "generator_version": family.version, "options": family.options(),
        "split": split, "seed": seed, "systems": systems, "steps": steps,
        "shard": list(shard) if shard is not None else None,
        "param_names": param_names, "param_ranges": {k: list(ranges[k]) for k in param_names},
        "state_dim": family.state_dim, "control_dim": family.control_dim,
        "state_names": list(family.state_names), "control_names": list(family.control_names),
        "units": dict(family.units),
    })


def _metadata_array(metadata: dict) -> np.ndarray:
    return np.array(json.dumps(metadata, sort_keys=True, allow_nan=False))


def _stack(metadata: dict, indices: list[int], trajectories: list[Trajectory],
           param_names: list[str]) -> dict[str, np.ndarray]:
    arrays = {
        "metadata": _metadata_array(metadata),
        "system_index": np.asarray(indices, dtype=np.int64),
        "params": np.array([[float(t.params[k]) for k in param_names] for t in trajectories],
                           dtype=np.float64).reshape(len(trajectories), len(param_names)),
        "times": np.stack([t.times for t in trajectories]).astype(np.float64, copy=False),
        "states": np.stack([t.states for t in trajectories]).astype(np.float64, copy=False),
        "controls": np.stack([t.controls for t in trajectories]).astype(np.float64, copy=False),
    }
    keys = sorted(trajectories[0].extras)
    for i, traj in zip(indices, trajectories, strict=True):
        if sorted(traj.extras) != keys:
            raise MetaSymError(f"{metadata['family']} system {i}: extras {sorted(traj.extras)} "
                               f"differ from {keys}")
    for key in keys:
        try:
            arrays[f"extras/{key}"] = np.stack([np.asarray(t.extras[key]) for t in trajectories])
        except ValueError as exc:
            raise MetaSymError(f"{metadata['family']}: extra {key!r} differs in shape "
                               "between systems") from exc
    return arrays


# -- storage ------------------------------------------------------------------------

def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (before a long generation) if `path` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise MetaSymError(f"output path is a folder: {target}")
    if not folder.is_dir():
        raise MetaSymError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise MetaSymError(f"output folder is not writable: {folder}")
    return target


def save_dataset(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write `arrays` as a deterministic, uncompressed .npz, atomically."""
    SystemDataset.from_arrays(arrays)  # never store something load_dataset would reject
    target = check_output_path(path)
    with atomic_path(target) as tmp:
        os.chmod(tmp, 0o644)  # the temp file is created 0600; a dataset is meant to be shared
        _write_npz(arrays, tmp)
    return target


def _write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Uncompressed .npz with fixed member timestamps and attributes (same arrays -> same bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                arr = np.asarray(arrays[key])  # (np.ascontiguousarray would turn 0-d metadata into 1-d)
                np.lib.format.write_array(fh, arr if arr.flags.c_contiguous else arr.copy(order="C"),
                                          allow_pickle=False)


def load_dataset(path: str | os.PathLike) -> SystemDataset:
    """Read and validate a dataset file; MetaSymError on a missing, bad or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise MetaSymError(f"dataset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise MetaSymError(f"not a readable dataset (bad or truncated file) {path}: {exc}") from None
    try:
        return SystemDataset.from_arrays(arrays)
    except MetaSymError as exc:
        raise MetaSymError(f"bad dataset {path}: {exc}") from None


def merge(parts: list[dict[str, np.ndarray] | SystemDataset]) -> dict[str, np.ndarray]:
    """Join shards of one run back into the arrays of the unsharded run (bit for bit)."""
    if not parts:
        raise MetaSymError("merge needs at least one part")
    datasets = [p if isinstance(p, SystemDataset) else SystemDataset.from_arrays(p) for p in parts]
    base = {k: v for k, v in datasets[0].metadata.items() if k != "shard"}
    for ds in datasets[1:]:
        other = {k: v for k, v in ds.metadata.items() if k != "shard"}
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            raise MetaSymError(f"cannot merge parts of different runs: they differ in {', '.join(diff)}")
    index = np.concatenate([ds.system_index for ds in datasets])
    order = np.argsort(index, kind="stable")
    expected = np.arange(base["systems"])
    if len(index) != len(expected) or not np.array_equal(index[order], expected):
        seen = set(index.tolist())
        missing = [i for i in expected.tolist() if i not in seen][:10]
        raise MetaSymError(f"parts do not hold each of the {base['systems']} systems exactly once "
                           f"(missing {missing}, {len(index) - len(seen)} duplicated)")
    arrays = {"metadata": _metadata_array({**base, "shard": None}), "system_index": index[order]}
    for key in ("params", "times", "states", "controls"):
        arrays[key] = np.concatenate([getattr(ds, key) for ds in datasets])[order]
    for key in datasets[0].extras:
        arrays[f"extras/{key}"] = np.concatenate([ds.extras[key] for ds in datasets])[order]
    return arrays


@dataclass
class SystemDataset:
    """A loaded (validated) dataset: N systems × T frames of one family and split."""

    metadata: dict
    system_index: np.ndarray  # [N] int64
    params: np.ndarray  # [N, P] float64, columns in metadata["param_names"] order
    times: np.ndarray  # [N, T]
    states: np.ndarray  # [N, T, D]
    controls: np.ndarray  # [N, T, m]
    extras: dict[str, np.ndarray]  # name -> [N, ...]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SystemDataset:
        """Validate the arrays of `generate`/`merge`/a file and wrap them."""
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise MetaSymError(f"dataset lacks arrays {missing}")
        raw = np.asarray(arrays["metadata"])
        if raw.shape != () or raw.dtype.kind != "U":
            raise MetaSymError(f"dataset metadata must be a JSON string, got {raw.dtype} {raw.shape}")
        try:
            metadata = json.loads(str(raw[()]))
        except (ValueError, TypeError) as exc:
            raise MetaSymError(f"dataset metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise MetaSymError(f"not a {FORMAT} dataset")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise MetaSymError(f"dataset format version {metadata.get('format_version')} "
                               f"is not {FORMAT_VERSION}")
        lacking = [k for k in _METADATA_KEYS if k not in metadata]
        if lacking:
            raise MetaSymError(f"dataset metadata lacks {lacking}")
        extras = {k[len("extras/"):]: v for k, v in arrays.items() if k.startswith("extras/")}
        ds = cls(metadata, arrays["system_index"], arrays["params"], arrays["times"], arrays["states"],
                 arrays["controls"], extras)
        ds._validate()
        return ds

    def _validate(self) -> None:
        md = self.metadata
        n, t = self.times.shape if self.times.ndim == 2 else (-1, -1)
        want = {"system_index": (n,), "params": (n, len(md["param_names"])), "times": (n, md["steps"]),
                "states": (n, md["steps"], md["state_dim"]), "controls": (n, md["steps"], md["control_dim"])}
        for name, shape in want.items():
            arr = getattr(self, name)
            if arr.shape != shape or n <= 0:
                raise MetaSymError(f"array {name} has shape {arr.shape}, expected {shape}")
        for name, arr in self.extras.items():
            if arr.shape[:1] != (n,):
                raise MetaSymError(f"extra {name} has shape {arr.shape}, expected [{n}, ...]")
        if self.system_index.dtype.kind != "i" or len(set(self.system_index.tolist())) != n:
            raise MetaSymError("system_index must hold distinct integers")
        if not (np.all(self.times[:, 0] == 0) and np.all(np.diff(self.times, axis=1) > 0)):
            raise MetaSymError("times must start at 0 and strictly increase")
        for name in ("params", "states", "controls"):
            if not np.isfinite(getattr(self, name)).all():
                raise MetaSymError(f"array {name} contains NaN or Inf")

    def __len__(self) -> int:
        return len(self.system_index)

    @property
    def family(self) -> str:
        return self.metadata["family"]

    @property
    def split(self) -> str:
        return self.metadata["split"]

    @property
    def param_names(self) -> list[str]:
        return list(self.metadata["param_names"])

    @property
    def steps(self) -> int:
        return self.times.shape[1]

    @property
    def state_dim(self) -> int:
        return self.states.shape[2]

    @property
    def control_dim(self) -> int:
        return self.controls.shape[2]

    @property
    def dt(self) -> np.ndarray:
        """Step sizes h_t = t_{t+1} - t_t, [N, T - 1]."""
        return np.diff(self.times, axis=1)

    def param_dict(self, i: int) -> dict[str, float]:
        """Parameters of the i-th stored system by name."""
        return dict(zip(self.param_names, self.params[i].tolist(), strict=True))

    def trajectory(self, i: int) -> Trajectory:
        """The i-th stored system as a Trajectory."""
        return Trajectory(self.param_dict(i), self.times[i], self.states[i], self.controls[i],
                          {k: v[i] for k, v in self.extras.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays as stored (inverse of from_arrays)."""
        out = {"metadata": _metadata_array(self.metadata), "system_index": self.system_index,
               "params": self.params, "times": self.times, "states": self.states, "controls": self.controls}
        out.update({f"extras/{k}": v for k, v in self.extras.items()})
        return out


# -- torch views ----------------------------------------------------------------------

def _padded_dt(times: np.ndarray) -> np.ndarray:
    """h_t per frame [N, T]; the last frame has no successor and repeats the previous step."""
    dt = np.diff(times, axis=1)
    return np.concatenate([dt, dt[:, -1:]], axis=1)


def _tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


class WindowDataset(torch.utils.data.Dataset):
    """Context windows of length c with the next state as target.

    Item: states [c, D], controls [c, m], dt [c] (h_t of each window step, the
    last one leads to the target), target [D], system (index into the dataset).
    Windows lie inside frames [start, stop) of `time_range` (target included),
    start every `stride` frames, over the `systems` given (all by default).
    """

    def __init__(self, dataset: SystemDataset, context: int, *, stride: int = 1,
                 systems: list[int] | None = None, time_range: tuple[int, int] | None = None,
                 dtype: torch.dtype = torch.float32):
        context = _positive_int("context", context)
        stride = _positive_int("stride", stride)
        start, stop = time_range if time_range is not None else (0, dataset.steps)
        if not 0 <= start < stop <= dataset.steps:
            raise MetaSymError(f"time_range {time_range} must lie in [0, {dataset.steps}]")
        if stop - start < context + 1:
            raise MetaSymError(f"context {context} needs at least {context + 1} frames, "
                               f"time_range has {stop - start}")
        self.systems = list(range(len(dataset))) if systems is None else [int(i) for i in systems]
        if any(not 0 <= i < len(dataset) for i in self.systems):
            raise MetaSymError(f"systems must be indices in [0, {len(dataset)})")
        self.context = context
        self.starts = np.arange(start, stop - context, stride)
        self.states = _tensor(dataset.states, dtype)
        self.controls = _tensor(dataset.controls, dtype)
        self.dt = _tensor(_padded_dt(dataset.times), dtype)

    def __len__(self) -> int:
        return len(self.systems) * len(self.starts)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= item < len(self):
            raise IndexError(item)
        sys_pos, win = divmod(item % len(self), len(self.starts))
        i, s = self.systems[sys_pos], int(self.starts[win])
        window = slice(s, s + self.context)
        return {"states": self.states[i, window], "controls": self.controls[i, window],
                "dt": self.dt[i, window], "target": self.states[i, s + self.context],
                "system": torch.tensor(i)}


class SystemSplits:
    """Per-system split in time: support (adaptation) = frames [0, T_s), query = [T_s, T).

    `T_s = round(fraction·T)`. Each part is a dict of tensors states [T_part, D],
    controls [T_part, m], dt [T_part] (h_t; the trajectory's last frame repeats
    the previous step), times [T_part]; `stacked(part)` batches them over systems.
    """

    PARTS = ("support", "query")

    def __init__(self, dataset: SystemDataset, fraction: float = 0.5, dtype: torch.dtype = torch.float32):
        boundary = int(round(fraction * dataset.steps))
        if not 2 <= boundary <= dataset.steps - 2:
            raise MetaSymError(f"fraction {fraction} leaves a part with fewer than 2 of "
                               f"{dataset.steps} frames")
        self.boundary = boundary
        self.dataset = dataset
        self._full = {"states": _tensor(dataset.states, dtype), "controls": _tensor(dataset.controls, dtype),
                      "dt": _tensor(_padded_dt(dataset.times), dtype), "times": _tensor(dataset.times, dtype)}

    def _slice(self, part: str) -> slice:
        if part not in self.PARTS:
            raise MetaSymError(f"unknown part {part!r}; expected support or query")
        return slice(0, self.boundary) if part == "support" else slice(self.boundary, None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, dict[str, torch.Tensor]]:
        return {part: {k: v[i, self._slice(part)] for k, v in self._full.items()} for part in self.PARTS}

    def stacked(self, part: str) -> dict[str, torch.Tensor]:
        """One part of every system: states [N, T_part, D], controls [N, T_part, m], dt/times [N, T_part]."""
        return {k: v[:, self._slice(part)] for k, v in self._full.items()}

    def transitions(self, part: str) -> dict[str, torch.Tensor]:
        """Within-part transitions x_t -> x_{t+1}: x, u [N, T_part-1, ·], dt [N, T_part-1],
        next [N, T_part-1, D]."""
        p = self.stacked(part)
        return {"x": p["states"][:, :-1], "u": p["controls"][:, :-1], "dt": p["dt"][:, :-1],
                "next": p["states"][:, 1:]}
