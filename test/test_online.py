"""Pure-Python helpers of the online (ROS) pipeline: no rclpy here (metasym_core.online,
metasym_ros.graph, the launcher's command lines and the CLI registration)."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _models import random_model

from metasym_core.errors import MetaSymError
from metasym_core.online.local_params import load_local_params, save_local_params
from metasym_core.online.predictor import OnlinePredictor, load_model
from metasym_core.online.realised import MetricsAccumulator, RealisedErrorTracker
from metasym_core.online.streams import make_stream
from metasym_core.online.window import ContextWindow

pytestmark = pytest.mark.timeout(120)


# -- context window ----------------------------------------------------------------------------
def test_window_accepts_valid_samples_and_keeps_the_last_capacity():
    w = ContextWindow(state_dim=2, control_dim=1, capacity=3)
    for k in range(5):
        assert w.push(0.1 * k, [k, -k], [0.5], 0.1, step=k) is None
    assert w.full and len(w) == 3 and w.accepted == 5 and w.dropped == 0
    states, controls, steps = w.arrays()
    np.testing.assert_array_equal(states[:, 0], [2, 3, 4])
    assert controls.shape == (3, 1) and steps.tolist() == [0.1] * 3
    assert w.last().step == 4


@pytest.mark.parametrize("kwargs, reason", [
    ({"state": [1.0, 2.0, 3.0]}, "dimension"),
    ({"control": []}, "dimension"),
    ({"state": [math.nan, 0.0]}, "nonfinite"),
    ({"control": [math.inf]}, "nonfinite"),
    ({"dt": 0.0}, "bad_dt"),
    ({"dt": math.nan}, "bad_dt"),
    ({"stamp": 1.0}, "out_of_order"),  # duplicate stamp
    ({"stamp": 0.5}, "out_of_order"),
    ({"stamp": 2.0, "now": 10.0}, "stale"),
])
def test_window_rejects_bad_samples_and_counts_them(kwargs, reason):
    w = ContextWindow(state_dim=2, control_dim=1, capacity=4, max_age_s=1.0)
    assert w.push(1.0, [0.0, 0.0], [0.0], 0.1, now=1.0) is None
    sample = {"stamp": 1.5, "state": [1.0, 1.0], "control": [0.0], "dt": 0.1, "now": 1.5, **kwargs}
    assert w.push(**sample) == reason
    assert w.rejected[reason] == 1 and w.dropped == 1 and len(w) == 1
    assert w.push(3.0, [1.0, 1.0], [0.0], 0.1, now=3.0) is None  # still accepts good samples


def test_window_validates_its_sizes():
    with pytest.raises(MetaSymError, match="capacity"):
        ContextWindow(2, 0, 0)
    with pytest.raises(MetaSymError, match="state_dim"):
        ContextWindow(0, 0, 3)


# -- realised error ----------------------------------------------------------------------------
def test_realised_error_matches_predictions_to_later_states_by_step():
    tracker = RealisedErrorTracker()
    truth = np.arange(10.0)[:, None] * np.ones((1, 2))  # state of step s is (s, s)
    tracker.add(base_step=2, states=truth[3:6] + 1.0, version=7)  # predicts steps 3, 4, 5, off by 1
    done = []
    for s in range(3, 7):
        done += tracker.observe(s, truth[s])
    assert len(done) == 1 and len(tracker) == 0
    ev = done[0]
    assert (ev.base_step, ev.version, ev.matched) == (2, 7, 3)
    assert ev.mse == pytest.approx(1.0) and ev.mse_step1 == pytest.approx(1.0)


def test_realised_error_skips_lost_states_and_bounds_memory():
    tracker = RealisedErrorTracker(max_pending=5)
    tracker.add(0, np.zeros((3, 1)))
    assert tracker.observe(2, np.array([2.0])) == []  # step 1 was lost
    (ev,) = tracker.observe(3, np.array([0.0]))
    assert ev.matched == 2 and ev.mse_step1 is None and ev.mse == pytest.approx(2.0)
    for k in range(20):
        tracker.add(100 + k, np.zeros((50, 1)))
    assert len(tracker) == 5


def test_realised_error_matches_states_that_arrived_before_the_prediction_was_registered():
    tracker = RealisedErrorTracker()
    for s in range(3):
        tracker.observe(s, np.array([float(s)]))
    assert tracker.add(0, np.array([[1.0], [2.0], [3.0]])) == []  # steps 1, 2 matched at once
    (ev,) = tracker.observe(3, np.array([5.0]))
    assert ev.matched == 3 and ev.mse == pytest.approx(4.0 / 3) and ev.mse_step1 == 0.0


def test_metrics_accumulator_reports_means_and_resets():
    acc = MetricsAccumulator()
    assert math.isnan(acc.report()["realised_mse"])
    tracker = RealisedErrorTracker()
    tracker.add(0, np.array([[1.0]]), version=3)
    acc.add(tracker.observe(1, np.array([3.0]))[0])
    acc.latency_ms += [1.0, 3.0]
    report = acc.report()
    assert report["realised_mse"] == pytest.approx(4.0) and report["latency_ms"] == pytest.approx(2.0)
    assert report["params_version"] == 3 and report["evaluations"] == 1
    assert acc.report()["evaluations"] == 0


# -- local parameter transport -----------------------------------------------------------------
def test_local_params_roundtrip_and_validation(tmp_path):
    model = random_model(state_dim=4, control_dim=1, d_model=8)
    expected = {k: v.detach() for k, v in model.decoder.local_parameters().items()}
    params = {k: v + 0.5 for k, v in expected.items()}
    path = save_local_params(tmp_path / "phi.pt", params, version=3, system="toy")
    loaded, version = load_local_params(path, expected)
    assert version == 3 and all(torch.equal(loaded[k], params[k]) for k in params)
    bad = dict(params)
    bad[next(iter(bad))] = torch.zeros(1)
    save_local_params(tmp_path / "bad.pt", bad, 4, "toy")
    with pytest.raises(MetaSymError, match="shape"):
        load_local_params(tmp_path / "bad.pt", expected)
    with pytest.raises(MetaSymError, match="not found"):
        load_local_params(tmp_path / "missing.pt", expected)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(MetaSymError, match="unreadable"):
        load_local_params(tmp_path / "junk.pt", expected)


# -- online predictor --------------------------------------------------------------------------
def _filled_window(predictor, rng, n=12):
    w = predictor.make_window()
    D, m = predictor.model.state_dim, predictor.model.control_dim
    for k in range(n):
        w.push(0.01 * k, rng.normal(size=D), rng.normal(size=m), 0.01, step=k)
    return w


def test_predictor_predicts_from_the_window_and_swaps_local_params(tmp_path):
    model = random_model(state_dim=4, control_dim=2, d_model=8, context=5)
    predictor = OnlinePredictor(model, horizon=6)
    w = _filled_window(predictor, np.random.default_rng(0))
    result = predictor.predict(w)
    assert result.states.shape == (6, 4) and result.version == 0
    np.testing.assert_allclose(result.times, 0.01 * np.arange(1, 7))
    states, controls, steps = w.arrays()
    ref = model.rollout(torch.as_tensor(states)[None], torch.as_tensor(controls)[None],
                        torch.as_tensor(steps)[None], 6)[0].detach().numpy()
    np.testing.assert_allclose(result.states, ref, rtol=1e-10, atol=1e-12)

    local = {k: torch.zeros_like(v) for k, v in model.decoder.local_parameters().items()}
    save_local_params(tmp_path / "phi.pt", local, version=2, system="toy")
    with pytest.raises(MetaSymError, match="version"):
        predictor.load_local(tmp_path / "phi.pt", 5)
    predictor.load_local(tmp_path / "phi.pt", 2)
    adapted = predictor.predict(w)
    assert adapted.version == 2 and not np.allclose(adapted.states, result.states)


def test_rollout_batch_equals_single_rollouts():
    model = random_model(state_dim=4, control_dim=2, d_model=8, context=5)
    predictor = OnlinePredictor(model, horizon=3)
    rng = np.random.default_rng(1)
    L, K, H = 5, 4, 7
    xs, us, hs = rng.normal(size=(L, 4)), rng.normal(size=(L, 2)), np.full(L, 0.02)
    cand = rng.normal(size=(K, H, 2))
    out, version = predictor.rollout_batch(xs, us, hs, cand, 0.02)
    assert out.shape == (K, H, 4) and version == 0
    for k in (0, K - 1):
        ref = model.rollout(torch.as_tensor(xs)[None], torch.as_tensor(us)[None], 0.02, H,
                            future_controls=torch.as_tensor(cand[k])[None])[0].detach().numpy()
        np.testing.assert_allclose(out[k], ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(MetaSymError, match="candidate controls"):
        predictor.rollout_batch(xs, us, hs, cand[..., :1], 0.02)
    with pytest.raises(MetaSymError, match="NaN"):
        predictor.rollout_batch(xs * np.nan, us, hs, cand, 0.02)


def test_describe_model_names_the_file_its_recipe_and_the_parameter_count(tmp_path):
    """What a node logs at start about its model (`describe_model`)."""
    from metasym_core.checkpoint import PRETRAINED, save_checkpoint
    from metasym_core.online.predictor import describe_model

    model, _, _ = load_model("quadrotor", "pretrained", "cpu")
    count = f"{sum(p.numel() for p in model.parameters()):,} parameters"
    text = describe_model("quadrotor", "pretrained", model)
    assert str(PRETRAINED / "quadrotor.pt") in text and "(pretrained)" in text and count in text
    assert str(PRETRAINED / "quadrotor.recipe.json") in text
    untrained, _, _ = load_model("quantum", "", "cpu")
    assert describe_model("quantum", "", untrained).startswith("model: UNTRAINED quantum model")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "final.pt", model)
    assert "recipe none beside it" in describe_model("quadrotor", str(run / "final.pt"), model)
    (run / "recipe.json").write_text("{}")  # a `metasym demo` run folder
    assert f"recipe {run / 'recipe.json'}" in describe_model("quadrotor", str(run / "final.pt"), model)


def test_load_model_without_checkpoint_warns_and_matches_config():
    model, cfg, warning = load_model("quantum", "", "cpu")
    assert "UNTRAINED" in warning and model.state_dim == cfg["state_dim"] == 2
    with pytest.raises(MetaSymError, match="not found"):
        load_model("quantum", "/nonexistent/ckpt.pt", "cpu")


# -- streams -----------------------------------------------------------------------------------
@pytest.mark.parametrize("system, dim, param", [("quadrotor", 12, "mass"), ("spring_mesh", 400, "k"),
                                                ("quantum", 2, "omega")])
def test_streams_advance_and_change_parameters(system, dim, param):
    stream = make_stream(system, seed=1)
    try:
        samples = [stream.advance() for _ in range(5)]
        assert [s.step for s in samples] == list(range(5))
        assert all(s.state.shape == (dim,) and np.isfinite(s.state).all() and s.dt > 0 for s in samples)
        assert all(b.t == pytest.approx(a.t + a.dt) for a, b in zip(samples, samples[1:], strict=False))
        assert len(stream.state_names) == dim
        before = dict(zip(stream.param_names, stream.param_values, strict=True))[param]
        assert stream.set_param(param, 1.3) == pytest.approx(1.3 * before)
        assert np.isfinite(stream.advance().state).all()
        with pytest.raises(MetaSymError, match="unknown"):
            stream.set_param("nope", 1.0)
        with pytest.raises(MetaSymError):
            stream.set_param(param, 100.0)
    finally:
        stream.close()


def _real_time_child(policy: str, priority: int, body: str) -> list[str]:
    """Run `body` in a child process whose main thread was set to `os.<policy>` `priority` first (pytest itself
    must not run real-time); its stdout words, or a skip where real-time scheduling is not permitted."""
    code = textwrap.dedent(f"""
        import os
        try:
            os.sched_setscheduler(0, os.{policy}, os.sched_param({priority}))
        except OSError:
            print("refused"); raise SystemExit
    """) + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    if out.stdout.strip() == "refused":
        pytest.skip("real-time scheduling not permitted here (needs CAP_SYS_NICE or an rtprio limit)")
    return out.stdout.split()


def test_the_quantum_chunk_worker_of_a_real_time_simulator_runs_normally():
    """A real-time simulator's threads are all SCHED_FIFO; the worker that prepares the next chunk of the
    record must not be, or it keeps the publishing thread (equal priority, no time slicing) from running:
    the graph lost 5 % of its states."""
    assert _real_time_child("SCHED_FIFO", 7, """
        from metasym_core.online.streams import make_stream
        stream = make_stream("quantum", seed=0, chunk=20)
        stream.advance()  # the first chunk, and the worker that prepares the next one, started real-time
        worker = stream._pool.submit(os.sched_getscheduler, 0).result()
        print(os.sched_getscheduler(0) == os.SCHED_FIFO, worker == os.SCHED_OTHER)
        stream.close()
    """) == ["True", "True"]


def test_spring_mesh_stream_is_continuous():
    stream = make_stream("spring_mesh", seed=0)
    a, b = stream.advance(), stream.advance()
    assert np.abs(b.state[:200] - a.state[:200]).max() < 0.05  # one small frame of motion
    assert make_stream("quadrotor").advance().control.shape == (4,)
    with pytest.raises(MetaSymError, match="unknown system"):
        make_stream("pendulum")


# -- graph, launcher and CLI -------------------------------------------------------------------
def test_graph_reads_the_ros_section_and_applies_overrides():
    from metasym_ros.graph import node_graph, params_yaml

    specs = node_graph("quadrotor", {"horizon": 12, "simulator.rate_hz": 50.0, "checkpoint": "m.pt"})
    by_name = {s.name: s for s in specs}
    assert set(by_name) == {"simulator", "predictor", "learner"}
    # one launch argument may set a parameter of several nodes (the model of predictor and learner)
    assert by_name["predictor"].parameters["checkpoint"] == by_name["learner"].parameters["checkpoint"] == "m.pt"
    assert by_name["predictor"].parameters["horizon"] == 12
    assert by_name["predictor"].parameters["system"] == "quadrotor"
    assert by_name["simulator"].parameters["rate_hz"] == 50.0
    assert by_name["simulator"].parameters["change_param"] == "mass"
    assert params_yaml(specs)["predictor"]["ros__parameters"]["horizon"] == 12
    for system in ("spring_mesh", "quantum"):
        assert {s.executable for s in node_graph(system)} == {"simulator", "predictor", "learner"}
    with pytest.raises(MetaSymError, match="unknown override"):
        node_graph("quadrotor", {"bogus": 1})
    with pytest.raises(MetaSymError, match="no node"):
        node_graph("quadrotor", {"planner.x": 1})


def test_the_graph_closes_the_loop_on_request():
    """controller=mppi adds the controller node (the model of predictor and learner) and lets it fly the
    simulator; its launch arguments and parameters exist only then."""
    from metasym_ros.graph import node_graph

    specs = {s.name: s for s in node_graph("quadrotor", {"controller": "mppi", "checkpoint": "m.pt", "samples": 64,
                                                          "controller.horizon": 12, "control_timeout_s": 0.3})}
    assert set(specs) == {"simulator", "predictor", "learner", "controller"}
    assert specs["controller"].module == "metasym_ros.controller_node"
    assert specs["simulator"].parameters["controller"] == "external"
    assert specs["simulator"].parameters["control_timeout_s"] == 0.3
    assert specs["simulator"].parameters["rate_hz"] == 1.0 / specs["simulator"].parameters["dt"]  # real time
    assert node_graph("quadrotor", {"controller": "mppi", "rate_hz": 100})[0].parameters["rate_hz"] == 100.0
    default = {s.name: s.parameters.get("checkpoint") for s in node_graph("quadrotor", {"controller": "mppi"})}
    assert default == {"simulator": None, "predictor": "pretrained:mppi", "learner": "pretrained:mppi",
                       "controller": "pretrained:mppi"}  # one model, the one the controller flies
    assert specs["controller"].parameters["checkpoint"] == specs["predictor"].parameters["checkpoint"] == "m.pt"
    assert (specs["controller"].parameters["samples"], specs["controller"].parameters["horizon"]) == (64, 12)
    plain = {s.name: s for s in node_graph("quadrotor", {"checkpoint": "m.pt"})}
    assert "controller" not in plain and plain["simulator"].parameters["controller"] == "mpc"
    with pytest.raises(MetaSymError, match="no node"):
        node_graph("quadrotor", {"samples": 64})  # no controller node without the closed loop
    with pytest.raises(MetaSymError, match="quadrotor only"):
        node_graph("spring_mesh", {"controller": "mppi"})
    with pytest.raises(MetaSymError, match="mpc, mppi"):
        node_graph("quadrotor", {"controller": "pid"})


def test_every_list_of_systems_comes_from_the_one_registry():
    """Issue 19: `systems.SPECS` is the one list of systems; the CLI's, the graph's, the streams' and the
    controller's lists are derived from it, and each spec's config, family and stream exist."""
    from metasym_core.config import config_file
    from metasym_core.control import live_controller
    from metasym_core.online import streams
    from metasym_core.systems import _REGISTRY, CLOSED_LOOP_SYSTEMS, GRAPH_SYSTEMS, SPECS, SYSTEM_NAMES
    from metasym_ros import graph

    assert SYSTEM_NAMES == ("spring_mesh", "quantum", "quadrotor")
    assert graph.SYSTEMS == GRAPH_SYSTEMS == tuple(streams.STREAMS) == SYSTEM_NAMES
    assert live_controller.SYSTEMS == CLOSED_LOOP_SYSTEMS == ("quadrotor",)
    for name, spec in SPECS.items():
        assert _REGISTRY[name] == spec.family and config_file(f"{name}.yaml").is_file()
        if spec.stream:
            assert streams.STREAMS[name].system == name and graph.node_graph(name)


def test_the_learner_gets_a_bundled_models_tuned_settings_under_the_users():
    """A bundled model's recipe `learner` (checkpoint.bundled_learner) goes over the config's learner, and
    under any override: the default graph runs the quiet residual-bias test, the closed loop its model's loss
    watch, `pretrained:nominal_mass` its own rate and threshold. `learner_settings(..., checkpoint=)` (the
    benches, the lock-stepped replays) gives the same."""
    from metasym_core.config import load_config
    from metasym_core.online.learner import learner_settings
    from metasym_ros.graph import node_graph

    def learner(overrides):
        params = next(s for s in node_graph("quadrotor", overrides) if s.name == "learner").parameters
        return {k: params[k] for k in ("lr", "watch_rise", "error_rise", "bias_threshold")}

    assert learner({}) == {"lr": 1.0, "watch_rise": 0.0, "error_rise": 0.0, "bias_threshold": 12.0}
    assert learner({"controller": "mppi"}) == {"lr": 1.0, "watch_rise": 2.0, "error_rise": 2.0,
                                               "bias_threshold": 0.0}
    assert learner({"checkpoint": "pretrained:nominal_mass"}) == {"lr": 10.0, "watch_rise": 0.0, "error_rise": 0.0,
                                                                  "bias_threshold": 9.0}
    assert learner({"checkpoint": "pretrained:nominal_mass", "learner.lr": 2})["lr"] == 2.0  # the user's wins
    assert learner({"checkpoint": "m.pt"})["bias_threshold"] == 12.0  # a file: no recipe, the config's
    cfg = load_config("quadrotor")
    for checkpoint, overrides in (("pretrained", {}), ("pretrained:mppi", {"controller": "mppi"}),
                                  ("pretrained:nominal_mass", {"checkpoint": "pretrained:nominal_mass"})):
        settings = learner_settings(cfg, checkpoint=checkpoint)
        assert {k: settings[k] for k in ("lr", "watch_rise", "error_rise", "bias_threshold")} == learner(overrides)
    with pytest.raises(MetaSymError, match="no such bundled model"):
        node_graph("quadrotor", {"checkpoint": "pretrained:nope"})


def test_nodes_get_the_shipped_fast_dds_profile_unless_one_is_set():
    """config/fastdds.xml (a shared-memory segment large enough for K=1024 rollout_batch answers) goes
    to every node the launcher starts; a profile the user chose is kept."""
    import xml.etree.ElementTree as ET

    from metasym_ros.graph import PROFILE_VARIABLE, node_environment, transport_profile

    path = transport_profile()
    segment = ET.parse(path).getroot().find(".//{http://www.eprosima.com}segment_size")
    assert segment is not None and int(segment.text) >= 2 * 1024 * 30 * 12 * 8  # two K=1024 answers at least
    env = node_environment({"PATH": "/bin"})
    assert env[PROFILE_VARIABLE] == path and env["PATH"] == "/bin"
    assert node_environment({PROFILE_VARIABLE: "/mine.xml"})[PROFILE_VARIABLE] == "/mine.xml"


def test_f64_is_one_copy_of_any_float_array():
    from metasym_ros.common import f64

    values = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not contiguous, not float64
    out = f64(values)
    assert out.typecode == "d" and list(out) == values.astype(np.float64).ravel().tolist()
    assert len(f64([])) == 0 and list(f64([1.5])) == [1.5]


def test_launcher_command_and_cli_need_no_rclpy(tmp_path):
    from metasym_ros.graph import node_graph
    from metasym_ros.tools.launcher import node_command

    spec = node_graph("quantum")[0]
    cmd = node_command(spec, tmp_path / "p.yaml")
    assert cmd[1:4] == ["-m", "metasym_ros.start", spec.module]
    assert "--params-file" in cmd and f"__node:={spec.name}" in cmd
    code = ("import sys; from metasym_core.cli import build_parser; "
            "a = build_parser().parse_args(['launch', 'quantum', '--set', 'horizon=5']); "
            "assert a.overrides == [('horizon', 5)], a.overrides; "
            "assert 'rclpy' not in sys.modules and 'launch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_launch_help_lists_every_launch_argument(capsys):
    from metasym_core.cli import main
    from metasym_ros.graph import LAUNCH_ARGUMENTS, SYSTEMS

    with pytest.raises(SystemExit) as done:
        main(["launch", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for arg, targets in LAUNCH_ARGUMENTS.items():
        assert f"{arg} (" in text and all(f"{node}.{param}" in text for node, param in targets), arg
    assert "{" + ",".join(SYSTEMS) + "}" in text
    assert "controller=mpc|mppi" in text


def test_model_error_tracker_hands_out_past_contexts_with_the_applied_controls():
    from metasym_core.online.realised import ModelErrorTracker

    tracker = ModelErrorTracker(context=3, horizon=4, every=2)
    batches = []
    for step in list(range(12)) + list(range(20, 30)):  # a gap at 12..19 restarts the history
        tracker.observe(step, np.full(2, step), np.full(1, 100 + step), 0.1)
        batch = tracker.due()
        if batch is not None:
            batches.append(batch)
    first = batches[0]
    assert first.base_steps == [2, 3]
    assert first.states[0, :, 0].tolist() == [0, 1, 2] and first.controls[0, :, 0].tolist() == [100, 101, 102]
    assert first.future_controls[0, :, 0].tolist() == [103, 104, 105, 106]  # applied at predicted states 3..6
    assert first.truth[0, :, 0].tolist() == [3, 4, 5, 6] and first.steps.shape == (2, 7)
    assert [b.base_steps for b in batches] == [[2, 3], [4, 5], [6, 7], [22, 23], [24, 25]]
    assert first.mse(first.truth).tolist() == [0.0, 0.0]
    assert first.mse(first.truth + 2.0).tolist() == [4.0, 4.0]
    # a caller that asks late gets the hindcasts whose context is still in the history, all complete
    late = ModelErrorTracker(context=3, horizon=4, every=2)
    for step in range(60):
        late.observe(step, np.full(2, step), np.full(1, 0.0), 0.1)
    batch = late.due()
    # history: the last 3 + 4 + 4·2 = 15 samples (45..59): contexts from 45 on, bases 47..55
    assert batch.base_steps == list(range(47, 56)) and batch.states.shape == (9, 3, 2)
    assert late.due() is None
    with pytest.raises(ValueError, match="horizon"):
        ModelErrorTracker(3, 0)


def test_rollout_candidates_apply_their_first_control_from_the_newest_state():
    model = random_model(state_dim=4, control_dim=2, d_model=8, context=5)
    predictor = OnlinePredictor(model, horizon=3)
    rng = np.random.default_rng(2)
    L, K, H = 5, 3, 6
    xs, past, cand = rng.normal(size=(L, 4)), rng.normal(size=(L - 1, 2)), rng.normal(size=(K, H, 2))
    out = predictor.rollout_candidates(xs, past, cand, 0.02)
    assert out.shape == (K, H, 4)
    for k in range(K):
        ctx_u = np.concatenate([past, cand[k, :1]])
        future = np.concatenate([cand[k, 1:], cand[k, -1:]])
        ref = model.rollout(torch.as_tensor(xs)[None], torch.as_tensor(ctx_u)[None], 0.02, H,
                            future_controls=torch.as_tensor(future)[None])[0].detach().numpy()
        np.testing.assert_allclose(out[k], ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(MetaSymError, match="past controls"):
        predictor.rollout_candidates(xs, past[:-1], cand, 0.02)
    with pytest.raises(MetaSymError, match="candidates"):
        predictor.rollout_candidates(xs, past, cand[..., :1], 0.02)


def test_model_error_tracker_can_rerun_only_the_predicted_states():
    """`predicted_only`: a predictor that predicts from some states (rate-limited, the spring mesh) reruns
    those and no others; marks before a gap or long past are dropped with the history."""
    from metasym_core.online.realised import ModelErrorTracker

    tracker = ModelErrorTracker(context=3, horizon=4, every=2, predicted_only=True)
    batches = []
    for step in range(30):
        if step % 3 == 2:
            tracker.predicted(step)
        tracker.observe(step, np.full(2, step), np.full(1, 0.0), 0.1)
        if (batch := tracker.due()) is not None:
            batches.append(batch.base_steps)
    assert batches == [[2, 5], [8, 11], [14, 17], [20, 23]]  # 26 waits for its horizon, 29 too


def test_background_scheduling_leaves_a_normal_thread_alone_and_demotes_a_real_time_one():
    from metasym_core.online.scheduling import background_scheduling

    background_scheduling()  # pytest runs normal-scheduled: nothing to do, no error
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert _real_time_child("SCHED_RR", 3, """
        from metasym_core.online.scheduling import background_scheduling
        background_scheduling()
        print(os.sched_getscheduler(0) == os.SCHED_OTHER)
    """) == ["True"]
