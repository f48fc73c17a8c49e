"""Dataset generation, storage, sharding, torch views and `metasym generate`, on a tiny fake family."""

import numpy as np
import pytest
import torch

import metasym_core.systems as systems
from metasym_core.cli import main
from metasym_core.errors import MetaSymError
from metasym_core.systems.base import SystemFamily, Trajectory
from metasym_core.systems.dataset import (
    SystemSplits,
    WindowDataset,
    generate,
    load_dataset,
    merge,
    save_dataset,
)


class TinyFamily(SystemFamily):
    """A 2-D noisy oscillator with one control; cheap and fully deterministic given rng."""

    name = "tiny"
    state_dim = 2
    control_dim = 1
    state_names = ["q", "p"]
    control_names = ["u"]
    units = {"time": "s", "a": "1/s"}
    version = "test-1"
    default_systems = {"train": 5, "ood": 3}
    default_steps = 40

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def param_ranges(self, split):
        return {"a": (0.5, 1.0)} if self.check_split(split) == "train" else {"a": (1.5, 2.0)}

    def simulate(self, params, steps, rng):
        a = self.check_params(params)["a"]
        steps = self.check_steps(steps)
        times = np.concatenate([[0.0], np.cumsum(0.1 * (1 + 0.1 * rng.uniform(-1, 1, steps - 1)))])
        clean = self.scale * np.stack([np.cos(a * times), -a * np.sin(a * times)], axis=1)
        states = clean + 0.01 * rng.standard_normal(clean.shape)
        return Trajectory(params, times, states, rng.uniform(-1, 1, (steps, 1)), {"clean": clean})

    def options(self):
        return {"scale": self.scale}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(systems._REGISTRY, "tiny", f"{__name__}:TinyFamily")
    return TinyFamily()


def _bytes(arrays, path):
    save_dataset(arrays, path)
    return path.read_bytes()


def test_generate_arrays_and_metadata(tiny):
    arrays = generate(tiny, "train", 4, 30, seed=3, workers=1, progress=False)
    ds = load_dataset_from(arrays)
    assert ds.states.shape == (4, 30, 2) and ds.controls.shape == (4, 30, 1) and ds.times.shape == (4, 30)
    assert ds.params.shape == (4, 1) and ds.extras["clean"].shape == (4, 30, 2)
    assert np.all((ds.params >= 0.5) & (ds.params <= 1.0))
    md = ds.metadata
    assert (md["family"], md["split"], md["seed"], md["systems"], md["steps"], md["shard"]) == (
        "tiny", "train", 3, 4, 30, None)
    assert md["generator_version"] == "test-1" and md["options"] == {"scale": 1.0}
    assert md["param_ranges"] == {"a": [0.5, 1.0]} and md["state_names"] == ["q", "p"]
    assert ds.param_dict(2) == {"a": float(ds.params[2, 0])}
    assert np.array_equal(ds.trajectory(1).states, ds.states[1])


def load_dataset_from(arrays):
    from metasym_core.systems.dataset import SystemDataset

    return SystemDataset.from_arrays(arrays)


def test_same_seed_same_bytes_and_workers_do_not_matter(tiny, tmp_path):
    one = _bytes(generate(tiny, "ood", 5, 20, seed=1, workers=1, progress=False), tmp_path / "a.npz")
    pool = _bytes(generate(tiny, "ood", 5, 20, seed=1, workers=2, progress=False), tmp_path / "b.npz")
    other = _bytes(generate(tiny, "ood", 5, 20, seed=2, workers=1, progress=False), tmp_path / "c.npz")
    assert one == pool and one != other
    assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o644


def test_shards_merge_to_the_single_run_bit_for_bit(tiny, tmp_path):
    full = generate(tiny, "train", 7, 25, seed=5, workers=1, progress=False)
    parts = [generate(tiny, "train", 7, 25, seed=5, shard=(k, 3), workers=1, progress=False)
             for k in range(3)]
    assert parts[1]["system_index"].tolist() == [1, 4]
    np.testing.assert_array_equal(parts[1]["states"], full["states"][[1, 4]])
    merged = merge([parts[2], parts[0], parts[1]])
    assert _bytes(merged, tmp_path / "m.npz") == _bytes(full, tmp_path / "f.npz")
    with pytest.raises(MetaSymError, match="exactly once"):
        merge(parts[:2])
    with pytest.raises(MetaSymError, match="exactly once"):
        merge([parts[0], parts[0], parts[1], parts[2]])
    with pytest.raises(MetaSymError, match="differ in seed"):
        merge([parts[0], generate(tiny, "train", 7, 25, seed=6, shard=(1, 3), workers=1, progress=False)])


def test_bad_generate_arguments(tiny):
    for kwargs, match in [({"split": "test"}, "unknown split"), ({"systems": 0}, "systems"),
                          ({"steps": -1}, "steps"), ({"seed": -1}, "seed"), ({"shard": (3, 3)}, "shard"),
                          ({"shard": (4, 5)}, "holds no systems"), ({"workers": 0}, "workers")]:
        args = {"split": "train", "systems": 3, "steps": 5, **kwargs}
        with pytest.raises(MetaSymError, match=match):
            generate(tiny, args.pop("split"), progress=False, **args)


