"""`metasym flight` end to end: the real quadrotor node graph over DDS, a mid-flight mass
change, the learner, the summary figures, the JSON and the PNG.

The model is the bundled `checkpoint: pretrained` (metasym_core/pretrained/quadrotor.pt,
31 KB), the checkpoint `metasym demo` makes; `test_the_bundled_model_is_what_metasym_demo_makes`
keeps it in step with the config (after a change there, run `metasym demo` and copy
`runs/demo/run/final.pt` and `recipe.json` over it). Training one in the test would take
minutes. Discovery stays on
this host, on a random domain in 100-200.
"""

import json
import math
import os
import random
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(180)]  # slow: graphs of 3 processes

DURATION_S, CHANGE_S = 15.0, 5.0  # simulated seconds (the shortened flight)


def _env() -> dict[str, str]:
    return dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                ROS_STATIC_PEERS="", PYTHONUNBUFFERED="1")


def _metasym(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metasym_core.cli", *args], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_the_bundled_model_is_what_metasym_demo_makes():
    from metasym_core.checkpoint import PRETRAINED, load_checkpoint, resolve_checkpoint
    from metasym_core.demo import _recipe
    from metasym_core.errors import MetaSymError

    recipe = json.loads((PRETRAINED / "quadrotor.recipe.json").read_text())
    assert recipe == json.loads(json.dumps(_recipe(1800, 0))), "regenerate the bundled model (see the module doc)"
    path = resolve_checkpoint("pretrained", "quadrotor")
    model = load_checkpoint(path)[0]
    assert model.state_dim == 12 and resolve_checkpoint("a/b.pt", "quadrotor") == "a/b.pt"
    decoder = model.config()["decoder"]
    assert {k: decoder[k] for k in recipe["model"]["decoder"]} == recipe["model"]["decoder"]  # linear_skip too
    with pytest.raises(MetaSymError, match="no such bundled model for quadrotor"):
        resolve_checkpoint("pretrained:nope", "quadrotor")


def test_the_bundled_mppi_model_follows_its_recipe_and_the_config():
    """`pretrained:mppi`, the closed loop's model: its recipe's model and training are config/quadrotor.yaml's
    (d_model 32, a correction to the nominal rigid-body step), and the checkpoint is that model, trained on
    the current simulator's flights; a change of the config or the simulator means retraining it (the
    recipe's commands)."""
    import copy

    from metasym_core.checkpoint import PRETRAINED, load_checkpoint, resolve_checkpoint
    from metasym_core.config import load_config
    from metasym_core.errors import MetaSymError
    from metasym_core.systems.quadrotor.flight import FLIGHT_REVISION

    cfg = load_config("quadrotor")
    recipe = json.loads((PRETRAINED / "quadrotor_mppi.recipe.json").read_text())
    model = copy.deepcopy(cfg["model"])
    model["decoder"].update(d_model=32, residual="nominal:quadrotor")
    assert recipe["model"] == model and recipe["training"] == cfg["training"], "retrain pretrained:mppi (recipe)"
    assert recipe["family_options"] == {"source": "flight", "control_noise": 0.5}
    assert recipe["flight_revision"] == FLIGHT_REVISION, "flown by another simulator: retrain pretrained:mppi"
    bundled = load_checkpoint(resolve_checkpoint("pretrained:mppi", "quadrotor"))[0].config()
    assert bundled["decoder"] == {"state_dim": 12, "control_dim": 4, "linear_skip": False, **model["decoder"],
                                  "meta_attention": True}
    assert cfg["ros"]["controller"]["checkpoint"] == "pretrained:mppi"
    for bad in ("pretrained:nope", "pretrained:../quadrotor"):
        with pytest.raises(MetaSymError, match="no such bundled model"):
            resolve_checkpoint(bad, "quadrotor")


def test_the_bundled_nominal_mass_model_follows_its_recipe_and_the_config():
    """`pretrained:nominal_mass`, the model the learner's tests and `metasym bench learner` adapt: trained at
    nominal mass on the current simulator's flights with the config's model and training; its recipe's
    learner settings are valid ones and reach `bundled_learner` (other checkpoints have none)."""
    from metasym_core.checkpoint import PRETRAINED, bundled_learner, load_checkpoint, resolve_checkpoint
    from metasym_core.config import data_tag, load_config
    from metasym_core.online.learner import learner_settings

    cfg = load_config("quadrotor")
    recipe = json.loads((PRETRAINED / "quadrotor_nominal_mass.recipe.json").read_text())
    assert recipe["model"] == cfg["model"] and recipe["training"] == cfg["training"], "retrain it (recipe)"
    assert recipe["family_options"]["fixed"] == ["mass"]
    assert recipe["data_tag"] == data_tag(recipe["family_options"]), "flown by another simulator: retrain it"
    bundled = load_checkpoint(resolve_checkpoint("pretrained:nominal_mass", "quadrotor"))[0].config()
    assert {k: bundled["decoder"][k] for k in cfg["model"]["decoder"]} == cfg["model"]["decoder"]
    tuned = bundled_learner("pretrained:nominal_mass", "quadrotor")
    assert tuned == recipe["learner"] and learner_settings(cfg, tuned)["lr"] == tuned["lr"]
    assert bundled_learner("pretrained", "quadrotor") == {} and bundled_learner(str(PRETRAINED / "x.pt"), "q") == {}


def test_flight_changes_mass_publishes_plan_aware_predictions_and_the_learner_stays_quiet(tmp_path):
    out = tmp_path / "flight"
    res = _metasym("flight", "--checkpoint", "pretrained", "--duration", str(DURATION_S), "--change-time",
                   str(CHANGE_S), "--out", str(out), timeout=150)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log + (out / "nodes.log").read_text()
    assert "[flight] t =" in res.stdout and "MSE before the change" in res.stdout
    fig = json.loads((out / "flight.json").read_text())["figures"]
    print({k: fig[k] for k in sorted(fig)})

    # the flight ran its course, with predictions throughout
    assert fig["duration_sim_s"] >= DURATION_S
    assert fig["change_time_sim_s"] == pytest.approx(CHANGE_S, abs=fig["dt_s"] + 1e-9)
    # the simulator starts its clock once everyone listens: predictions from the first full context window
    assert fig["first_prediction_sim_s"] < 1.5 and fig["last_prediction_sim_s"] >= DURATION_S - 1.0
    assert fig["prediction_max_gap_sim_s"] <= 0.5, "predictions must flow throughout the flight"
    for phase in ("before_change", "after_change"):
        assert fig[f"evaluations_{phase}"] > 0, phase
    # the default model infers the new mass from its context; the graph's learner (the residual-bias test)
    # stays quiet through steady flight and the change (issue 15 item 4: at most 3 attempts in 80 s), where the
    # loss-watch learner before it attempted about once a second. Live adaptation: test_ros_nodes.py and
    # test_ros_transport.py (the plumbing), test_detector.py (the nominal-mass model adapting within 2 s,
    # lock-stepped, as its timing here would depend on how the 2 cores schedule the three nodes)
    assert fig["adaptations_attempted"] <= 3, fig["adaptations_attempted"]
    # what a subscriber sees: predictions under the MPC's plan, beating holding the state (the 0.5;
    # 0.16-0.17 in CI runs). Whether the plan beats the held control (by a few per cent on this path) is
    # asserted lock-stepped, test_plan.py: here the reruns start from other contexts on another schedule
    assert fig["predictions_under_plan"] > 0.9 * fig["predictions_received"]
    assert 0 < fig["ratio_to_hold"] <= 0.5 and 0 < fig["held_ratio_to_hold"] and 0 < fig["model_ratio_to_hold"]
    assert fig["windows"] >= 3 and 0 <= fig["windows_at_most_0.5_fraction"] <= 1
    for key in ("mse_before_change", "mse_after_change", "model_mse_before_change", "model_mse_after_change",
                "prediction_latency_p50_ms", "prediction_latency_p99_ms"):
        assert math.isfinite(fig[key]) and fig[key] >= 0, key
    assert fig["node_exit_codes"] == [0, 0, 0], (out / "nodes.log").read_text()[-3000:]
    png = (out / "flight.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize("args", [("--duration", "-1"), ("--change-time", "40"), ("--change-param", "colour"),
                                  ("--change-scale", "5"), ("--checkpoint", "/nonexistent.pt")])
