"""`metasym demo`: the offline MetaSym story on quadrotors, end to end on a laptop CPU.

1. simulate a family of quadrotors flying waypoints under Crocoddyl MPC (the
   flights the ROS simulator node flies; train, validation and out-of-distribution
   splits), 2. meta-train MetaSym (encoder MAML, then the bi-level decoder),
   3. adapt to each unseen OOD quadrotor from a few seconds of its data and compare
   rollout errors before/after, 4. plot.

Every stage is cached in the output folder (datasets, checkpoint), so a second
run only evaluates; `recipe.json` beside the model records what made it, and a
model made by another recipe (other data or config) is moved aside and retrained.
The ROS flight demo (`metasym flight`, `metasym launch quadrotor`) builds on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metasym_core.bench.report import text_table
from metasym_core.checkpoint import load_checkpoint
from metasym_core.config import data_options, data_tag, load_config
from metasym_core.errors import MetaSymError
from metasym_core.io import atomic_path, atomic_write_text
from metasym_core.systems import make_family
from metasym_core.systems.dataset import load_dataset
from metasym_core.train.runs import dataset_once, open_trainer

# (split, systems, seed): validation and test are disjoint OOD draws
_SPLITS = {"train": ("train", 30, 0), "val": ("ood", 4, 1), "ood": ("ood", 10, 2)}


def _data() -> tuple[dict, int]:
    """Family options and stored steps of the demo's datasets (`data:` in config/quadrotor.yaml)."""
    options, steps = data_options(load_config("quadrotor"))
    return options, steps or make_family("quadrotor", **options).default_steps


def _dataset(out: Path, name: str, log) -> Path:
    options, steps = _data()
    tag = data_tag(options)
    path = out / "data" / f"quadrotor{tag}_{steps}_{name}.npz"
    split, systems, seed = _SPLITS[name]
    return dataset_once(path, make_family("quadrotor", **options), split, systems, steps, seed,
                        log=lambda text: log(f"[demo] {text} ({steps} steps each, {options or 'defaults'})"),
                        progress=True)


def _recipe(max_steps: int, seed: int) -> dict:
    """Everything the demo model depends on (compared with the cached model's `recipe.json`)."""
    cfg = load_config("quadrotor")
    options, steps = _data()
    return {"family_options": options, "data_tag": data_tag(options), "steps": steps, "splits": _SPLITS,
            "max_steps": max_steps,
            "seed": seed, "model": cfg.get("model"), "training": cfg.get("training"),
            "command": f"metasym demo --max-steps {max_steps} --seed {seed}"}


def _train(out: Path, data: dict[str, Path], max_steps: int, seed: int, log) -> Path:
    """The demo's model: cached when its recipe matches, else meta-trained (continuing an interrupted run)."""
    run, recipe = out / "run", json.loads(json.dumps(_recipe(max_steps, seed)))
    final, stamp = run / "final.pt", run / "recipe.json"
    cached = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else None
    if final.is_file() and cached == recipe:
        log(f"[demo] using the cached model {final} (delete it to retrain)")
        return final
    if run.exists() and cached != recipe:
        aside = out / f"run.old-{time.strftime('%Y%m%d-%H%M%S')}"
        log(f"[demo] the model in {run} was made by another recipe: moved to {aside}, retraining")
        run.rename(aside)
    log(f"[demo] meta-training MetaSym on {data['train'].name} ({max_steps} outer steps at most)")
    # an interrupted run of this recipe continues from its last.pt
    trainer = open_trainer(load_config("quadrotor"), load_dataset(data["train"]), load_dataset(data["val"]), run,
                           "auto", seed=seed, max_steps=max_steps)
    atomic_write_text(stamp, json.dumps(recipe, indent=1))  # before training: a resumed run keeps its recipe
    trainer.run()
    return final


