"""The MetaSym nodes over real DDS: simulator + predictor of the quadrotor graph.

In-process nodes (one executor thread) for the topic/service checks, and the
`metasym launch` subprocess graph for the SIGINT check and for nodes outliving a launcher. Discovery stays on this
host, on a random domain in 100-200; every in-process test runs in its own namespace.
"""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _ros_env import ros_context, wait_for  # isolates DDS before any rclpy use

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


DEADLINE_S = 20.0
HORIZON = 8


def _wait(done, what, deadline=DEADLINE_S):
    wait_for(done, what, deadline)


_ros = ros_context


def _f64(values):
    from metasym_ros.common import f64

    return f64(values)


def _now_stamp(node):
    return node.get_clock().now().to_msg()


def test_quadrotor_graph_predicts_changes_adapts_and_serves_rollouts(tmp_path):
    from metasym_ros.msg import AdaptationStatus, Prediction, PredictionMetrics, SystemState
    from metasym_ros.srv import ChangeParameter, RolloutBatch
    from nav_msgs.msg import Path

    from metasym_core.online.local_params import save_local_params
    from metasym_ros import qos
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    with _ros() as (ns, make, thread):
        sim = make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "change_time": 0.5})
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": HORIZON, "metrics_period_s": 0.5})
        probe = make("probe")
        got = {"state": [], "prediction": [], "path": [], "metrics": []}
        for key, typ, topic, profile in (("state", SystemState, qos.STATE_TOPIC, qos.STATE_QOS),
                                         ("prediction", Prediction, qos.PREDICTION_TOPIC, qos.PREDICTION_QOS),
                                         ("path", Path, qos.PATH_TOPIC, qos.PATH_QOS),
                                         ("metrics", PredictionMetrics, qos.METRICS_TOPIC, qos.METRICS_QOS)):
            probe.create_subscription(typ, topic, got[key].append, profile)
        adapt_pub = probe.create_publisher(AdaptationStatus, qos.ADAPTATION_TOPIC, qos.ADAPTATION_QOS)
        thread.start()

        # predictions: shape, stamps, times, version; path and metrics alongside
        _wait(lambda: len(got["prediction"]) >= 30 and any(math.isfinite(m.realised_mse) for m in got["metrics"]),
              "predictions and realised-error metrics")
        preds = list(got["prediction"])
        state_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["state"]}
        for p in preds:
            assert (p.system, p.horizon, p.state_dim, p.params_version) == ("quadrotor", HORIZON, 12, 0)
            assert len(p.states) == HORIZON * 12 and np.isfinite(np.asarray(p.states)).all()
            np.testing.assert_allclose(np.asarray(p.times), 0.02 * np.arange(1, HORIZON + 1))
        stamps = [p.header.stamp.sec + 1e-9 * p.header.stamp.nanosec for p in preds]
        assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), "prediction stamps must increase"
        matched = sum((p.header.stamp.sec, p.header.stamp.nanosec) in state_stamps for p in preds)
        assert matched >= 0.8 * len(preds), "prediction stamps are the stamps of the states they start from"
        path = got["path"][-1]
        assert len(path.poses) == HORIZON and path.header.frame_id == "world"
        assert all(math.isfinite(ps.pose.position.z) for ps in path.poses)

        # scheduled change (t = 0.5 s simulated) and the change_parameter service
        _wait(lambda: got["state"] and got["state"][-1].param_values[0] == pytest.approx(1.3), "scheduled change")
        client = probe.create_client(ChangeParameter, f"{ns}/simulator/change_parameter")
        _wait(client.service_is_ready, "change_parameter service")
        ok = client.call(ChangeParameter.Request(name="inertia", scale=1.2), timeout_sec=DEADLINE_S)
        assert ok.success and ok.new_value == pytest.approx(1.2)
        bad = client.call(ChangeParameter.Request(name="colour", scale=1.2), timeout_sec=DEADLINE_S)
        assert not bad.success and "colour" in bad.message
        _wait(lambda: got["state"][-1].param_values[1] == pytest.approx(1.2), "inertia change in the states")

        # adaptation: accepted local parameters travel as a file named by the (transient-local) status
        local = {k: torch.zeros_like(v) for k, v in pred.live.predictor.model.decoder.local_parameters().items()}
        path_v1 = save_local_params(tmp_path / "phi_v1.pt", local, version=1, system="quadrotor")
        status = AdaptationStatus(system="quadrotor", version=1, accepted=True, reason="test",
                                  params_path=str(path_v1), loss_before=1.0, loss_after=0.5)
        status.header.stamp = _now_stamp(probe)
        adapt_pub.publish(status)
        n_before = len(got["prediction"])
        _wait(lambda: any(p.params_version == 1 for p in got["prediction"][n_before:]), "predictions of v1")
        assert pred.live.dropped["error"] == 0

        # batched rollout service: K candidates -> K x H x D in one call
        rollout = probe.create_client(RolloutBatch, f"{ns}/predictor/rollout_batch")
        _wait(rollout.service_is_ready, "rollout_batch service")
        L, K, H, D, m = 10, 16, 12, 12, 4
        rng = np.random.default_rng(0)
        req = RolloutBatch.Request(context_len=L, state_dim=D, control_dim=m, horizon=H, candidates=K, dt=0.02)
        req.context_states = _f64(rng.normal(scale=0.1, size=L * D))
        req.context_controls = _f64(np.full(L * m, 3.6))
        req.context_dt = _f64(np.full(L, 0.02))
        req.candidate_controls = _f64(rng.uniform(3.0, 4.0, size=K * H * m))
        res = rollout.call(req, timeout_sec=DEADLINE_S)
        assert res.success, res.message
        assert (res.candidates, res.horizon, res.state_dim, res.params_version) == (K, H, D, 1)
        out = np.asarray(res.states).reshape(K, H, D)
        ref, version = pred.live.predictor.rollout_batch(  # the same single batched call, in process
            np.asarray(req.context_states).reshape(L, D), np.asarray(req.context_controls).reshape(L, m),
            np.asarray(req.context_dt), np.asarray(req.candidate_controls).reshape(K, H, m), 0.02)
        assert version == 1 and np.isfinite(out).all()
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-9)
        req.state_dim = 5
        res = rollout.call(req, timeout_sec=DEADLINE_S)
        assert not res.success and "state_dim" in res.message
        assert sim.published > 0


