"""ROS latency benchmark: state publish → prediction receive, and the batched rollout service,
with normal scheduling (the baseline) and with a real-time (SCHED_FIFO) predictor, probe and state source.

Starts the node graph of a system as `metasym launch` does (`launcher.GraphRunner`: simulator,
predictor and learner, separate processes, on the caller's ROS domain) and a probe node in this process. Each Prediction
carries the header of the state it started from, stamped by the simulator at publish time,
so receive time − header stamp is the end-to-end latency (same host clock). Then calls
`~/rollout_batch` with K candidates. rclpy is imported inside the functions only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np
from tqdm import tqdm

from metasym_core.bench.report import DEFAULT_DOC, markdown_table, text_table, update_section
from metasym_core.config import load_config
from metasym_core.errors import MetaSymError
from metasym_ros.graph import node_environment, node_graph
from metasym_ros.realtime import fifo_priority, set_fifo
from metasym_ros.tools.launcher import GraphRunner

TARGETS = {"latency_p99_target_ms": 5.0, "rollout_k1024_target_ms": 20.0}
MIN_PREDICTIONS_PER_S = 20.0  # issue 20: every graph predicts at least this often
WARMUP_S = 3.0  # first predictions include model warm-up; not timed
START_TIMEOUT_S = 60.0
STATE_SOURCE_PRIORITY = 10  # SCHED_FIFO of the simulator in the real-time run, below the predictor's


def state_source_priority(priority: int) -> int:
    """The simulator's SCHED_FIFO priority in a run whose predictor has `priority`: below it, at most
    STATE_SOURCE_PRIORITY, and at least 1 (a predictor at 1 shares it); 0 (normal) with a normal predictor."""
    return max(1, min(STATE_SOURCE_PRIORITY, priority - 1)) if priority else 0


def _rollout_request(srv, cfg: dict, candidates: int, horizon: int, rng: np.random.Generator):
    from metasym_ros.common import f64

    D, m = cfg["state_dim"], cfg["control_dim"]
    L = cfg["model"]["decoder"]["context"]
    req = srv.Request(context_len=L, state_dim=D, control_dim=m, horizon=horizon, candidates=candidates, dt=0.02)
    req.context_states = f64(rng.normal(scale=0.1, size=L * D))
    req.context_controls = f64(rng.uniform(3.0, 4.0, size=L * m))
    req.context_dt = f64(np.full(L, 0.02))
    req.candidate_controls = f64(rng.uniform(3.0, 4.0, size=candidates * horizon * m))
    return req


def _measure(system: str, cfg: dict, rate_hz: float, horizon: int, candidates: int, repeats: int,
             duration_s: float, priority: int) -> dict:
    """One graph with the predictor (and this probe) at SCHED_FIFO `priority` (0: normal scheduling):
    the state → prediction latencies [ms], the rollout_batch round trips and server times [ms], and the
    priority the predictor and the probe really ran with (0 where it was refused)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from metasym_ros import qos
    from metasym_ros.common import stamp_seconds
    from metasym_ros.msg import AdaptationStatus, Prediction, SystemState
    from metasym_ros.srv import RolloutBatch
    from metasym_ros.tools.flight import FlightRecorder

    label = f"SCHED_FIFO {priority}" if priority else "normal scheduling"
    print(f"[bench ros] starting the {system} graph ({label})", file=sys.stderr, flush=True)
    log = tempfile.TemporaryFile(mode="w+")  # the nodes' output; a pipe could fill up and block them
    graph = GraphRunner(stdout=log)
    # the baseline runs every node normal; the real-time run the predictor at `priority` and the simulator (the
    # state source, as a robot's runs) just below it
    graph.start(node_graph(system, {"rate_hz": rate_hz, "horizon": horizon, "realtime_priority": priority,
                                    "simulator.realtime_priority": state_source_priority(priority)}))
    recorder = FlightRecorder(horizon, system)
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("metasym_ros_latency_bench", context=context)
    executor.add_node(node)
    latencies: list[float] = []
    state_latencies: list[float] = []  # the state message's own: transport and the probe's scheduling
    first: list[float] = []

    def on_prediction(msg) -> None:
        now = time.time()
        recorder.on_prediction(msg)
        if not first:
            first.append(now)
        if now - first[0] >= WARMUP_S:
            latencies.append(1e3 * (now - stamp_seconds(msg.header.stamp)))

    node.create_subscription(Prediction, "/" + qos.PREDICTION_TOPIC, on_prediction, qos.PREDICTION_QOS)
    def on_state(msg) -> None:
        now = time.time()
        recorder.on_state(msg)
        if first and now - first[0] >= WARMUP_S:
            state_latencies.append(1e3 * (now - stamp_seconds(msg.header.stamp)))

    node.create_subscription(SystemState, "/" + qos.STATE_TOPIC, on_state, qos.STATE_QOS)
    node.create_subscription(AdaptationStatus, "/" + qos.ADAPTATION_TOPIC, recorder.on_adaptation, qos.ADAPTATION_QOS)
    client = node.create_client(RolloutBatch, "/predictor/rollout_batch")
    # an MPC client of a real-time predictor runs real-time too: every thread of this probe (DDS, executor)
    probe_refused = set_fifo(priority) if priority else None
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while not first:
            if graph.dead() is not None or time.monotonic() > end:
                log.seek(0)
                raise MetaSymError(f"the {system} graph did not start: {log.read()[-500:]}")
            time.sleep(0.1)
        predictor_priority = fifo_priority(graph.pid("predictor"))
        simulator_priority = fifo_priority(graph.pid("simulator"))
        time.sleep(WARMUP_S)
        with tqdm(total=round(duration_s), desc=f"{system} graph, {label}", unit="s", leave=False) as bar:
            end = time.monotonic() + duration_s
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(1.0, left))
                bar.n = round(duration_s - max(end - time.monotonic(), 0.0))
                bar.set_postfix(predictions=len(latencies), refresh=True)
        sample = np.array(latencies)
        if sample.size == 0:
            raise MetaSymError("no predictions arrived after the warm-up")
        req = _rollout_request(RolloutBatch, cfg, candidates, horizon, np.random.default_rng(0))
        round_trip, server = [], []
        # an autonomous system (no controls) has no candidate control sequences to roll out
        for i in range(repeats + 2 if cfg["control_dim"] else 0):  # two warm-up calls
            t0 = time.perf_counter()
            res = client.call(req, timeout_sec=30.0)
            dt_ms = 1e3 * (time.perf_counter() - t0)
            if res is None or not res.success:
                raise MetaSymError(f"rollout_batch failed: {getattr(res, 'message', 'timeout')}")
            if i >= 2:
                round_trip.append(dt_ms)
                server.append(res.latency_ms)
    finally:
        if priority:
            set_fifo(0)
        executor.shutdown(timeout_sec=5)
        thread.join(timeout=5)
        node.destroy_node()
        context.try_shutdown()
        graph.close(grace_s=20.0)
        log.close()
    print("[bench ros] scoring the predictions against holding the state", file=sys.stderr, flush=True)
    skill = _skill(recorder, cfg)
    return {"skill": skill, "latency": sample, "state_latency": np.array(state_latencies),
            "round_trip": np.array(round_trip), "server": np.array(server),
            "priority": predictor_priority if probe_refused is None else 0, "refused": probe_refused,
            "simulator_priority": simulator_priority}


