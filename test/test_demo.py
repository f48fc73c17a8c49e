"""`metasym demo` end to end on a tiny budget: datasets, model, evaluation, plot; cached on rerun."""

import json

import pytest

from metasym_core.cli import main


@pytest.mark.slow
def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "12", "--shots", "60", "--horizon", "20"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert len(result["systems"]) == 10 and result["horizon"] == 20
    assert all(r["mse_before"] >= 0 and r["mse_after"] >= 0 for r in result["systems"])
    png = (out / "quadrotor_adaptation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    capsys.readouterr()
    # second run reuses the datasets and the checkpoint
    assert main(["demo", "--out", str(out), "--max-steps", "12", "--shots", "60", "--horizon", "20"]) == 0
    log = capsys.readouterr().out
    assert "using the cached model" in log and "simulating" not in log
    recipe = json.loads((out / "run" / "recipe.json").read_text())
    assert recipe["family_options"] == {"source": "flight"} and recipe["max_steps"] == 12
    # another recipe (here: the training budget) does not reuse that model; the old one is kept aside
    assert main(["demo", "--out", str(out), "--max-steps", "13", "--shots", "60", "--horizon", "20"]) == 0
    log = capsys.readouterr().out
    assert "another recipe" in log and "simulating" not in log
    assert len(list(out.glob("run.old-*/final.pt"))) == 1
    assert json.loads((out / "run" / "recipe.json").read_text())["max_steps"] == 13


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--max-steps", "3", "--shots", "700", "--horizon", "80"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shots + horizon" in err[0]