def test_load_rejects_missing_truncated_and_foreign_files(tiny, tmp_path):
    path = tmp_path / "d.npz"
    data = _bytes(generate(tiny, "train", 2, 10, workers=1, progress=False), path)
    ds = load_dataset(path)
    assert ds.family == "tiny" and len(ds) == 2 and ds.steps == 10
    with pytest.raises(MetaSymError, match="not found"):
        load_dataset(tmp_path / "nope.npz")
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MetaSymError, match="truncated"):
        load_dataset(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(MetaSymError, match="truncated"):
        load_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", states=np.zeros(3))
    with pytest.raises(MetaSymError, match="lacks arrays"):
        load_dataset(tmp_path / "foreign.npz")
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF  # inside an array: zip CRC check
    (tmp_path / "crc.npz").write_bytes(bytes(corrupt))
    with pytest.raises(MetaSymError):
        load_dataset(tmp_path / "crc.npz")


def test_window_dataset_shapes_and_targets(tiny):
    ds = load_dataset_from(generate(tiny, "train", 3, 20, workers=1, progress=False))
    windows = WindowDataset(ds, context=5)
    assert len(windows) == 3 * (20 - 5)
    item = windows[16]  # system 1, window start 1
    assert item["states"].shape == (5, 2) and item["controls"].shape == (5, 1) and item["dt"].shape == (5,)
    assert item["target"].shape == (2,) and item["states"].dtype == torch.float32 and int(item["system"]) == 1
    np.testing.assert_allclose(item["target"].numpy(), ds.states[1, 6], rtol=1e-6)
    np.testing.assert_allclose(item["dt"].numpy(), np.diff(ds.times[1, 1:7]), rtol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(windows, batch_size=4)))
    assert batch["states"].shape == (4, 5, 2) and batch["dt"].shape == (4, 5)
    assert batch["target"].shape == (4, 2)
    w64 = WindowDataset(ds, context=3, stride=4, systems=[2], time_range=(10, 20), dtype=torch.float64)
    assert len(w64) == len(range(10, 17, 4)) and w64[0]["states"].dtype == torch.float64
    assert torch.equal(w64[-1]["target"], torch.from_numpy(ds.states[2, 17]))
    with pytest.raises(MetaSymError, match="context"):
        WindowDataset(ds, context=20)


def test_system_splits(tiny):
    ds = load_dataset_from(generate(tiny, "train", 3, 20, workers=1, progress=False))
    splits = SystemSplits(ds, fraction=0.6)
    assert len(splits) == 3 and splits.boundary == 12
    one = splits[1]
    assert one["support"]["states"].shape == (12, 2) and one["query"]["states"].shape == (8, 2)
    assert one["query"]["controls"].shape == (8, 1) and one["query"]["dt"].shape == (8,)
    stacked = splits.stacked("query")
    assert stacked["states"].shape == (3, 8, 2) and stacked["dt"].shape == (3, 8)
    trans = splits.transitions("support")
    assert trans["x"].shape == (3, 11, 2) and trans["next"].shape == (3, 11, 2)
    assert trans["dt"].shape == (3, 11)
    assert torch.equal(trans["next"][:, 0], trans["x"][:, 1])
    with pytest.raises(MetaSymError, match="fraction"):
        SystemSplits(ds, fraction=0.99)


def test_cli_generate_shard_and_merge(tiny, tmp_path, capsys):
    common = ["generate", "tiny", "--split", "ood", "--seed", "4", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "full.npz"), "--set", "scale=2"]) == 0
    assert "3 systems x 40 steps" in capsys.readouterr().out
    ds = load_dataset(tmp_path / "full.npz")
    assert ds.metadata["options"] == {"scale": 2.0} and ds.split == "ood"
    for k in range(2):
        out = str(tmp_path / f"p{k}.npz")
        assert main(common + ["--out", out, "--shard", f"{k}/2", "--set", "scale=2"]) == 0
    assert main(["generate", "--merge", str(tmp_path / "m.npz"), str(tmp_path / "p1.npz"),
                 str(tmp_path / "p0.npz")]) == 0
    assert (tmp_path / "m.npz").read_bytes() == (tmp_path / "full.npz").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["generate", "pendulum"], "unknown system"),
    (["generate", "tiny", "--systems", "-2"], "--systems must be >= 1"),
    (["generate", "tiny", "--steps", "ten"], "--steps must be an integer"),
    (["generate", "tiny", "--shard", "2/2"], "bad shard"),
    (["generate", "tiny", "--shard", "1of2"], "bad shard"),
    (["generate", "tiny", "--split", "test"], "unknown split"),
    (["generate", "tiny", "--set", "colour=red"], "bad option"),
    (["generate", "tiny", "--set", "scale"], "KEY=VALUE"),
    (["generate", "tiny", "--out", "{tmp}/missing/x.npz"], "does not exist"),
    (["generate", "tiny", "--out", "{tmp}"], "is a folder"),
    (["generate"], "name a system"),
    (["generate", "--merge", "{tmp}/m.npz", "{tmp}/nope.npz"], "not found"),
])
def test_cli_bad_input_is_one_line_and_leaves_no_file(tiny, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in args and "--merge" not in args:
        args += ["--out", str(tmp_path / "x.npz")]
    assert main(args + ["--quiet"] if "--merge" not in args else args) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("metasym: error:") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_set_values_parse_numbers_booleans_and_lists():
    from metasym_core.systems.cli import parse_options

    assert parse_options(["grid=4", "damped=false", "scale=1e-3", "fixed=[mass]", "pair=[1, x]", "none=[]",
                          "source=flight"]) == {"grid": 4, "damped": False, "scale": 1e-3, "fixed": ["mass"],
                                                "pair": [1, "x"], "none": [], "source": "flight"}
