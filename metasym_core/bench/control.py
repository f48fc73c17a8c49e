"""`metasym bench control`: does MPPI on MetaSym fly the quadrotor, and beat the nominal MPC after a change?

Four controllers fly the same time-parameterised figure-8 (`control.reference.FigureEight`)
through the same +30 % mass change, lock-stepped (`control.closed_loop.fly`), over several seeds:

- `nominal_mpc`: the Crocoddyl tracking MPC on the nominal model, never told of the change
  (what a user without learning has);
- `nominal_mppi`: the same MPPI on the nominal rigid-body step alone, never told of the change (what
  known physics gives without learning);
- `metasym_mppi_no_adapt`: MPPI on the MetaSym model, its meta-learned φ₀ throughout;
- `metasym_mppi`: the same, adapting online with the graph's learner for this model (the config's, with the
  model recipe's tuned settings over it: for `pretrained:mppi` the loss watch; an accepted adaptation
  reaches the rollouts 0.2 s later, `MetaSymMPPI.adapt_delay_s`);
- `oracle_mpc`: the Crocoddyl tracking MPC told of the change (the floor).

A seed varies the MPPI sampling and the phase of the figure-8 (its start time). Figures: position
RMSE against the reference before the change (from 2 s on, after the take-off transient; flights
that reached the change) and after it (from 2 s after it; flights that never crashed), the mean
altitude error after it, crashes (out of the box or below the floor) and when, and the
controller's solve time (p50 / p99) with the control rate it allows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from metasym_core.bench.report import DEFAULT_DOC, cpu_model, markdown_table, text_table, update_section
from metasym_core.errors import MetaSymError

CONTROLLERS = ("nominal_mpc", "nominal_mppi", "metasym_mppi_no_adapt", "metasym_mppi", "oracle_mpc")
SETTLE_S = 2.0  # take-off transient / post-change window left out of the RMSEs


def _controller(name: str, model, cfg: dict, reference, dt: float, mppi, seed: int, checkpoint: str):
    from metasym_core.control.crocoddyl_mpc import CrocoddylTracker
    from metasym_core.control.metasym_mppi import MetaSymMPPI, NominalMPPI
    from metasym_core.online.learner import learner_settings
    from metasym_core.systems import quadrotor as quad

    if name.endswith("_mpc"):
        return CrocoddylTracker({k: 1.0 for k in quad.PARAM_NAMES}, reference, dt)
    if name == "nominal_mppi":
        return NominalMPPI(model, reference, dt, mppi, seed=seed)
    return MetaSymMPPI(model, reference, dt, mppi,
                       learner_settings(cfg, checkpoint=checkpoint) if name == "metasym_mppi" else None, seed=seed)


def run_control_bench(seeds: int = 5, seconds: float = 30.0, change_at: float = 10.0, scale: float = 1.3,
                      samples: int | None = None, horizon: int | None = None, checkpoint: str = "pretrained:mppi",
                      plot: str | None = None, doc=DEFAULT_DOC,
                      command: str = "metasym bench control", threads: int | None = None) -> dict[str, float]:
    """Figures (keys carry their unit) of the four controllers over `seeds` seeds (module doc). `samples`,
    `horizon` and `threads` default to the controller node's (the config's `ros.controller`)."""
    import torch

    from metasym_core.control.closed_loop import Change, fly
    from metasym_core.control.mppi import MPPIConfig
    from metasym_core.control.reference import FigureEight
    from metasym_core.online.heap import keep_heap
    from metasym_core.online.predictor import load_model

    if seeds < 1 or not seconds > change_at + SETTLE_S or not change_at > SETTLE_S:
        raise MetaSymError(f"need --seeds >= 1 and {SETTLE_S:g} s < --change-at < --seconds - {SETTLE_S:g} s")
    model, cfg, _ = load_model("quadrotor", checkpoint, "cpu")
    node = cfg["ros"]["controller"]
    samples = int(node["samples"]) if samples is None else samples
    horizon = int(node["horizon"]) if horizon is None else horizon
    threads = int(node["threads"]) if threads is None else threads
    if samples < 2 or horizon < 1 or threads < 1:
        raise MetaSymError(f"need --samples >= 2, --horizon >= 1 and --threads >= 1, got {samples}, {horizon}, "
                           f"{threads}")
    torch.set_num_threads(threads)
    keep_heap()  # as the controller node does
    mppi = MPPIConfig(samples=samples, horizon=horizon, noise_std=float(node["noise_std"]),
                      temperature=float(node["temperature"]))
    dt = float(cfg["ros"]["simulator"]["dt"])
    flights = {name: [] for name in CONTROLLERS}
    runs = [(seed, name) for seed in range(seeds) for name in CONTROLLERS]
    for seed, name in tqdm(runs, desc="closed-loop flights", unit="flight"):
        reference = FigureEight(start_s=FigureEight().period_s * seed / max(seeds, 1))
        controller = _controller(name, model, cfg, reference, dt, mppi, seed, checkpoint)
        change = Change("mass", scale, change_at, tell=name == "oracle_mpc")
        flights[name].append(fly(controller, reference, seconds, dt, change))
    figures: dict[str, float] = {"seeds": seeds, "flight_s": seconds, "change_at_s": change_at,
                                 "mppi_samples": samples, "mppi_horizon": horizon, "solve_threads": threads}
    rows = []
    for name in CONTROLLERS:
        fs = flights[name]
        reached = [f for f in fs if not f.crashed or f.times[-1] >= change_at]  # flew until the change
        whole = [f for f in fs if not f.crashed]
        before = [f.rmse(SETTLE_S, change_at) for f in reached]
        after = [f.rmse(change_at + SETTLE_S) for f in whole]
        altitude = [f.altitude_error(change_at + SETTLE_S) for f in whole]
        solve = np.concatenate([f.solve_ms for f in fs])
        crashes = sum(f.crashed for f in fs)
        crash_times = [float(f.times[-1]) for f in fs if f.crashed]
        figures[f"{name}_rmse_before_change_m"] = _mean(before)
        figures[f"{name}_rmse_after_change_m"] = _mean(after)
        figures[f"{name}_altitude_error_after_change_m"] = _mean(altitude)
        figures[f"{name}_crashes"] = crashes
        figures[f"{name}_first_crash_s"] = round(min(crash_times), 2) if crash_times else math.nan
        figures[f"{name}_solve_p50_ms"] = round(float(np.percentile(solve, 50)), 2)
        figures[f"{name}_solve_p99_ms"] = round(float(np.percentile(solve, 99)), 2)
        figures[f"{name}_max_rate_hz"] = round(1e3 / float(np.percentile(solve, 99)), 1)
        at = f" (at {', '.join(f'{t:.1f}' for t in sorted(crash_times))} s)" if crash_times else ""
        rows.append([name, _cell(before), _cell(after), _cell(altitude), f"{crashes}/{seeds}{at}",
                     f"{figures[f'{name}_solve_p50_ms']:.1f} / {figures[f'{name}_solve_p99_ms']:.1f}"])
    nominal = figures["nominal_mpc_rmse_after_change_m"]
    for name in ("metasym_mppi", "metasym_mppi_no_adapt", "nominal_mppi"):  # issue 16's criterion: no crash
        crashed = figures[f"{name}_crashes"] > 0
        ratio = figures[f"{name}_rmse_after_change_m"] / nominal if nominal > 0 and not crashed else math.nan
        figures[f"{name}_over_nominal_after_change"] = round(ratio, 3) if math.isfinite(ratio) else math.nan
    header = ["controller", "RMSE before change [m]", "RMSE after change [m]", "altitude error after [m]",
              "crashes", "solve p50 / p99 [ms]"]
    print(f"CPU: {cpu_model()}")
    print(text_table(header, rows))
    print(_summary(figures))
    if plot:
        _plot(plot, flights, change_at)
    body = (f"Closed loop, lock-stepped (`metasym_core.control`): a figure-8 of ±{FigureEight().a:g} m × "
            f"±{FigureEight().b / 2:g} m at {FigureEight().altitude:g} m, one lap per {FigureEight().period_s:g} s "
            f"(peak {FigureEight().peak_speed:.2f} m/s), flown {seconds:g} s at {1 / dt:g} Hz with mass ×{scale:g} "
            f"at {change_at:g} s, seeds 0-{seeds - 1} (MPPI sampling and the lap's phase). MPPI: K = {samples}, "
            f"H = {horizon}, model `{checkpoint}` (`pretrained:mppi`: d_model 32, a correction to the nominal "
            f"rigid-body step, `residual: nominal:quadrotor`, trained on MPC flights with smooth random thrust "
            f"perturbations of 0.5 N and the mass varying, `metasym_core/pretrained/quadrotor_mppi.recipe.json`); "
            f"`nominal_mppi`: the same MPPI on that nominal step alone; the Crocoddyl MPCs: 20 nodes of 0.05 s. "
            f"RMSE before the change "
            f"from {SETTLE_S:g} s on (flights that reached the change), after it from {SETTLE_S:g} s after it (flights "
            f"that did not crash); mean ± spread over those seeds. Solve times are the controller's own, on this "
            f"CPU, {threads} thread{'s' if threads > 1 else ''}."
            f"\n\n{markdown_table(header, rows)}")
    update_section("Closed loop: MPPI on MetaSym against the nominal MPC", body, command, doc=doc)
    return figures


def _summary(figures: dict[str, float]) -> str:
    """One line: the adapting MetaSym-MPPI's tracking after the change against the nominal MPC's."""
    def after(name: str) -> str:
        crashes = figures[f"{name}_crashes"]
        rmse = figures[f"{name}_rmse_after_change_m"]
        return (f"{rmse:.3f} m" if math.isfinite(rmse) else "—") + (f" ({crashes} crashed)" if crashes else "")

    ratio = figures["metasym_mppi_over_nominal_after_change"]
    return (f"After the mass change: MetaSym-MPPI adapting {after('metasym_mppi')}, without adaptation "
            f"{after('metasym_mppi_no_adapt')}, the nominal MPC {after('nominal_mpc')}, MPPI on the nominal "
            f"physics {after('nominal_mppi')}, the oracle {after('oracle_mpc')}; adapting / nominal MPC = "
            + (f"{ratio:.2f} (target <= 0.5, no crash)" if math.isfinite(ratio) else "n/a (a flight crashed)"))


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else math.nan


def _cell(values) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "—"
    return f"{np.mean(finite):.3f} ± {np.std(finite):.3f}"


def _plot(path: str, flights: dict, change_at: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metasym_core.io import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, fs in flights.items():
        f = fs[0]
        top.plot(f.positions[:, 0], f.positions[:, 1], label=name, lw=1)
        bottom.plot(f.times, f.errors, label=name, lw=1)
    f = flights[CONTROLLERS[0]][0]
    top.plot(f.reference[:, 0], f.reference[:, 1], "k--", lw=0.8, label="reference")
    top.set(xlabel="x [m]", ylabel="y [m]", title="seed 0: path", aspect="equal")
    bottom.axvline(change_at, color="grey", ls=":")
    bottom.set(xlabel="t [s]", ylabel="position error [m]", title="seed 0: error (mass change dotted)")
    top.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
