"""`metasym flight`: online few-shot adaptation in the live quadrotor flight sim, over ROS 2.

Starts the quadrotor node graph (simulator → predictor → learner, separate processes,
the parameters of `metasym_ros.graph.node_graph` like the launch file; `--no-adapt`
leaves the learner out) and records /metasym/state, /metasym/prediction,
/metasym/metrics and /metasym/adaptation in this process for `duration` seconds of
simulated time (step·dt; the simulator runs at rate_hz·dt times wall time).

The realised horizon-H error of every prediction is computed here, from the
predictions and the states that arrive later (`RealisedErrorTracker`, keyed by the
simulator's `step`), so the summary splits it exactly into: before the parameter
change, after the change until the first accepted adaptation, and after it.

A published prediction rolls out under the simulator MPC's plan (`metasym/control_plan`),
which is not quite what the MPC will then do: it re-plans at every step. So after the
flight every evaluated prediction is also re-run from the same context, with the same
parameter version, under the controls that were then applied (the *model error*, the
part adaptation can fix) and with the last control held (what the predictor published
before plans: the same-run baseline). The summary reports all three phase by phase, and
each against holding the last state (`metasym_core.online.skill`), over the flight and
per 2 s window.
Writes `<out>/flight.png` (trajectory, error over time) and `<out>/flight.json`
(summary figures and the series behind the plot); the nodes' output goes to
`<out>/nodes.log`. rclpy is imported inside functions only.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metasym_core.checkpoint import resolve_checkpoint
from metasym_core.errors import MetaSymError

SYSTEM = "quadrotor"
START_TIMEOUT_S = 90.0  # wall seconds until the first prediction (node start-up, model warm-up)
MARGIN_STEPS = 20  # live processing stays this far behind the newest state (predictions still in flight)
CHANGE_PARAMS = ("mass", "inertia", "arm", "torque")


@dataclass
class FlightConfig:
    """What to fly (the `metasym flight` arguments)."""

    checkpoint: str = "pretrained"
    duration_s: float = 30.0
    change_time_s: float = 10.0
    change_param: str = "mass"
    change_scale: float = 1.3
    out: str = "runs/flight"
    adapt: bool = True
    overrides: dict[str, object] = field(default_factory=dict)  # extra node_graph overrides

    def validate(self) -> None:
        """Raise MetaSymError (one line) on a bad argument."""
        from metasym_core.systems.quadrotor.flight import SET_PARAM_RANGE

        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise MetaSymError(f"--duration must be a positive number of simulated seconds, got {self.duration_s}")
        if not (math.isfinite(self.change_time_s) and 0 <= self.change_time_s < self.duration_s):
            raise MetaSymError(f"--change-time must be in [0, duration={self.duration_s:g}), "
                               f"got {self.change_time_s}")
        if self.change_param not in CHANGE_PARAMS:
            raise MetaSymError(f"--change-param must be one of {', '.join(CHANGE_PARAMS)}, "
                               f"got {self.change_param!r}")
        lo, hi = SET_PARAM_RANGE
        if not (math.isfinite(self.change_scale) and lo <= self.change_scale <= hi):
            raise MetaSymError(f"--change-scale must be in [{lo:g}, {hi:g}], got {self.change_scale}")
        if self.checkpoint and not Path(resolve_checkpoint(self.checkpoint, SYSTEM)).is_file():
            raise MetaSymError(f"checkpoint not found: {self.checkpoint}")


class FlightRecorder:
    """Thread-safe record of the four topics, and the realised error of each prediction.

    Callbacks (executor thread) only append; `process(upto_step)` (main thread) replays
    states and predictions in step order through a `RealisedErrorTracker`: at each step
    the state is observed first, then the predictions made from it are added.
    """

    def __init__(self, horizon: int, system: str = SYSTEM) -> None:
        from metasym_core.online.realised import RealisedErrorTracker

        self.horizon, self.system = horizon, system
        self.tracker = RealisedErrorTracker(max_pending=100_000, history=4 * horizon)
        self.lock = threading.Lock()
        self.states: dict[int, tuple[float, np.ndarray, np.ndarray, float]] = {}  # step -> stamp, x, params, dt
        self.stamp_step: dict[tuple[int, int], int] = {}
        self.predictions: dict[int, list[tuple[np.ndarray, int, float]]] = {}  # base step -> (states, v, lat)
        self.unmatched_predictions = 0
        self.prediction_count = 0
        self.prediction_stamps: list[float] = []  # every prediction received, matched to a state here or not
        self.metrics: list[dict] = []
        self.adaptations: list[dict] = []
        self.evaluations: list[tuple[int, int, float]] = []  # base step, version, realised mse
        self.model_evaluations: list[tuple[int, int, float]] = []  # base step, version, model mse (hindcast)
        self.held_evaluations: list[tuple[int, int, float]] = []  # ... the same, the last control held
        self.control_sources: dict[str, int] = {}  # predictions received by Prediction.control_source
        self.latest_step = -1
        self._cursor = 0  # next step to replay
        self._late: list[tuple[tuple[int, int], np.ndarray, int, float]] = []

    # -- callbacks -------------------------------------------------------------------------------
    def on_state(self, msg) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        x = np.array(msg.state, dtype=np.float64)
        params = np.array(msg.param_values, dtype=np.float64)
        u = np.array(msg.control, dtype=np.float64)
        with self.lock:
            self.states[int(msg.step)] = (stamp, x, params, float(msg.dt), u)
            self.stamp_step[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = int(msg.step)
            self.latest_step = max(self.latest_step, int(msg.step))

    def on_prediction(self, msg) -> None:
        latency_ms = 1e3 * (time.time() - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec))
        states = np.array(msg.states, dtype=np.float64).reshape(msg.horizon, msg.state_dim)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self.lock:
            self.prediction_count += 1
            self.control_sources[msg.control_source] = self.control_sources.get(msg.control_source, 0) + 1
            self.prediction_stamps.append(key[0] + 1e-9 * key[1])
            self._late.append((key, states, int(msg.params_version), latency_ms))

    def on_metrics(self, msg) -> None:
        with self.lock:
            self.metrics.append({"wall": time.time(), "realised_mse": msg.realised_mse, "model_mse": msg.model_mse,
                                 "latency_ms": msg.latency_ms, "params_version": int(msg.params_version),
                                 "dropped": int(msg.dropped_messages)})

    def on_adaptation(self, msg) -> None:
        with self.lock:
            self.adaptations.append({"stamp": msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec,
                                     "version": int(msg.version), "accepted": bool(msg.accepted),
                                     "latency_ms": float(msg.latency_ms), "loss_before": float(msg.loss_before),
                                     "loss_after": float(msg.loss_after), "reason": msg.reason,
                                     "params_path": msg.params_path, "model_tag": msg.model_tag,
                                     "params": [(p.name, list(p.shape), np.array(p.values)) for p in msg.params]})

    # -- replay ----------------------------------------------------------------------------------
    def _file_predictions(self) -> None:
        """Key the received predictions by the step of the state they start from (header stamp)."""
        keep = []
        for key, states, version, latency in self._late:
            step = self.stamp_step.get(key)
            if step is None:
                keep.append((key, states, version, latency))
            else:
                self.predictions.setdefault(step, []).append((states, version, latency))
        self._late = keep

    def process(self, upto_step: int) -> list[tuple[int, int, float]]:
        """Replay steps up to `upto_step`; returns the evaluations finished by it."""
        # the lock guards a snapshot only: the replay runs outside it, so the subscription callbacks
        # (which stamp the arrival latencies) never wait for it
        with self.lock:
            self._file_predictions()
            batch = [(step, self.states.get(step), tuple(self.predictions.get(step, ())))
                     for step in range(self._cursor, upto_step + 1)]
            self._cursor = max(self._cursor, upto_step + 1)
        done = []
        for step, state, predictions in batch:
            if state is not None:
                done += self.tracker.observe(step, state[1])
            for states, version, _ in predictions:
                done += self.tracker.add(step, states, version)
        out = [(e.base_step, e.version, e.mse) for e in done if e.matched == self.horizon]
        self.evaluations += out
        return out

    def finish(self) -> None:
        """Replay everything; predictions whose state never arrived here are counted as unmatched."""
        self.process(self.latest_step)
        with self.lock:
            self.unmatched_predictions = len(self._late)

    def hindcast(self, checkpoint: str) -> None:
        """Rerun every evaluated prediction (module doc) from the same context with the same parameter
        version, under the controls that were then applied (`model_evaluations`: the model error) and
        with the newest control held (`held_evaluations`: what the predictor published before plans):
        per parameter version, one batch of contexts and two batched rollouts."""
        import torch

        from metasym_core.online.local_params import from_entries, load_local_params
        from metasym_core.online.predictor import OnlinePredictor, load_model
        from metasym_core.online.realised import Hindcast

        predictor = OnlinePredictor(load_model(self.system, checkpoint, "cpu")[0], self.horizon)
        c, H = predictor.context, self.horizon
        expected = {k: v.detach() for k, v in predictor.model.decoder.local_parameters().items()}
        accepted = {a["version"]: a for a in self.adaptations if a["accepted"] and not a.get("model_tag")}
        by_version: dict[int, list[int]] = {}
        for base, version, _ in self.evaluations:
            if all(s in self.states for s in range(base - c + 1, base + H + 1)):
                by_version.setdefault(version, []).append(base)
        model_out, held_out = [], []
        for version, bases in sorted(by_version.items()):
            local = None
            if version:
                try:
                    status = accepted[version]
                    local = (from_entries(status["params"], expected) if status["params"] else
                             load_local_params(status["params_path"], expected, torch.device("cpu"))[0])
                except (KeyError, MetaSymError):
                    continue  # announced before this recorder listened, or its file is gone
            predictor.set_local(local, version)
            rows = [[self.states[s] for s in range(b - c + 1, b + H + 1)] for b in bases]
            x, u = (np.array([[r[i] for r in w] for w in rows]) for i in (1, 4))
            steps = np.array([[r[3] for r in w] for w in rows])
            for out, future in ((model_out, u[:, c:]), (held_out, np.repeat(u[:, c - 1:c], H, axis=1))):
                batch = Hindcast(bases, x[:, :c], u[:, :c], steps, future, x[:, c:])
                out += [(b, version, float(m)) for b, m in zip(bases, predictor.hindcast(batch), strict=True)]
        self.model_evaluations, self.held_evaluations = sorted(model_out), sorted(held_out)

    def change_step(self) -> int | None:
        """The first recorded step whose physical parameters differ from the first state's (None: no change)."""
        steps = sorted(self.states)
        first = self.states[steps[0]][2] if steps else None
        return next((s for s in steps if not np.allclose(self.states[s][2], first)), None)

    def skill(self, dt: float, change_s: float | None, window_s: float = 2.0) -> dict[str, float]:
        """Published, held-control and model errors against holding the last state (`skill_summary`), over
        the whole flight and per `window_s` window, the `window_s` after the change left out of the windows."""
        from metasym_core.online.skill import hold_errors, skill_summary

        states = {step: record[1] for step, record in self.states.items()}
        exclude = (change_s, change_s + window_s) if change_s is not None else None
        out: dict[str, float] = {}
        for prefix, evaluations in (("", self.evaluations), ("held_", self.held_evaluations),
                                    ("model_", self.model_evaluations)):
            ev = np.array(evaluations, dtype=np.float64).reshape(-1, 3)
            hold = hold_errors(states, ev[:, 0].astype(np.int64), self.horizon)
            figures = skill_summary(ev[:, 0] * dt, ev[:, 2], hold, window_s, exclude)
            out.update({prefix + k: v for k, v in figures.items()})
            if not prefix:
                out["hold_mse"] = float(np.nanmean(hold)) if np.isfinite(hold).any() else float("nan")
        return out


