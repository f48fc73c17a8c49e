"""Training speed: wall time of one outer step of each phase for each system's default
config (on the CPU, and on CUDA too when present, in the same run), and the latency
of one online adaptation (K=10 on the last 200 steps, quadrotor config) against its
100 ms target.

Outer steps run the real `Trainer` step code on random-walk data of the config's
shapes (the values do not change the cost). Adaptation is timed with one torch
thread (what the learner node should use on a small CPU; more threads only add
contention at these sizes) and with the process's default thread count.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from metasym_core.bench.report import DEFAULT_DOC, markdown_table, text_table, update_section
from metasym_core.config import build_model, load_config
from metasym_core.meta.adapt import adapt
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train.runs import open_trainer

ADAPT_TARGET_MS = 100.0


def synthetic_dataset(state_dim: int, control_dim: int, systems: int, steps: int, seed: int = 0) -> SystemDataset:
    """Random-walk trajectories of the given shapes (timing only; not a physical system)."""
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(0, 0.05, (systems, steps, state_dim)), axis=1)
    controls = rng.uniform(0, 1, (systems, steps, control_dim))
    times = np.tile(np.arange(steps) * 0.02, (systems, 1))
    return SystemDataset({"family": "synthetic"}, np.arange(systems), np.zeros((systems, 0)), times, states,
                         controls, {})


def _median_s(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _synced(fn):
    """`fn` followed by a CUDA synchronise when CUDA is in use (so its time is the GPU's too)."""
    def run():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


def outer_step_times(system: str, repeats: int = 3, device: str = "cpu") -> dict[str, float]:
    """Median seconds of one encoder-MAML and one decoder bi-level outer step (second and first order)."""
    cfg = load_config(system)
    train = cfg.get("training", {})
    c, window = cfg["model"]["decoder"]["context"], train.get("window", 40)
    ds = synthetic_dataset(cfg["state_dim"], cfg["control_dim"], max(train.get("batch_systems", 8), 2),
                           2 * (window + c) + 4)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = open_trainer(cfg, ds, ds, tmp, "fresh", progress=False, device=device)  # a scratch run
        out["encoder_step_s"] = _median_s(_synced(trainer._encoder_step), repeats)
        trainer.step = trainer.tc.encoder_steps
        out["decoder_step_s"] = _median_s(_synced(trainer._decoder_step), repeats)
        trainer.tc.first_order = True
        out["decoder_step_first_order_s"] = _median_s(_synced(trainer._decoder_step), repeats)
    return out


def adapt_latency(threads: int | None = 1, repeats: int = 20, config: str = "quadrotor") -> float:
    """Median seconds of `adapt` with K=10 on a 200-step window (config's model sizes)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build_model(load_config(config)).eval()
        x = torch.randn(200, model.state_dim).cumsum(0) * 0.05
        u = torch.rand(200, model.control_dim)
        return _median_s(lambda: adapt(model, x, u, 0.02, inner_steps=10), repeats, warmup=2)
    finally:
        torch.set_num_threads(before)


def run_train_bench(systems: list[str] | None = None, repeats: int = 3, adapt_repeats: int = 20,
                    doc=DEFAULT_DOC, command: str = "metasym bench train") -> dict[str, float]:
    """Measure, print a table, rewrite the `Training` section of the benchmarks doc; returns the figures."""
    systems = systems or ["quantum", "quadrotor", "spring_mesh"]
    figures: dict[str, float] = {}
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in systems:
        for device in devices:
            t = outer_step_times(name, repeats, device)
            rows.append([name, device, f"{1000 * t['encoder_step_s']:.1f}", f"{1000 * t['decoder_step_s']:.1f}",
                         f"{1000 * t['decoder_step_first_order_s']:.1f}"])
            for key, value in t.items():
                figures[f"{name}{'' if device == 'cpu' else '_' + device}_{key[:-2]}_ms"] = 1000 * value
    one = 1000 * adapt_latency(1, adapt_repeats)
    default = 1000 * adapt_latency(None, adapt_repeats)
    figures.update({"adapt_k10_t200_1thread_ms": one, "adapt_k10_t200_default_threads_ms": default,
                    "adapt_target_ms": ADAPT_TARGET_MS})
    header = ["system", "device", "encoder MAML step (ms)", "decoder bi-level step (ms)", "first-order step (ms)"]
    body = (markdown_table(header, rows)
            + f"\n\nOnline adaptation (quadrotor config, K=10 SGD steps on the last 200 steps): "
            f"{one:.1f} ms with 1 torch thread, {default:.1f} ms with {torch.get_num_threads()} threads "
            f"(target {ADAPT_TARGET_MS:.0f} ms). Outer steps use each config's `training:` batch and window.")
    print(text_table(header, rows))
    print(f"adapt K=10, T=200 (quadrotor): {one:.1f} ms (1 thread), {default:.1f} ms (default threads); "
          f"target {ADAPT_TARGET_MS:.0f} ms")
    if doc is not None:
        update_section("Training", body, command, doc)
    return figures
