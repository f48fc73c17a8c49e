"""Rollout speed: `MetaSym.rollout` against a plain eager loop that re-runs the
model on the last `c` steps for every predicted step (the textbook
implementation), all measured in the same run on the same model.

Rows: `metasym` is `MetaSym.rollout` as users call it (CPU inference runs the
compiled kernel, `models/native.py`); `numpy` forces the NumPy path
(`models/fastpath.py`, small batches only), `torch-streaming` the torch streaming
path (`models/streaming.py`); `baseline` is the plain loop; `metasym-cuda` is
`MetaSym.rollout` of the same model on the GPU (when one is used).
B=1 is the latency of one predictor call; B=1024 the throughput of a sampling
MPC scoring 1024 candidate control sequences at once.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from metasym_core.bench.report import DEFAULT_DOC, cpu_model, markdown_table, text_table, update_section
from metasym_core.config import build_model, load_config
from metasym_core.device import resolve_device
from metasym_core.errors import MetaSymError
from metasym_core.models import MetaSym, fastpath, native

#: issue 18's targets, on every machine of the fleet (2 cores, AVX2 + FMA the slowest): B=1 latency, B=1024
#: throughput, and B=1024 throughput against the plain loop measured in the same run
TARGETS = {"b1_p50_target_ms": 0.5, "b1024_target_steps_per_s": 2_000_000.0, "b1024_speedup_target": 30.0}


@torch.no_grad()
def naive_rollout(model: MetaSym, states: torch.Tensor, controls: torch.Tensor, steps: float, horizon: int,
                  future_controls: torch.Tensor) -> torch.Tensor:
    """Baseline: for every step, run the teacher-forced model on the last `context` tokens."""
    c = model.context
    B = states.shape[0]
    xs, us = states, controls
    h = torch.full((B, c, 1), steps, dtype=states.dtype)
    outs = []
    for k in range(horizon):
        nxt = model.predict_next(xs[:, -c:], us[:, -c:], h[:, -min(c, xs.shape[1]):])[:, -1:]
        outs.append(nxt)
        xs = torch.cat([xs, nxt], dim=1)
        us = torch.cat([us, future_controls[:, k:k + 1]], dim=1)
    return torch.cat(outs, dim=1)


def _torch_rollout(model: MetaSym, *args) -> torch.Tensor:
    """`model.rollout` on the torch streaming backend."""
    return model.rollout(*args, backend="torch")


def _numpy_rollout(model: MetaSym, *args) -> torch.Tensor:
    """`model.rollout` on the NumPy backend."""
    return model.rollout(*args, backend="numpy")


def _path(model: MetaSym, args: tuple) -> str:
    """Which path `model.rollout(*args)` takes on the CPU."""
    checked = model._rollout_args(*args, None)
    horizon = args[3]
    if native.try_rollout(model, *checked, horizon, None) is not None:
        return "compiled-kernel"
    return "NumPy" if fastpath.try_rollout(model, *checked, horizon, None) is not None else "torch"


def _timings(fn: Callable[[], object], repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def _cuda_rows(model: MetaSym, device: torch.device, cases: dict, horizon: int, repeats: int,
               figures: dict[str, float], rows: list) -> None:
    """`metasym-cuda` rows: the same model and inputs on `device`, checked against the CPU, synchronised timings."""
    gpu = copy.deepcopy(model).to(device)
    for B, (args, ref) in cases.items():
        dev_args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        with torch.inference_mode():
            out = gpu.rollout(*dev_args)
            if not torch.allclose(out.cpu(), ref, atol=1e-4, rtol=1e-4):
                raise MetaSymError(f"the {device} rollout disagrees with the naive loop; refusing to time it")

            def call(a=dev_args):
                gpu.rollout(*a)
                torch.cuda.synchronize(device)

            t = _timings(call, repeats if B == 1 else max(5, repeats // 20))
        p50, p99 = np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3
        if B == 1:
            figures.update({"cuda_b1_p50_ms": round(p50, 3), "cuda_b1_p99_ms": round(p99, 3)})
        else:
            figures[f"cuda_b{B}_steps_per_s"] = round(B * horizon / np.median(t), 1)
        rows.append(["metasym-cuda", B, f"{p50:.2f}", f"{p99:.2f}", f"{B * horizon / np.median(t):,.0f}"])


def run_rollout_bench(config: str = "quadrotor", horizon: int = 30, repeats: int = 200, big_batch: int = 1024,
                      doc=DEFAULT_DOC, command: str = "metasym bench rollout",
                      seed: int = 0, device: str = "auto", isa: str | None = None) -> dict[str, float | str]:
    """Measure B=1 latency and B=`big_batch` throughput for the config's model sizes (on the CPU, and
    also on CUDA when `device` resolves to it: `auto` with a GPU present, or `cuda[:N]`).

    `isa` forces the compiled kernel's ISA level (`native.isas()`), e.g. "x86-64-v3" to time the AVX2
    path on an AVX-512 machine."""
    if horizon < 1 or repeats < 1 or big_batch < 1:
        raise MetaSymError("horizon, repeats and batch must be positive")
    gpu = resolve_device(device)
    if isa is not None:
        native.use_isa(isa)
    kernel_isa = native.isa() or "not built"
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # an untrained head is zero (predicts "no change"): give every op real work
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if model.decoder.skip is not None:  # a correction, as trained: at 0.1 per input, 30 steps diverge
            model.decoder.skip.weight.mul_(0.1)
    c, D, m = model.context, model.state_dim, model.control_dim
    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}; rollout kernel ISA level: {kernel_isa}; torch threads: {threads}")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    figures: dict[str, float] = {}
    rows = []
    paths: dict[int, str] = {}
    cases: dict[int, tuple] = {}
    for B in (1, big_batch):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, c, D, generator=g)
        u = torch.randn(B, c, m, generator=g)
        fu = torch.randn(B, horizon, m, generator=g)
        args = (x, u, 0.01, horizon, fu)
        # (row, JSON key prefix, call, intra-op threads): B=1 is latency-bound, where one thread avoids
        # wake-ups per tiny op; the big batch also gets a 1-thread `metasym` row (a 2-core machine shared
        # with other jobs may not give two threads)
        variants = [("metasym", "", lambda a=args: model.rollout(*a), 1 if B == 1 else threads)]
        if B == 1:
            variants.append(("numpy", "numpy_", lambda a=args: _numpy_rollout(model, *a), 1))
        else:
            variants.append(("metasym-1thread", "onethread_", variants[0][2], 1))
        variants += [("torch-streaming", "torch_", lambda a=args: _torch_rollout(model, *a), 1 if B == 1 else threads),
                     ("baseline", "baseline_", lambda a=args: naive_rollout(model, *a), 1 if B == 1 else threads)]
        with torch.no_grad():
            paths[B] = _path(model, args)
        ref = naive_rollout(model, *args)
        cases[B] = (args, ref)
        # float32 round-off grows with the state's width (400-D spring mesh, B=1024: 3e-4 on entries up to 94):
        # the absolute tolerance scales with the rollout's magnitude
        atol = 1e-5 * max(10.0, float(ref.abs().max()))
        for name, _, fn, _ in variants[:-1]:  # every path against the naive loop before it is timed
            with torch.no_grad():
                if not torch.allclose(fn(), ref, atol=atol, rtol=1e-4):
                    raise MetaSymError(f"the {name} rollout disagrees with the naive loop; refusing to time it")
        n = repeats if B == 1 else max(5, repeats // 20)
        with torch.inference_mode():
            for name, key, fn, nthreads in variants:
                torch.set_num_threads(nthreads)
                t = _timings(fn, n)
                p50, p99 = np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3
                if B == 1:
                    figures[f"{key}b1_p50_ms"] = round(p50, 3)
                    figures[f"{key}b1_p99_ms"] = round(p99, 3)
                else:
                    figures[f"{key}b{B}_steps_per_s"] = round(B * horizon / np.median(t), 1)
                rows.append([name, B, f"{p50:.2f}", f"{p99:.2f}", f"{B * horizon / np.median(t):,.0f}"])
        torch.set_num_threads(threads)
    if gpu.type == "cuda":
        _cuda_rows(model, gpu, cases, horizon, repeats, figures, rows)
    figures[f"speedup_b{big_batch}_vs_baseline"] = round(
        figures[f"b{big_batch}_steps_per_s"] / figures[f"baseline_b{big_batch}_steps_per_s"], 1)
    quadrotor = cfg["system"] == "quadrotor"  # the targets are for quadrotor sizes (issue 18)
    if big_batch == 1024 and quadrotor:
        figures.update(TARGETS)
    figures.update({"cpu_model": cpu_model(), "kernel_isa": kernel_isa, "threads": threads})
    header = ["rollout", "batch", "p50 ms", "p99 ms", "model-steps/s"]
    print(text_table(header, rows))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    params = sum(p.numel() for p in model.parameters())
    body = (f"{cfg['system']} sizes (state {D}, control {m}, context {c}, {params} parameters), horizon "
            f"{horizon}, float32 on CPU ({cpu_model()}, rollout kernel ISA level {kernel_isa})"
            f"{' and ' + torch.cuda.get_device_name(gpu) if gpu.type == 'cuda' else ''}; "
            f"B=1 with 1 intra-op thread, B={big_batch} with {threads} "
            f"(`metasym-1thread`: with 1). "
            f"`metasym` is `MetaSym.rollout` as users call it: CPU inference runs the compiled kernel "
            f"(`models/native.py`; where it is not built, batches ≤ {fastpath.MAX_BATCH} run the NumPy path and "
            f"larger ones the torch streaming path); `numpy` and `torch-streaming` force those paths, the previous "
            f"implementations; `baseline` re-runs the model on the last {c} steps for every predicted step. "
            f"Here `metasym` ran on the {paths[1]} path at B=1 and "
            f"{'that path too' if paths[big_batch] == paths[1] else 'the ' + paths[big_batch] + ' path'} "
            f"at B={big_batch}. "
            f"Every path is checked against the baseline before it is timed. "
            f"Weights: the config's initialisation plus N(0, 0.1²) noise (an untrained head is zero). "
            f"Load average {load_before:.1f} at the start, {load_after:.1f} at the end (timings on a shared "
            f"machine are only comparable within one run). "
            + (f"Targets: B=1 p50 ≤ {TARGETS['b1_p50_target_ms']} ms, B=1024 ≥ "
               f"{TARGETS['b1024_target_steps_per_s']:,.0f} model-steps/s and ≥ "
               f"{TARGETS['b1024_speedup_target']:.0f}× the baseline at B=1024 " if quadrotor else
               f"Speed-up over the baseline at B={big_batch} ")
            + f"(here {figures[f'speedup_b{big_batch}_vs_baseline']}×).\n\n{markdown_table(header, rows)}")
    update_section("Rollout" if quadrotor else f"Rollout, {cfg['system']}", body,
                   command if quadrotor else f"{command} --config {cfg['system']}", doc=doc)
    return figures