def _phase_errors(evaluations: list, horizon: int, change_step: int | None, first_version: int | None,
                  prefix: str = "") -> dict[str, float]:
    """Mean error before the change, after it until the first adapted prediction, and after that.

    `evaluations` are (base step, version, mse); keys are `<prefix>mse_before_change` etc.
    """
    ev = np.array(evaluations, dtype=np.float64).reshape(-1, 3)
    base, version, mse = ev[:, 0], ev[:, 1], ev[:, 2]

    def mean(mask) -> float:
        return float(np.mean(mse[mask])) if np.any(mask) else float("nan")

    if change_step is None:
        out = {"mse_before_change": mean(np.ones_like(mse, dtype=bool)), "mse_after_change": float("nan"),
               "mse_after_adaptation": float("nan")}
    else:
        before = base + horizon < change_step  # the whole horizon before the change
        after = base >= change_step  # predicted from a changed state
        adapted = version >= first_version if first_version is not None else np.zeros_like(after)
        out = {"mse_before_change": mean(before), "mse_after_change": mean(after & ~adapted),
               "mse_after_adaptation": mean(after & adapted), "evaluations_before_change": int(before.sum()),
               "evaluations_after_change": int((after & ~adapted).sum()),
               "evaluations_after_adaptation": int((after & adapted).sum())}
    ratio = out["mse_after_adaptation"] / out["mse_after_change"] if out["mse_after_change"] > 0 else float("nan")
    out["error_ratio_after_adaptation_over_after_change"] = ratio
    return {prefix + k: v for k, v in out.items()}