def _skill(recorder, cfg: dict) -> dict[str, float]:
    """What the probe saw against holding the last state (`FlightRecorder.skill`): the published predictions
    and, rerun from the same contexts with the same parameter versions, the last control held (the baseline)
    and the applied controls (the model's own error)."""
    recorder.finish()
    ros = cfg.get("ros") or {}
    checkpoint = str((ros.get("predictor") or {}).get("checkpoint", ""))
    recorder.hindcast(checkpoint)
    if not recorder.states:
        raise MetaSymError("no states were recorded")
    dt = recorder.states[min(recorder.states)][3]
    change = recorder.change_step()
    return recorder.skill(dt, change * dt if change is not None else None)


def _figures(prefix: str, run: dict, candidates: int, duration_s: float, rate_hz: float) -> dict[str, float]:
    pct = {50: "p50", 99: "p99"}
    out = {f"{prefix}latency_{name}_ms": round(float(np.percentile(run["latency"], q)), 3) for q, name in pct.items()}
    if run["state_latency"].size:
        out.update({f"{prefix}state_latency_{name}_ms": round(float(np.percentile(run["state_latency"], q)), 3)
                    for q, name in pct.items()})
    out[f"{prefix}predictions_per_s"] = round(run["latency"].size / duration_s, 1)
    out[f"{prefix}prediction_fraction"] = round(run["latency"].size / (duration_s * rate_hz), 3)
    # over the states the probe received in the same period: a source that publishes fewer states than its
    # nominal rate (behind, or throttled) lowers prediction_fraction but not this one
    out[f"{prefix}states_per_s"] = round(run["state_latency"].size / duration_s, 1)
    if run["state_latency"].size:
        out[f"{prefix}predicted_state_fraction"] = round(run["latency"].size / run["state_latency"].size, 3)
    for key in ("ratio_to_hold", "windows_at_most_0.5_fraction", "window_ratio_max"):
        for what in ("", "held_", "model_"):
            out[f"{prefix}{what}{key}"] = round(run["skill"][what + key], 4)
    for key, values in (("", run["round_trip"]), ("server_", run["server"])) if run["round_trip"].size else ():
        out.update({f"{prefix}rollout_k{candidates}_{key}{name}_ms": round(float(np.percentile(values, q)), 3)
                    for q, name in pct.items()})
    return out


