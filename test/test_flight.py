"""`metasym flight` end to end: the real quadrotor node graph over DDS, a mid-flight mass
change, online adaptation, the summary figures, the JSON and the PNG; and the flight
issue's acceptance criterion.

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

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

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
    assert load_checkpoint(path)[0].state_dim == 12 and resolve_checkpoint("a/b.pt", "quadrotor") == "a/b.pt"
    with pytest.raises(MetaSymError, match="no bundled model for quantum"):
        resolve_checkpoint("pretrained", "quantum")


def test_flight_changes_mass_adapts_online_and_meets_the_acceptance_criterion(tmp_path):
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
    for phase in ("before_change", "after_change", "after_adaptation"):
        assert fig[f"evaluations_{phase}"] > 0, phase
    # the flight issue's acceptance: an accepted adaptation within 2 s (simulated) of the change, and
    # after it the realised horizon-H error (model error: the predictions under the controls that were
    # applied; the published ones hold the last control, see docs/decisions.md) at most half of the error
    # between the change and the first adaptation (measured: 0.27-0.32 over six such flights, the first
    # adaptation 0.5-0.8 s after the change; docs/decisions.md)
    assert fig["adaptations_accepted_after_change"] >= 1
    assert 0.0 <= fig["first_adaptation_after_change_sim_s"] <= 2.0
    assert fig["model_error_ratio_after_adaptation_over_after_change"] <= 0.5
    for key in ("mse_before_change", "mse_after_change", "mse_after_adaptation", "model_mse_before_change",
                "model_mse_after_change", "model_mse_after_adaptation",
                "error_ratio_after_adaptation_over_after_change", "first_adaptation_latency_ms",
                "adaptation_latency_mean_ms", "prediction_latency_p50_ms", "prediction_latency_p99_ms"):
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