def summarise(rec: FlightRecorder, cfg: FlightConfig, wall_s: float) -> dict:
    """The summary figures (keys carry their unit) of a recorded flight."""
    steps = np.array(sorted(rec.states), dtype=np.int64)
    if steps.size == 0:
        raise MetaSymError("no states were received")
    dt = rec.states[int(steps[0])][3]
    stamps = np.array([rec.states[int(s)][0] for s in steps])
    change_step = rec.change_step()
    change_t = change_step * dt if change_step is not None else float("nan")
    change_stamp = rec.states[change_step][0] if change_step is not None else math.inf

    def sim_time(stamp: float) -> float:  # wall stamp (same host clock) -> simulated time
        return float(np.interp(stamp, stamps, steps * dt))

    # adaptations started after the change (finish stamp - latency), so their window can hold changed states
    post = [a for a in rec.adaptations if a["accepted"] and a["stamp"] - 1e-3 * a["latency_ms"] >= change_stamp]
    first = post[0] if post else None
    first_version = first["version"] if first else None
    out = {"duration_sim_s": float(steps[-1] * dt), "wall_s": round(wall_s, 2), "dt_s": dt,
           "states_received": int(steps.size), "predictions_received": rec.prediction_count,
           "predictions_unmatched": rec.unmatched_predictions, "horizon_steps": rec.horizon,
           "change_param": cfg.change_param, "change_scale": cfg.change_scale, "change_time_sim_s": change_t,
           "adapt": cfg.adapt, "adaptations_attempted": len(rec.adaptations),
           "adaptations_accepted": sum(a["accepted"] for a in rec.adaptations),
           "adaptations_accepted_after_change": len(post)}
    out.update(_phase_errors(rec.evaluations, rec.horizon, change_step, first_version))
    out.update(_phase_errors(rec.model_evaluations, rec.horizon, change_step, first_version, "model_"))
    out.update(_phase_errors(rec.held_evaluations, rec.horizon, change_step, first_version, "held_"))
    out.update(rec.skill(dt, change_t if change_step is not None else None))
    out["predictions_under_plan"] = rec.control_sources.get("plan", 0)
    out["predictions_under_held_control"] = rec.control_sources.get("held", 0)
    out["first_adaptation_after_change_sim_s"] = sim_time(first["stamp"]) - change_t if first else float("nan")
    adapted_steps = [s for s, preds in rec.predictions.items() if change_step is not None and s >= change_step
                     and first_version is not None and any(v >= first_version for _, v, _ in preds)]
    out["first_adapted_prediction_after_change_sim_s"] = (min(adapted_steps) * dt - change_t if adapted_steps
                                                          else float("nan"))
    out["first_adaptation_latency_ms"] = first["latency_ms"] if first else float("nan")
    lat = [a["latency_ms"] for a in rec.adaptations]
    out["adaptation_latency_mean_ms"] = float(np.mean(lat)) if lat else float("nan")
    e2e = [lat for preds in rec.predictions.values() for _, _, lat in preds]
    out["prediction_latency_p50_ms"] = float(np.percentile(e2e, 50)) if e2e else float("nan")
    out["prediction_latency_p99_ms"] = float(np.percentile(e2e, 99)) if e2e else float("nan")
    rollout = [m["latency_ms"] for m in rec.metrics if math.isfinite(m["latency_ms"])]
    out["predictor_rollout_mean_ms"] = float(np.mean(rollout)) if rollout else float("nan")
    pred_t = np.sort([sim_time(t) for t in rec.prediction_stamps])  # the time of the state each starts from
    gaps = np.diff(pred_t) if pred_t.size > 1 else np.array([math.inf])
    out["prediction_max_gap_sim_s"] = float(np.max(gaps))
    out["prediction_max_gap_at_sim_s"] = float(pred_t[np.argmax(gaps)]) if pred_t.size > 1 else float("nan")
    out["first_prediction_sim_s"] = float(pred_t[0]) if pred_t.size else float("nan")
    out["last_prediction_sim_s"] = float(pred_t[-1]) if pred_t.size else float("nan")
    out["states_lost_here"] = int(steps[-1] - steps[0] + 1 - steps.size)  # best effort: missing in this recorder
    out["_adaptations_sim_s"] = [(sim_time(a["stamp"]), a["version"], a["accepted"]) for a in rec.adaptations]
    return out