def _plot(path: Path, model, ds, result: dict, shots: int, horizon: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metasym_core.meta.adapt import adapt
    from metasym_core.systems.quadrotor import position_of
    from metasym_core.train.data import padded_steps

    i = int(np.argmax([r["mse_before"] - r["mse_after"] for r in result["systems"]]))
    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(ds.states[i]).to(dtype)
    u = torch.from_numpy(ds.controls[i]).to(dtype)
    h = torch.from_numpy(padded_steps(ds.times[i:i + 1])[0]).to(dtype)
    c = model.context
    res = adapt(model, x[:shots], u[:shots], h[:shots], result["inner_steps"], result["inner_lr"],
                horizon=result["adapt_horizon"])
    args = (x[None, shots - c:shots], u[None, shots - c:shots], h[None, shots - c:shots + horizon], horizon,
            u[None, shots:shots + horizon])
    with torch.no_grad():
        before = model.rollout(*args)[0].numpy()
        after = model.rollout(*args, local_params=res.local_params)[0].numpy()
    t = ds.times[i, shots:shots + horizon]
    truth = ds.states[i, shots:shots + horizon]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k in range(3):
        axes[0].plot(t, position_of(truth)[:, k], "k-", lw=2, label="truth" if k == 0 else None)
        axes[0].plot(t, position_of(before)[:, k], "C3--", label="meta-trained, not adapted" if k == 0 else None)
        axes[0].plot(t, position_of(after)[:, k], "C0-", label=f"adapted ({shots} shots)" if k == 0 else None)
    axes[0].set(title=f"OOD quadrotor {result['systems'][i]['system']}: position x, y, z", xlabel="t [s]",
                ylabel="m")
    axes[0].legend(fontsize=8)
    err_b = ((before - truth) ** 2).mean(1)
    err_a = ((after - truth) ** 2).mean(1)
    axes[1].semilogy(t, err_b, "C3--", label="not adapted")
    axes[1].semilogy(t, err_a, "C0-", label="adapted")
    axes[1].set(title="squared error over the horizon", xlabel="t [s]")
    axes[1].legend(fontsize=8)
    rows = result["systems"]
    idx = np.arange(len(rows))
    axes[2].bar(idx - 0.2, [r["mse_before"] for r in rows], 0.4, color="C3", label="not adapted")
    axes[2].bar(idx + 0.2, [r["mse_after"] for r in rows], 0.4, color="C0", label="adapted")
    axes[2].set(yscale="log", title="rollout MSE per OOD system", xlabel="system")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_demo(out: str | Path = "runs/demo", max_steps: int = 1800, shots: int = 100, horizon: int = 50,
             seed: int = 0, log=print) -> dict:
    """Run (or resume) the whole demo in `out`; returns the evaluation summary."""
    from metasym_core.train.evaluate import evaluate

    steps = _data()[1]
    if shots < 1 or horizon < 1 or shots + horizon > steps:
        raise MetaSymError(f"shots + horizon must be <= {steps} (the stored steps), both >= 1; "
                           f"got {shots} + {horizon}")
    if max_steps < 1:
        raise MetaSymError(f"--max-steps must be >= 1, got {max_steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(1)  # the models are small: one intra-op thread is fastest and predictable
    data = {name: _dataset(out, name, log) for name in _SPLITS}
    model, extra = load_checkpoint(_train(out, data, max_steps, seed, log))
    tc = extra.get("training", {}) if isinstance(extra, dict) else {}
    ood = load_dataset(data["ood"])
    log(f"[demo] adapting to {len(ood)} unseen OOD quadrotors from {shots} observed steps each")
    result = evaluate(model, ood, shots, horizon, inner_steps=int(tc.get("inner_steps", 10)),
                      inner_lr=float(tc.get("inner_lr", 0.1)), adapt_horizon=int(tc.get("rollout_horizon", 0)))
    png = out / "quadrotor_adaptation.png"
    _plot(png, model, ood, result, shots, horizon)
    atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    rows = [[r["system"], f"{r['mse_before']:.4g}", f"{r['mse_after']:.4g}", f"{r['adapt_ms']:.0f}",
             "yes" if r["adaptation_accepted"] else "no"] for r in result["systems"]]
    log(text_table(["OOD system", "MSE not adapted", "MSE adapted", "adapt ms", "accepted"], rows))
    log(f"[demo] mean rollout MSE over {horizon} steps: {result['mse_before']['mean']:.4g} -> "
        f"{result['mse_after']['mean']:.4g} (ratio {result['ratio_after_before']:.2f}); "
        f"plot {png}; {time.perf_counter() - start:.0f} s")
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `metasym demo`."""
    p = subparsers.add_parser("demo", help="quadrotor family: simulate, meta-train, adapt to OOD, plot",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output folder (datasets, model, plot; cached)")
    p.add_argument("--max-steps", type=int, default=1800, help="training outer steps at most (both phases)")
    p.add_argument("--shots", type=int, default=100, help="observed steps per OOD system used to adapt")
    p.add_argument("--horizon", type=int, default=50, help="rollout steps scored after the shots")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(a.out, a.max_steps, a.shots, a.horizon, a.seed) and 0)
