"""Rollout speed: MetaSym's streaming rollout against a plain eager loop that
re-runs the model on the last `c` steps for every predicted step (the textbook
implementation), both measured in the same run on the same model.

B=1 is the latency of one predictor call; B=1024 the throughput of a sampling
MPC scoring 1024 candidate control sequences at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from metasym_core.bench.report import DEFAULT_DOC, markdown_table, text_table, update_section
from metasym_core.config import build_model, load_config
from metasym_core.errors import MetaSymError
from metasym_core.models import MetaSym

TARGETS = {"b1_p50_target_ms": 1.5, "b1024_target_steps_per_s": 1_000_000.0}


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


def _timings(fn: Callable[[], object], repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def run_rollout_bench(config: str = "quadrotor", horizon: int = 30, repeats: int = 200, big_batch: int = 1024,
                      doc=DEFAULT_DOC, command: str = "metasym bench rollout",
                      seed: int = 0) -> dict[str, float]:
    """Measure B=1 latency and B=`big_batch` throughput for the config's model sizes."""
    if horizon < 1 or repeats < 1 or big_batch < 1:
        raise MetaSymError("horizon, repeats and batch must be positive")
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    c, D, m = model.context, model.state_dim, model.control_dim
    threads = torch.get_num_threads()
    figures: dict[str, float] = {}
    rows = []
    for B in (1, big_batch):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, c, D, generator=g)
        u = torch.randn(B, c, m, generator=g)
        fu = torch.randn(B, horizon, m, generator=g)
        fast = model.rollout(x, u, 0.01, horizon, fu)
        ref = naive_rollout(model, x, u, 0.01, horizon, fu)
        if not torch.allclose(fast, ref, atol=1e-4, rtol=1e-4):
            raise MetaSymError("streaming rollout disagrees with the naive loop; refusing to time it")
        # small batches are latency-bound: one intra-op thread avoids thread wake-ups per tiny op
        torch.set_num_threads(1 if B == 1 else threads)
        n = repeats if B == 1 else max(5, repeats // 20)
        with torch.inference_mode():
            args = (x, u, 0.01, horizon, fu)
            variants = [("metasym", lambda a=args: model.rollout(*a)),
                        ("baseline", lambda a=args: naive_rollout(model, *a))]
            for name, fn in variants:
                t = _timings(fn, n)
                p50, p99 = np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3
                key = "" if name == "metasym" else f"{name}_"
                if B == 1:
                    figures[f"{key}b1_p50_ms"] = round(p50, 3)
                    figures[f"{key}b1_p99_ms"] = round(p99, 3)
                else:
                    figures[f"{key}b{B}_steps_per_s"] = round(B * horizon / np.median(t), 1)
                rows.append([name, B, f"{p50:.2f}", f"{p99:.2f}", f"{B * horizon / np.median(t):,.0f}"])
        torch.set_num_threads(threads)
    if big_batch == 1024:
        figures.update(TARGETS)
    header = ["rollout", "batch", "p50 ms", "p99 ms", "model-steps/s"]
    print(text_table(header, rows))
    params = sum(p.numel() for p in model.parameters())
    body = (f"{cfg['system']} sizes (state {D}, control {m}, context {c}, {params} parameters), horizon "
            f"{horizon}, float32 on CPU; B=1 with 1 intra-op thread, B={big_batch} with {threads}. "
            f"`baseline` re-runs the model on the last {c} steps for every predicted step. "
            f"Targets: B=1 p50 ≤ {TARGETS['b1_p50_target_ms']} ms, B=1024 ≥ "
            f"{TARGETS['b1024_target_steps_per_s']:,.0f} model-steps/s.\n\n{markdown_table(header, rows)}")
    update_section("Rollout", body, command, doc=doc)
    return figures