def plot_flight(path: Path, rec: FlightRecorder, summary: dict) -> None:
    """Predicted vs actual positions, and the realised error over time with change and adaptations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metasym_core.io import atomic_path
    from metasym_core.systems.quadrotor import position_of

    dt = summary["dt_s"]
    steps = np.array(sorted(rec.states), dtype=np.int64)
    truth = position_of(np.stack([rec.states[int(s)][1] for s in steps]))
    fig, axes = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    ax = axes[0]
    for k, name in enumerate("xyz"):
        ax.plot(steps * dt, truth[:, k], color=f"C{k}", lw=1.8, label=f"actual {name}")
    every = max(1, int(round(0.5 / dt)))  # one predicted H-step trajectory every 0.5 s simulated
    first = True
    for s in sorted(rec.predictions)[::every]:
        states, version, _ = rec.predictions[s][0]
        pos = position_of(states)
        t = (s + 1 + np.arange(len(states))) * dt
        for k in range(3):
            ax.plot(t, pos[:, k], color=f"C{k}", ls="--", lw=1.0, alpha=0.9,
                    label="predicted (H steps, every 0.5 s)" if first and k == 0 else None)
        first = False
    ax.set(ylabel="position [m]", title=f"quadrotor flight: {summary['change_param']} ×{summary['change_scale']:g} "
                                        f"at t = {summary['change_time_sim_s']:.2f} s")
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax = axes[1]
    ev = np.array(rec.evaluations, dtype=np.float64).reshape(-1, 3)
    if len(ev):
        ax.semilogy(ev[:, 0] * dt, ev[:, 2], ".", ms=2.0, color="0.6",
                    label=f"published prediction, MSE over H={rec.horizon}")
    hev = np.array(rec.held_evaluations, dtype=np.float64).reshape(-1, 3)
    if len(hev):
        ax.semilogy(hev[:, 0] * dt, hev[:, 2], ".", ms=1.5, color="C1", alpha=0.4,
                    label="baseline: same prediction, last control held")
    mev = np.array(rec.model_evaluations, dtype=np.float64).reshape(-1, 3)
    if len(mev):
        ax.semilogy(mev[:, 0] * dt, mev[:, 2], ".", ms=2.5, color="C0",
                    label="model error: same prediction under the applied controls")
    for t, version, accepted in summary["_adaptations_sim_s"]:
        if accepted:
            ax.axvline(t, color="C2", lw=1.0, label="accepted adaptation")
            ax.text(t, 1.0, f" v{version}", color="C2", fontsize=7, transform=ax.get_xaxis_transform(), va="top")
        else:
            ax.axvline(t, color="0.6", lw=0.8, ls=":", label="refused adaptation")
    for ax_ in axes:
        ax_.axvline(summary["change_time_sim_s"], color="C3", lw=1.5, ls="-.",
                    label="parameter change" if ax_ is axes[1] else None)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper left")
    ax.set(xlabel="simulated time [s]", ylabel="MSE over the horizon",
           title="prediction error (per prediction, by the time it was made)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(x: float, unit: str = "") -> str:
    return "n/a" if not (isinstance(x, (int, float)) and math.isfinite(x)) else f"{x:.4g}{unit}"


def summary_table(s: dict) -> str:
    """The terminal table of a flight summary."""
    from metasym_core.bench.report import text_table

    rows = []
    for prefix, what in (("model_", "model error (applied controls)"), ("", "published predictions"),
                         ("held_", "baseline: the same, last control held")):
        rows += [[f"{what}: MSE before the change", _fmt(s[prefix + "mse_before_change"]),
                  f"{s.get(prefix + 'evaluations_before_change', 0)} predictions"],
                 ["  after the change, before adaptation", _fmt(s[prefix + "mse_after_change"]),
                  f"{s.get(prefix + 'evaluations_after_change', 0)} predictions"],
                 ["  after adaptation", _fmt(s[prefix + "mse_after_adaptation"]),
                  f"{s.get(prefix + 'evaluations_after_adaptation', 0)} predictions; ratio "
                  f"{_fmt(s[prefix + 'error_ratio_after_adaptation_over_after_change'])}"]]
    rows += [["published MSE / hold-the-state MSE", _fmt(s["ratio_to_hold"]),
              f"baseline, last control held: {_fmt(s['held_ratio_to_hold'])}; applied controls: "
              f"{_fmt(s['model_ratio_to_hold'])}; {s['predictions_under_plan']} predictions under a plan, "
              f"{s['predictions_under_held_control']} held"],
             ["  2 s windows with a ratio ≤ 0.5", _fmt(s["windows_at_most_0.5_fraction"]),
              f"of {s['windows']} (the 2 s after the change left out); worst {_fmt(s['window_ratio_max'])}; "
              f"baseline: {_fmt(s['held_windows_at_most_0.5_fraction'])}"],
             ["change → first accepted adaptation", _fmt(s["first_adaptation_after_change_sim_s"], " s"),
              f"simulated; adapted predictions from +{_fmt(s['first_adapted_prediction_after_change_sim_s'], ' s')}"],
             ["adaptation latency", _fmt(s["first_adaptation_latency_ms"], " ms"),
              f"first after the change; mean {_fmt(s['adaptation_latency_mean_ms'], ' ms')} over "
              f"{s['adaptations_attempted']} attempts ({s['adaptations_accepted']} accepted)"],
             ["state → prediction latency p50 / p99", f"{_fmt(s['prediction_latency_p50_ms'])} / "
              f"{_fmt(s['prediction_latency_p99_ms'], ' ms')}",
              f"rollout mean {_fmt(s['predictor_rollout_mean_ms'], ' ms')}"]]
    return text_table(["measure", "value", "note"], rows)


def _graph_specs(cfg: FlightConfig) -> tuple[list, int]:
    """The nodes to start (no learner for --no-adapt) and the predictor's horizon."""
    from metasym_ros.graph import node_graph

    overrides = {"checkpoint": cfg.checkpoint, "change_param": cfg.change_param,
                 "change_scale": float(cfg.change_scale), "change_time": float(cfg.change_time_s),
                 **cfg.overrides}
    specs = [s for s in node_graph(SYSTEM, overrides) if cfg.adapt or s.name != "learner"]
    return specs, int(next(s for s in specs if s.name == "predictor").parameters.get("horizon", 30))


