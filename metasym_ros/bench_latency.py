"""ROS latency benchmark: state publish → prediction receive, and the batched rollout service.

Starts the node graph of a system with `metasym launch` (simulator + predictor, separate
processes, on the caller's ROS domain) and a probe node in this process. Each Prediction
carries the header of the state it started from, stamped by the simulator at publish time,
so receive time − header stamp is the end-to-end latency (same host clock). Then calls
`~/rollout_batch` with K candidates. rclpy is imported inside the functions only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from metasym_core.bench.report import DEFAULT_DOC, markdown_table, text_table, update_section
from metasym_core.config import load_config
from metasym_core.errors import MetaSymError
from metasym_ros.graph import node_environment

TARGETS = {"latency_p99_target_ms": 5.0, "rollout_k1024_target_ms": 20.0}
WARMUP_S = 3.0  # first predictions include model warm-up; not timed
START_TIMEOUT_S = 60.0


def _launch(system: str, rate_hz: float, horizon: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "metasym_core.cli", "launch", system, "--set", f"rate_hz={rate_hz}",
           "--set", f"horizon={horizon}", "--set", "change_time=-1.0"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


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


def run_ros_latency_bench(duration_s: float = 60.0, rate_hz: float = 100.0, system: str = "quadrotor",
                          horizon: int = 30, candidates: int = 1024, rollout_repeats: int = 20,
                          doc=DEFAULT_DOC, command: str = "metasym bench ros") -> dict[str, float]:
    """Measure publish→prediction latency p50/p99 at `rate_hz` and the K=`candidates` rollout service."""
    if not (duration_s > 0 and rate_hz > 0 and horizon >= 1 and candidates >= 1 and rollout_repeats >= 1):
        raise MetaSymError("duration, rate, horizon, candidates and repeats must be positive")
    # a benchmark talks to its own graph only: keep discovery on this host unless told otherwise; the
    # probe calls rollout_batch as an MPC would, with the nodes' Fast DDS profile (config/fastdds.xml)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update(node_environment(os.environ))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from metasym_ros import qos
    from metasym_ros.msg import Prediction
    from metasym_ros.srv import RolloutBatch

    cfg = load_config(system)
    log = tempfile.TemporaryFile(mode="w+")  # the nodes' output; a pipe could fill up and block them
    proc = _launch(system, rate_hz, horizon, log)
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("metasym_ros_latency_bench", context=context)
    executor.add_node(node)
    latencies: list[float] = []
    first: list[float] = []

    def on_prediction(msg) -> None:
        now = time.time()
        if not first:
            first.append(now)
        if now - first[0] >= WARMUP_S:
            latencies.append(1e3 * (now - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)))

    node.create_subscription(Prediction, "/" + qos.PREDICTION_TOPIC, on_prediction, qos.PREDICTION_QOS)
    client = node.create_client(RolloutBatch, "/predictor/rollout_batch")
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    figures: dict[str, float] = {}
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while not first:
            if proc.poll() is not None or time.monotonic() > end:
                log.seek(0)
                raise MetaSymError(f"the {system} graph did not start: {log.read()[-500:]}")
            time.sleep(0.1)
        time.sleep(WARMUP_S + duration_s)
        sample = np.array(latencies)
        if sample.size == 0:
            raise MetaSymError("no predictions arrived after the warm-up")
        rng = np.random.default_rng(0)
        req = _rollout_request(RolloutBatch, cfg, candidates, horizon, rng)
        round_trip, server = [], []
        for i in range(rollout_repeats + 2):  # two warm-up calls
            t0 = time.perf_counter()
            res = client.call(req, timeout_sec=30.0)
            dt_ms = 1e3 * (time.perf_counter() - t0)
            if res is None or not res.success:
                raise MetaSymError(f"rollout_batch failed: {getattr(res, 'message', 'timeout')}")
            if i >= 2:
                round_trip.append(dt_ms)
                server.append(res.latency_ms)
    finally:
        executor.shutdown(timeout_sec=5)
        thread.join(timeout=5)
        node.destroy_node()
        context.try_shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    expected = duration_s * rate_hz
    figures.update({
        "latency_p50_ms": round(float(np.percentile(sample, 50)), 3),
        "latency_p99_ms": round(float(np.percentile(sample, 99)), 3),
        "predictions_per_s": round(sample.size / duration_s, 1),
        "prediction_fraction": round(sample.size / expected, 3),
        f"rollout_k{candidates}_p50_ms": round(float(np.percentile(round_trip, 50)), 3),
        f"rollout_k{candidates}_p99_ms": round(float(np.percentile(round_trip, 99)), 3),
        f"rollout_k{candidates}_server_p50_ms": round(float(np.percentile(server, 50)), 3),
        f"rollout_k{candidates}_server_p99_ms": round(float(np.percentile(server, 99)), 3),
    })
    if candidates == 1024:
        figures.update(TARGETS)
    header = ["measure", "p50 ms", "p99 ms", "note"]
    rows = [["state → prediction", figures["latency_p50_ms"], figures["latency_p99_ms"],
             f"{sample.size} predictions in {duration_s:g} s at {rate_hz:g} Hz states"],
            [f"rollout_batch K={candidates}", figures[f"rollout_k{candidates}_p50_ms"],
             figures[f"rollout_k{candidates}_p99_ms"],
             f"round trip; in the server {figures[f'rollout_k{candidates}_server_p50_ms']} / "
             f"{figures[f'rollout_k{candidates}_server_p99_ms']} ms p50 / p99"]]
    print(text_table(header, rows))
    body = (f"{system} graph as `metasym launch {system}` starts it (simulator, predictor and learner with the "
            f"config's model, separate processes, Fast DDS with config/fastdds.xml on localhost; no parameter "
            f"change), horizon {horizon}, states at {rate_hz:g} Hz for {duration_s:g} s after a {WARMUP_S:g} s "
            f"warm-up; the probe (this process, rclpy SingleThreadedExecutor) stamps arrival against the state's "
            f"header stamp and calls `rollout_batch` as an MPC would, after the streaming phase while the graph "
            f"keeps running. Targets: p99 ≤ {TARGETS['latency_p99_target_ms']} ms, K=1024 ≤ "
            f"{TARGETS['rollout_k1024_target_ms']} ms.\n\n{markdown_table(header, rows)}")
    update_section("ROS latency", body, command, doc=doc)
    return figures


def register_bench(sub: argparse._SubParsersAction, common) -> None:
    """Add `metasym bench ros` (called by metasym_core.bench.cli; imports no rclpy)."""
    p = sub.add_parser("ros", help="ROS graph: state→prediction latency and the K-candidate rollout service")
    p.add_argument("--system", default="quadrotor", help="quadrotor (default), spring_mesh or quantum")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of timed streaming (default 60)")
    p.add_argument("--rate", type=float, default=100.0, help="state rate in Hz (default 100)")
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--candidates", type=int, default=1024, help="K of the rollout service (default 1024)")
    common(p)

    def run(args: argparse.Namespace) -> int:
        from metasym_core.bench.report import print_json

        figures = run_ros_latency_bench(args.duration, args.rate, args.system, args.horizon, args.candidates,
                                        doc=args.doc)
        if args.json:
            print_json(figures)
        return 0

    p.set_defaults(func=run)