def test_bad_states_are_dropped_and_counted_while_predictions_continue():
    from metasym_ros.msg import Prediction, PredictionMetrics, SystemState

    from metasym_ros import qos
    from metasym_ros.predictor_node import PredictorNode

    with _ros() as (_, make, thread):
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": 5, "max_age_s": 1.0,
                                    "metrics_period_s": 0.3})
        probe = make("probe")
        preds, metrics = [], []
        probe.create_subscription(Prediction, qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        probe.create_subscription(PredictionMetrics, qos.METRICS_TOPIC, metrics.append, qos.METRICS_QOS)
        pub = probe.create_publisher(SystemState, qos.STATE_TOPIC, qos.STATE_QOS)
        thread.start()
        _wait(lambda: pub.get_subscription_count() > 0, "predictor discovery")
        rng = np.random.default_rng(0)
        step = [0]

        def state(dim=12, stamp_offset=0.0, value=None):
            msg = SystemState(system="quadrotor", dt=0.02, step=step[0])
            t = probe.get_clock().now().nanoseconds * 1e-9 + stamp_offset
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
            x = rng.normal(scale=0.1, size=dim) if value is None else np.full(dim, value)
            msg.state, msg.control = _f64(x), _f64(np.full(4, 3.6))
            step[0] += 1
            return msg

        def good_stream(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pub.publish(state())
                time.sleep(0.02)

        end = time.monotonic() + DEADLINE_S
        while len(preds) < 5:  # the first rollout may be slow (warm-up): keep streaming
            assert time.monotonic() < end, "timed out waiting for the first predictions"
            good_stream(0.1)
        for bad in (lambda: state(dim=5), lambda: state(value=math.nan),
                    lambda: state(stamp_offset=-5.0), lambda: state(stamp_offset=-0.3)):
            for _ in range(3):  # best effort: send each kind a few times
                pub.publish(bad())
                time.sleep(0.01)
                pub.publish(state())
                time.sleep(0.02)
        rejected = pred.live.window.rejected
        _wait(lambda: all(rejected[r] >= 1 for r in ("dimension", "nonfinite", "stale", "out_of_order")),
              "every kind of bad state to be counted")

        dropped_before = pred.live.dropped_total
        for _ in range(10_000):  # flood
            pub.publish(state())
        n_after_flood = len(preds)
        end = time.monotonic() + DEADLINE_S
        while len(preds) <= n_after_flood + 5:  # keep streaming: states sent while the predictor still
            assert time.monotonic() < end, "timed out waiting for predictions after the flood"
            good_stream(0.1)  # drains the flood are older than max_age_s by the time it reads them
        assert pred.live.dropped_total > dropped_before, "the flood must be throttled and counted"
        # every state sent is accounted for: accepted, rejected, skipped or lost (gaps in `step`)
        received = pred.live.window.accepted + pred.live.window.dropped
        assert step[0] - 5 <= received + pred.live.dropped["lost"] <= step[0]  # a lost last state leaves no gap
        _wait(lambda: sum(m.dropped_messages for m in metrics) == pred.live.dropped_total,
              "every dropped/skipped state reported in the metrics", deadline=5)
        live = pred.live
        print(f"flood: {dict(live.dropped)} {dict(live.window.rejected)} accepted {live.window.accepted}")
        assert all(len(p.states) == 5 * 12 for p in preds)


@pytest.mark.slow
def test_launched_graph_exits_cleanly_on_sigint():
    from metasym_ros.msg import Prediction

    from metasym_ros import qos, realtime

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "metasym_core.cli", "launch", "quadrotor", "--set", "horizon=5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with _ros() as (_, make, thread):
            probe = make("probe")
            preds = []
            probe.create_subscription(Prediction, "/" + qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
            thread.start()
            _wait(lambda: len(preds) >= 3 or proc.poll() is not None, "predictions of the launched graph", 60)
        assert proc.poll() is None, "launcher exited early:\n" + proc.stdout.read()
        # config/quadrotor.yaml runs the predictor real-time (SCHED_FIFO 20) where that is permitted
        priority = realtime.child_fifo_priority(proc.pid, "metasym_ros.predictor_node")
        assert priority == (20 if realtime.permitted(20) else 0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert ("SCHED_FIFO priority 20 refused" in out) != realtime.permitted(20), out
        assert time.monotonic() - t0 < 10, "nodes must exit within a few seconds"
        assert "killing" not in out and "unclean" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_the_graph_runner_starts_nodes_in_batches_and_stops_them_cleanly(tmp_path):
    """GraphRunner, the one way `metasym launch`, `metasym flight` and `metasym bench ros` start a graph: a
    second batch of nodes joins the first (listeners, then the simulator), and everything stops with code 0
    and leaves no parameters file behind."""
    from metasym_ros.msg import Prediction

    from metasym_ros import qos
    from metasym_ros.graph import node_graph
    from metasym_ros.tools.launcher import GraphRunner

    specs = {s.name: s for s in node_graph("quadrotor", {"horizon": 5, "change_time": -1.0,
                                                          "realtime_priority": 0})}
    lines = []
    with open(tmp_path / "nodes.log", "w+", encoding="utf-8") as log, _ros() as (_, make, thread):
        probe = make("probe")
        preds = []
        probe.create_subscription(Prediction, "/" + qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        thread.start()
        with GraphRunner(stdout=log, announce=lines.append) as graph:
            graph.start([specs["predictor"]])
            graph.start([specs["simulator"]])
            folder = Path(graph._tmp.name)
            assert sorted(p.name for p in folder.iterdir()) == ["params0.yaml", "params1.yaml"]
            _wait(lambda: len(preds) >= 3 or graph.dead() is not None, "predictions of the runner's graph", 60)
            assert graph.dead() is None, log.seek(0) or log.read()
            assert graph.pid("simulator") == graph.procs[1].pid and graph.name_of(graph.procs[0]) == "predictor"
            assert graph.stop() == [0, 0]
        assert not folder.exists()
    assert lines == [f"started predictor (pid {graph.procs[0].pid})", f"started simulator (pid {graph.procs[1].pid})"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.3, 1.5])
def test_sigint_during_start_up_exits_cleanly(tmp_path, delay_s):
    """Ctrl-C while a node still imports torch or loads its model: exit code 0, no traceback."""
    import yaml

    from metasym_ros.graph import node_graph, params_yaml
    from metasym_ros.tools.launcher import node_command

    specs = node_graph("quadrotor")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_yaml(specs)), encoding="utf-8")
    spec = next(s for s in specs if s.name == "predictor")
    proc = subprocess.Popen(node_command(spec, params), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out, out[-2000:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "launcher-only"])
def test_ctrl_c_on_the_launcher_at_any_moment_of_start_up_exits_cleanly(delay_s, terminal):
    """Ctrl-C 0.5 s, 2 s or 5 s after `metasym launch` (its own imports, the nodes' imports, the graph up):
    exit code 0, one line about it, no traceback, no node left. From a terminal, SIGINT reaches the
    whole process group (launcher and nodes at once); `launcher-only` signals the launcher alone."""
    cmd = [sys.executable, "-m", "metasym_core.cli", "launch", "quadrotor", "--set", "horizon=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        time.sleep(delay_s)
        if terminal:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out and "unclean" not in out and "KeyboardInterrupt" not in out, out[-3000:]
        said = [line for line in out.splitlines() if "interrupted during start-up" in line or "SIGINT received" in line]
        assert len(said) == 1, out[-3000:]  # one line says what happened
        _wait(lambda: not _group_alive(proc.pid), "no node left after the launcher", deadline=15)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL], ids=["closed-terminal", "killed"])
def test_no_node_outlives_its_launcher(sig):
    cmd = [sys.executable, "-m", "metasym_core.cli", "launch", "quadrotor", "--set", "horizon=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids = []
    try:
        while len(pids) < 3:
            line = proc.stdout.readline()
            assert line, "launcher exited early"
            if "metasym launch: started" in line:
                pids.append(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
        time.sleep(3.0)  # the nodes are up
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(sig)  # SIGHUP: stopped like SIGINT; SIGKILL: the kernel signals the nodes
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == (0 if sig == signal.SIGHUP else -signal.SIGKILL), out[-3000:]
        _wait(lambda: not any(_alive(pid) for pid in pids), "every node gone after its launcher", deadline=15)
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nodes_refuse_bad_parameters():
    from metasym_core.errors import MetaSymError
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    with _ros() as (_, make, _thread):
        with pytest.raises(MetaSymError, match="system"):
            make(SimulatorNode, {"system": "pendulum"})
        with pytest.raises(MetaSymError, match="change_param"):
            make(SimulatorNode, {"system": "quadrotor", "change_param": "colour"})
        with pytest.raises(MetaSymError, match="horizon"):
            make(PredictorNode, {"system": "quadrotor", "horizon": 0})
        with pytest.raises(MetaSymError, match="realtime_priority"):
            make(PredictorNode, {"system": "quadrotor", "realtime_priority": 100})
        with pytest.raises(MetaSymError, match="realtime_priority"):
            make(SimulatorNode, {"system": "quadrotor", "realtime_priority": -1})
        with pytest.raises(MetaSymError, match="checkpoint not found"):
            make(PredictorNode, {"system": "quadrotor", "checkpoint": "/nonexistent.pt"})


def test_learner_adapts_online_and_predictor_swaps_in_its_parameters(tmp_path):
    """simulator → learner → (file + AdaptationStatus) → predictor, all over DDS."""
    from metasym_ros.msg import AdaptationStatus, Prediction
    from std_srvs.srv import Trigger

    from metasym_core.checkpoint import save_checkpoint
    from metasym_core.config import build_model, load_config
    from metasym_ros import qos
    from metasym_ros.learner_node import LearnerNode
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    torch.manual_seed(0)
    model = build_model(load_config("quadrotor"))
    with torch.no_grad():  # non-trivial weights: the local parameters then matter
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    ckpt = save_checkpoint(tmp_path / "model.pt", model)
    with _ros() as (ns, make, thread):
        make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "change_time": 0.3})
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": HORIZON, "checkpoint": str(ckpt)})
        learner = make(LearnerNode, {"system": "quadrotor", "checkpoint": str(ckpt), "window": 40,
                                     "period_s": 0.5, "min_gain": 0.0, "params_dir": str(tmp_path / "phi")})
        probe = make("probe")
        statuses, preds = [], []
        probe.create_subscription(AdaptationStatus, qos.ADAPTATION_TOPIC, statuses.append, qos.ADAPTATION_QOS)
        probe.create_subscription(Prediction, qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        thread.start()
        _wait(lambda: statuses, "an adaptation attempt", deadline=40)
        _wait(lambda: any(s.accepted for s in statuses), "an accepted adaptation", deadline=40)
        first = next(s for s in statuses if s.accepted)
        assert first.version == 1 and first.loss_after <= first.loss_before and first.latency_ms > 0
        assert os.path.isfile(first.params_path)
        _wait(lambda: any(p.params_version >= 1 for p in preds), "predictions with the adapted parameters")
        assert pred.live.predictor.version >= 1
        versions = [s.version for s in statuses if s.accepted]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        client = probe.create_client(Trigger, f"{ns}/learner/adapt_now")
        _wait(client.service_is_ready, "adapt_now service")
        assert client.call(Trigger.Request(), timeout_sec=DEADLINE_S).success
        n = len(learner.live.outcomes)
        _wait(lambda: len(learner.live.outcomes) > n, "the requested adaptation")