def _wait_for(what: str, done, graph, timeout_s: float = START_TIMEOUT_S) -> None:
    end = time.monotonic() + timeout_s
    while not done():
        dead = graph.dead()
        if dead is not None:
            raise MetaSymError(f"node {dead.args[3]} exited with code {dead.returncode} (see nodes.log)")
        if time.monotonic() > end:
            raise MetaSymError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def run_flight(cfg: FlightConfig, log=print) -> dict:
    """Fly, record, summarise, plot; returns the summary figures."""
    cfg.validate()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # talk to this graph only

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from metasym_core.io import atomic_write_text
    from metasym_ros import qos
    from metasym_ros.msg import AdaptationStatus, Prediction, PredictionMetrics, SystemState
    from metasym_ros.tools.launcher import GraphRunner

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.checkpoint:
        log("[flight] warning: no --checkpoint: the nodes use an UNTRAINED model")
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("metasym_flight_recorder", context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    start = time.monotonic()
    with open(out / "nodes.log", "w", encoding="utf-8") as log_file, GraphRunner(stdout=log_file) as graph:
        try:
            specs, horizon = _graph_specs(cfg)
            rec = FlightRecorder(horizon)
            for typ, topic, profile, cb in (
                    (SystemState, qos.STATE_TOPIC, qos.STATE_QOS, rec.on_state),
                    (Prediction, qos.PREDICTION_TOPIC, qos.PREDICTION_QOS, rec.on_prediction),
                    (PredictionMetrics, qos.METRICS_TOPIC, qos.METRICS_QOS, rec.on_metrics),
                    (AdaptationStatus, qos.ADAPTATION_TOPIC, qos.ADAPTATION_QOS, rec.on_adaptation)):
                node.create_subscription(typ, "/" + topic, cb, profile)
            thread.start()
            # listeners first: the simulator's clock starts with its first state, and states sent before
            # the predictor, learner and this recorder subscribed would be lost to them
            listeners = [spec for spec in specs if spec.name != "simulator"]
            graph.start(listeners)
            _wait_for("the nodes to subscribe", lambda: node.count_subscribers("/" + qos.STATE_TOPIC)
                      >= len(listeners) + 1, graph)
            sim = [spec for spec in specs if spec.name == "simulator"]
            sim[0].parameters["wait_for_subscribers"] = len(listeners) + 1  # its clock starts once all listen
            graph.start(sim)
            log(f"[flight] started {', '.join(s.name for s in specs)}; flying {cfg.duration_s:g} s simulated, "
                f"{cfg.change_param} ×{cfg.change_scale:g} at t = {cfg.change_time_s:g} s "
                f"({'with' if cfg.adapt else 'WITHOUT'} online adaptation); node output in {out / 'nodes.log'}")
            _fly(cfg, rec, graph, start, log)
        finally:
            executor.shutdown(timeout_sec=5)
            thread.join(timeout=5)
            node.destroy_node()
            context.try_shutdown()
            codes = graph.stop()
    wall_s = time.monotonic() - start
    rec.finish()
    rec.hindcast(cfg.checkpoint)
    summary = summarise(rec, cfg, wall_s)
    summary["node_exit_codes"] = codes
    plot_flight(out / "flight.png", rec, summary)
    ev = np.array(rec.evaluations, dtype=np.float64).reshape(-1, 3)
    mev = np.array(rec.model_evaluations, dtype=np.float64).reshape(-1, 3)
    series = {"prediction_sim_s": (ev[:, 0] * summary["dt_s"]).round(4).tolist(),
              "prediction_version": ev[:, 1].astype(int).tolist(), "realised_mse": ev[:, 2].tolist(),
              "model_sim_s": (mev[:, 0] * summary["dt_s"]).round(4).tolist(),
              "model_version": mev[:, 1].astype(int).tolist(), "model_mse": mev[:, 2].tolist(),
              "adaptations": [{k: v for k, v in a.items() if k != "params"} for a in rec.adaptations]}
    figures = {k: v for k, v in summary.items() if not k.startswith("_")}
    atomic_write_text(out / "flight.json", json.dumps({"figures": figures, "series": series}, indent=1,
                                                      default=float))
    log(summary_table(summary))
    if cfg.adapt and not summary["adaptations_attempted"]:
        log("[flight] the learner attempted no adaptation: none of its triggers fired (the quadrotor's is the "
            "residual-bias test, a persistent model error; a model that infers the change from its context, as the "
            "bundled one does, leaves none. One that must adapt to it: --checkpoint pretrained:nominal_mass)")
    log(f"[flight] {summary['duration_sim_s']:.1f} s simulated in {wall_s:.0f} s wall; plot {out / 'flight.png'}, "
        f"figures {out / 'flight.json'}")
    return figures


def _fly(cfg: FlightConfig, rec: FlightRecorder, graph, start: float, log) -> None:
    """Wait until `duration` simulated seconds have streamed; print a status line about once a second."""
    tty = sys.stdout.isatty()
    deadline = None
    last_version = 0
    while True:
        time.sleep(1.0)
        dead = graph.dead()
        if dead is not None:
            raise MetaSymError(f"node {dead.args[3]} exited with code {dead.returncode} (see nodes.log)")
        with rec.lock:
            latest = rec.latest_step
            dt = rec.states[latest][3] if latest >= 0 else 0.0
            have_prediction = rec.prediction_count > 0
            metrics = rec.metrics[-1] if rec.metrics else None
        if not have_prediction:
            if time.monotonic() - start > START_TIMEOUT_S:
                raise MetaSymError(f"no prediction within {START_TIMEOUT_S:g} s of starting the graph")
            continue
        if deadline is None:  # flying: allow twice the nominal wall time plus slack
            deadline = time.monotonic() + 2 * cfg.duration_s + 30
        new = rec.process(latest - MARGIN_STEPS)
        if new:
            last_version = new[-1][1]
        err = _fmt(float(np.mean([e[2] for e in new]))) if new else "n/a"
        lat = _fmt(metrics["latency_ms"], " ms") if metrics else "n/a"
        model_err = _fmt(metrics["model_mse"]) if metrics else "n/a"
        line = (f"[flight] t = {latest * dt:6.2f} s  MSE(H={rec.horizon}) model {model_err:>9} published {err:>9}  "
                f"params v{last_version}  predictor {lat}")
        print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
        if latest * dt >= cfg.duration_s:
            if tty:
                print()
            return
        if time.monotonic() > deadline:
            raise MetaSymError(f"the flight reached only t = {latest * dt:.1f} s simulated in time")
