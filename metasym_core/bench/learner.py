"""`metasym bench learner`: does the online learner tell a new system from a manoeuvre?

Replays the learner node's adaptation policy lock-stepped (`metasym_core.online.replay`) on the
simulator's quadrotor flights, over several seeds: steady flights with no parameter change
(every attempt there is a false alarm), and flights with a change at 10 s (+30 % mass, +50 %
inertia, −20 % rotor arm), where it counts the time to the first accepted adaptation. The
learner the launched graph runs with the model (the config's, with the model recipe's tuned
settings over it: the residual-bias test) runs next to the baseline, the loss-watch learner
the graph ran before (next-step-loss watch and realised-error rise, both 2; no bias test).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from metasym_core.bench.report import DEFAULT_DOC, cpu_model, markdown_table, text_table, update_section
from metasym_core.errors import MetaSymError

CHANGES = (("mass", 1.3), ("inertia", 1.5), ("arm", 0.8))
CHANGE_AT_S = 10.0
#: The baseline's triggers: the loss watch and realised-error rise, the bias test off (the quadrotor graph's learner
#: before the residual-bias test; the closed-loop model's recipe still runs it).
LOSS_WATCH = {"watch_rise": 2.0, "error_rise": 2.0, "bias_threshold": 0.0}


def run_learner_bench(seeds: int = 5, steady_s: float = 80.0, after_s: float = 10.0,
                      checkpoint: str = "pretrained:nominal_mass",
                      doc=DEFAULT_DOC, command: str = "metasym bench learner") -> dict[str, float]:
    """Figures (keys carry their unit) of the config's learner and the baseline over `seeds` seeds."""
    import torch

    from metasym_core.checkpoint import bundled_learner
    from metasym_core.online.learner import learner_settings
    from metasym_core.online.predictor import load_model
    from metasym_core.online.replay import fly_quadrotor, replay_learner

    if seeds < 1 or not steady_s > 0 or not after_s > 0:
        raise MetaSymError("--seeds, --steady and --after must be positive")
    torch.set_num_threads(1)
    model, cfg, _ = load_model("quadrotor", checkpoint, "cpu")
    tuned = bundled_learner(checkpoint, "quadrotor")  # the settings a bundled model was tuned with
    adapting = {k: v for k, v in tuned.items() if k not in (*LOSS_WATCH, "bias_window", "bias_reference")}
    policies = {"bias": learner_settings(cfg, checkpoint=checkpoint),  # what the graph runs with this model
                "baseline": learner_settings(cfg, {**adapting, **LOSS_WATCH})}  # how it adapts, not when
    runs = [(seed, None) for seed in range(seeds)] + [(seed, c) for c in CHANGES for seed in range(seeds)]
    steady = {name: [] for name in policies}  # attempts per steady flight
    detect = {(name, c[0]): [] for name in policies for c in CHANGES}  # s from the change to the first acceptance
    for seed, change in tqdm(runs, desc="replaying flights", unit="flight"):
        if change is None:
            flight = fly_quadrotor(seed, steady_s)
        else:
            flight = fly_quadrotor(seed, CHANGE_AT_S + after_s, (change[0], change[1], CHANGE_AT_S))
        for name, settings in policies.items():
            attempts = replay_learner(model, flight, settings)
            if change is None:
                steady[name].append(len(attempts))
            else:
                first = [a.t_s for a in attempts if a.accepted and a.t_s >= CHANGE_AT_S]
                detect[(name, change[0])].append(first[0] - CHANGE_AT_S if first else float("nan"))
    figures: dict[str, float] = {"seeds": seeds, "steady_flight_s": steady_s}
    for name in policies:
        prefix = "" if name == "bias" else "baseline_"
        counts = np.array(steady[name], dtype=float)
        figures[f"{prefix}steady_attempts_max"] = float(counts.max())
        figures[f"{prefix}steady_attempts_mean"] = round(float(counts.mean()), 2)
        for param, _ in CHANGES:
            t = np.array(detect[(name, param)])
            figures[f"{prefix}{param}_detected_within_1s_fraction"] = round(float(np.mean(t <= 1.0)), 3)
            figures[f"{prefix}{param}_first_acceptance_median_s"] = (round(float(np.nanmedian(t)), 3)
                                                                     if np.isfinite(t).any() else float("nan"))
            figures[f"{prefix}{param}_never_accepted_count"] = int(np.isnan(t).sum())
    header = ["measure", "the graph's learner (residual-bias test)", "baseline: loss watch + error rise"]
    rows = [[f"attempts in {steady_s:g} s of steady flight (max / mean over seeds)",
             f"{figures['steady_attempts_max']:g} / {figures['steady_attempts_mean']:g}",
             f"{figures['baseline_steady_attempts_max']:g} / {figures['baseline_steady_attempts_mean']:g}"]]
    for param, scale in CHANGES:
        cells = []
        for prefix in ("", "baseline_"):
            cells.append(f"{100 * figures[f'{prefix}{param}_detected_within_1s_fraction']:.0f} % within 1 s; "
                         f"median {figures[f'{prefix}{param}_first_acceptance_median_s']} s; "
                         f"never {figures[f'{prefix}{param}_never_accepted_count']}")
        rows.append([f"{param} ×{scale:g} at {CHANGE_AT_S:g} s → first accepted adaptation", *cells])
    print(f"CPU: {cpu_model()}")
    print(text_table(header, rows))
    tuned_text = (f"; both adapt as the model was tuned to (its recipe: "
                  f"{', '.join(f'`{k}: {v:g}`' for k, v in adapting.items())})" if adapting else "")
    body = (f"The learner node's adaptation policy replayed lock-stepped on the simulator's quadrotor flights "
            f"(`metasym_core.online.replay`: the node's 0.1 s timer and 1 s model-error metrics on the stream's "
            f"clock, 100 states per second, adaptations taking no stream time), model `{checkpoint}`, seeds "
            f"0-{seeds - 1}: {steady_s:g} s of steady flight (every attempt a false alarm; target ≤ 3), and a "
            f"change at {CHANGE_AT_S:g} s followed for {after_s:g} s (target: a first accepted adaptation within "
            f"1 s). Residual-bias test: the learner the launched graph runs with this model (the config's, the "
            f"model recipe's settings over it): `bias_threshold: {policies['bias']['bias_threshold']:g}` "
            f"(`bias_window: {policies['bias']['bias_window']}`, `bias_reference: "
            f"{policies['bias']['bias_reference']}` transitions), `watch_rise: {policies['bias']['watch_rise']:g}`, "
            f"`error_rise: {policies['bias']['error_rise']:g}`; baseline: the loss-watch learner the graph ran "
            f"before (`watch_rise: {LOSS_WATCH['watch_rise']:g}`, `error_rise: {LOSS_WATCH['error_rise']:g}`, no "
            f"bias test){tuned_text}.\n\n{markdown_table(header, rows)}")
    update_section("Online learner: new system or manoeuvre", body, command, doc=doc)
    return figures