def run_ros_latency_bench(duration_s: float = 60.0, rate_hz: float = 100.0, system: str = "quadrotor",
                          horizon: int = 30, candidates: int = 1024, rollout_repeats: int = 20,
                          realtime_priority: int | None = None, doc=DEFAULT_DOC,
                          command: str = "metasym bench ros") -> dict[str, float]:
    """Measure publish→prediction latency p50/p99 at `rate_hz` and the K=`candidates` rollout service, twice:
    with normal scheduling (the baseline) and with the predictor and the probe at SCHED_FIFO
    `realtime_priority` (default: the config's predictor value, else 20)."""
    if not (duration_s > 0 and rate_hz > 0 and horizon >= 1 and candidates >= 1 and rollout_repeats >= 1):
        raise MetaSymError("duration, rate, horizon, candidates and repeats must be positive")
    cfg = load_config(system)
    ros = cfg.get("ros") or {}
    predictor_cfg, simulator_cfg = ros.get("predictor") or {}, ros.get("simulator") or {}
    if realtime_priority is None:
        realtime_priority = int(predictor_cfg.get("realtime_priority") or 20)
    if type(realtime_priority) is not int or not 1 <= realtime_priority <= 99:
        raise MetaSymError(f"--realtime-priority must be 1-99 (the normal-scheduling run is the baseline), "
                           f"got {realtime_priority!r}")
    # a benchmark talks to its own graph only: keep discovery on this host unless told otherwise; the
    # probe calls rollout_batch as an MPC would, with the nodes' Fast DDS profile (config/fastdds.xml)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update(node_environment(os.environ))
    runs = {prio: _measure(system, cfg, rate_hz, horizon, candidates, rollout_repeats, duration_s, prio)
            for prio in (0, realtime_priority)}
    rt = runs[realtime_priority]
    figures = {**_figures("", runs[0], candidates, duration_s, rate_hz),
               **_figures("rt_", rt, candidates, duration_s, rate_hz), "rt_priority": rt["priority"],
               "rt_simulator_priority": rt["simulator_priority"]}
    if candidates == 1024 and cfg["control_dim"]:
        figures.update(TARGETS)
    elif candidates == 1024:
        figures["latency_p99_target_ms"] = TARGETS["latency_p99_target_ms"]
    figures["predictions_per_s_target"] = MIN_PREDICTIONS_PER_S
    if rt["refused"]:
        print(f"warning: the probe's {rt['refused']}: the second run is not real-time", file=sys.stderr)
    header = ["measure", "scheduling", "p50 ms", "p99 ms", "note"]
    fifo = f"SCHED_FIFO {rt['priority']}" if rt["priority"] else "normal (FIFO refused)"
    phases = (("", "normal", runs[0]), ("rt_", fifo, rt))
    cap = predictor_cfg.get("max_rate_hz")
    rows = [["state → prediction", sched, figures[f"{prefix}latency_p50_ms"], figures[f"{prefix}latency_p99_ms"],
             f"{run['latency'].size} predictions in {duration_s:g} s ({figures[f'{prefix}predictions_per_s']:g}/s"
             f"{f', max_rate_hz {cap:g}' if cap else ''}) for {run['state_latency'].size} states received "
             f"({figures[f'{prefix}states_per_s']:g}/s; nominal {rate_hz:g} Hz)"]
            for prefix, sched, run in phases]
    for prefix, sched, _ in phases:
        if f"{prefix}state_latency_p50_ms" in figures:
            rows.append(["state → probe (baseline)", sched, figures[f"{prefix}state_latency_p50_ms"],
                         figures[f"{prefix}state_latency_p99_ms"],
                         "the state message itself: transport and the probe's own scheduling"])
    for prefix, sched, _ in phases if cfg["control_dim"] else ():
        k = f"{prefix}rollout_k{candidates}"
        rows.append([f"rollout_batch K={candidates}", sched, figures[f"{k}_p50_ms"], figures[f"{k}_p99_ms"],
                     f"round trip; in the server {figures[f'{k}_server_p50_ms']} / "
                     f"{figures[f'{k}_server_p99_ms']} ms p50 / p99"])
    print(text_table(header, rows))
    skill_header = ["what the subscriber sees", "scheduling", "published", "baseline: last control held",
                    "model error (applied controls)"]
    skill_rows = []
    for prefix, sched, _ in phases:
        for key, what in (("ratio_to_hold", "MSE / hold-the-state MSE, whole run"),
                          ("windows_at_most_0.5_fraction", "2 s windows with a ratio ≤ 0.5"),
                          ("window_ratio_max", "worst 2 s window ratio")):
            skill_rows.append([what, sched] + [figures[f"{prefix}{w}{key}"] for w in ("", "held_", "model_")])
    print(text_table(skill_header, skill_rows))
    service = (f" and calls `rollout_batch` {rollout_repeats} times as an MPC would, after the streaming phase "
               f"while the graph keeps running" if cfg["control_dim"] else
               " (the system has no controls, so no `rollout_batch` calls)")
    body = (f"{system} graph as `metasym launch {system}` starts it (simulator, predictor and learner with the "
            f"config's model, separate processes, Fast DDS with config/fastdds.xml on localhost; the config's "
            f"scheduled parameter change), horizon {horizon}, states at {rate_hz:g} Hz for {duration_s:g} s "
            f"after a {WARMUP_S:g} s warm-up; the probe (this process, rclpy SingleThreadedExecutor) stamps "
            f"arrival against the state's header stamp (of each prediction, and as the same-run "
            f"baseline of each state message itself: what transport and the probe's scheduling cost before the "
            f"predictor does anything){service}. Two graphs, one after the "
            f"other: `normal` with every process under normal scheduling (the predictor's and the simulator's "
            f"`realtime_priority` 0, the baseline), then `SCHED_FIFO` with the predictor's `realtime_priority` and "
            f"the probe (an MPC client) at that priority, and the simulator (the state source, as a robot's runs) "
            f"just below it (`simulator.realtime_priority` {rt['simulator_priority'] or 'refused'}; the config's "
            f"is {simulator_cfg.get('realtime_priority', 0)}); the learner stays "
            f"normal. Targets: p99 ≤ {TARGETS['latency_p99_target_ms']} ms, "
            f"K=1024 ≤ {TARGETS['rollout_k1024_target_ms']} ms, ≥ {MIN_PREDICTIONS_PER_S:g} predictions/s."
            f"\n\n{markdown_table(header, rows)}\n\n"
            f"What the probe saw on `/metasym/prediction`, scored against holding the last state over the "
            f"horizon (`metasym_core.online.skill`; ratio < 1 beats it; the 2 s after the change are left out "
            f"of the windows). The baseline reruns every scored prediction from the same context with the same "
            f"parameter version but the last control held (what the predictor published before control plans); "
            f"the model error reruns it under the controls that were then applied. Target: published ≤ 0.5 "
            f"overall and in ≥ 90 % of the windows.\n\n{markdown_table(skill_header, skill_rows)}")
    update_section("ROS latency" if system == "quadrotor" else f"ROS latency, {system}", body,
                   f"{command} --system {system}" if system != "quadrotor" else command, doc=doc)
    return figures


def register_bench(sub: argparse._SubParsersAction, common) -> None:
    """Add `metasym bench ros` (called by metasym_core.bench.cli; imports no rclpy)."""
    p = sub.add_parser("ros", help="ROS graph: state→prediction latency and the K-candidate rollout service")
    p.add_argument("--system", default="quadrotor", help="quadrotor (default), spring_mesh or quantum")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of timed streaming (default 60)")
    p.add_argument("--rate", type=float, default=100.0, help="state rate in Hz (default 100)")
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--candidates", type=int, default=1024, help="K of the rollout service (default 1024)")
    p.add_argument("--realtime-priority", type=int, default=None,
                   help="SCHED_FIFO priority of the predictor and the probe in the second run (default: the "
                        "config's predictor realtime_priority, else 20)")
    common(p)

    def run(args: argparse.Namespace) -> int:
        from metasym_core.bench.report import print_json

        figures = run_ros_latency_bench(args.duration, args.rate, args.system, args.horizon, args.candidates,
                                        realtime_priority=args.realtime_priority, doc=args.doc)
        if args.json:
            print_json(figures)
        return 0

    p.set_defaults(func=run)