def test_flight_refuses_bad_arguments_in_one_line(tmp_path, args):
    res = _metasym("flight", "--out", str(tmp_path / "f"), *args, timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metasym: error:"), res.stderr
    assert not (tmp_path / "f").exists()


def test_bench_flight_flies_with_and_without_adaptation_and_writes_its_section(tmp_path):
    """`metasym bench flight` out of the box: the bundled model that must adapt (`pretrained:nominal_mass`), the
    same flight with and without the learner, figures with their --no-adapt baselines, the docs section. (Whether
    and when it adapts depends here on how the 2 cores schedule three nodes: test_detector asserts it lock-stepped.)"""
    doc = tmp_path / "benchmarks.md"
    res = _metasym("bench", "flight", "--duration", "8", "--change-time", "3", "--out", str(tmp_path / "bench"),
                   "--json", "--doc", str(doc), timeout=170)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("mse_before_change", "baseline_no_adapt_mse_before_change", "model_mse_after_change",
                "baseline_no_adapt_model_mse_after_change", "prediction_latency_p99_ms"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["adaptations_attempted"] >= figures["adaptations_accepted"] >= 0
    text = doc.read_text()
    assert text.count("## ROS flight adaptation") == 1 and "model `pretrained:nominal_mass`" in text
    assert "| published: MSE before the change |" in text
