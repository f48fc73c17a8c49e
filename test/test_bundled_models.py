"""The models bundled for the spring mesh and the quantum system (`checkpoint: pretrained`): each follows its
recipe and its config, and predicts the simulator node's own stream better than holding the last state."""

import copy
import json

import numpy as np
import pytest
import torch

from metasym_core.checkpoint import PRETRAINED, load_checkpoint, resolve_checkpoint
from metasym_core.config import load_config
from metasym_core.online.skill import hold_errors
from metasym_core.online.streams import make_stream

SYSTEMS = ("spring_mesh", "quantum")
MAX_BYTES = 5 * 2**20  # issue 20: "size kept reasonable (say <= 5 MB each)"


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_bundled_model_follows_its_recipe_and_the_config(system):
    """Its recipe's model and training are config/<system>.yaml's, the checkpoint is that model, and both
    nodes of the graph load it by default; a change of the config means retraining it (the recipe's commands)."""
    cfg = load_config(system)
    recipe = json.loads((PRETRAINED / f"{system}.recipe.json").read_text())
    assert recipe["model"] == cfg["model"] and recipe["training"] == cfg["training"], f"retrain {system} (recipe)"
    path = resolve_checkpoint("pretrained", system)
    assert (PRETRAINED / f"{system}.pt").stat().st_size <= MAX_BYTES
    model = load_checkpoint(path)[0]
    config = model.config()
    assert (model.state_dim, model.control_dim) == (cfg["state_dim"], cfg["control_dim"])
    assert {k: config["encoder"][k] for k in cfg["model"]["encoder"]} == cfg["model"]["encoder"]
    assert {k: config["decoder"][k] for k in cfg["model"]["decoder"]} == cfg["model"]["decoder"]
    assert cfg["ros"]["predictor"]["checkpoint"] == cfg["ros"]["learner"]["checkpoint"] == "pretrained"
    assert all(step.startswith(("metasym ", "(")) for step in recipe["command"])


def _stream_ratios(system: str, frames: int, change_at: int, param: str, bases_every: int, seed: int = 1,
                   horizon: int = 30) -> tuple[float, float]:
    """Whole-horizon MSE over that of holding the state, of the bundled model's rollouts and of predicting 0,
    on the simulator node's stream (`make_stream`, the graph's nominal parameters) with `param` ×1.3 from
    frame `change_at`, predicting as the predictor does: from the newest `context` states, future steps =
    the newest step."""
    model = load_checkpoint(resolve_checkpoint("pretrained", system))[0].float().eval()
    stream = make_stream(system, seed=seed)
    try:
        samples = []
        for k in range(frames):
            if k == change_at:
                stream.set_param(param, 1.3)
            samples.append(stream.advance())
    finally:
        stream.close()
    X = np.stack([s.state for s in samples])
    h = np.array([s.dt for s in samples])
    c = model.context
    bases = np.arange(c - 1, frames - horizon, bases_every)
    errors = []
    with torch.inference_mode():
        for b in bases:
            steps = torch.tensor(np.concatenate([h[b - c + 1:b + 1], np.full(horizon, h[b])]), dtype=torch.float32)
            out = model.rollout(torch.tensor(X[b - c + 1:b + 1], dtype=torch.float32)[None],
                                torch.zeros(1, c, model.control_dim), steps[None], horizon)[0].double().numpy()
            errors.append(np.mean((out - X[b + 1:b + 1 + horizon]) ** 2))
    hold = hold_errors(dict(enumerate(X)), bases, horizon).mean()
    zero = np.mean([np.mean(X[b + 1:b + 1 + horizon] ** 2) for b in bases])
    return float(np.mean(errors) / hold), float(zero / hold)


def test_the_bundled_spring_mesh_model_predicts_the_simulator_s_mesh():
    """The mesh as the simulator node streams it (nominal k, m, γ mid-range, k ×1.3 after 3 s): the bundled
    model's 30-step predictions, unadapted, at most half of holding the state's error (issue 20's target)."""
    assert _stream_ratios("spring_mesh", 800, 400, "k", 10)[0] <= 0.5


def test_the_bundled_quantum_model_predicts_the_record_at_its_noise_floor():
    """The heterodyne record as the simulator node streams it (ω ×1.3 after 30 s), noise included. It is
    white noise of variance 2/dt = 20 around a signal of variance ~0.05, so even the noise-free signal
    itself scores ~0.50 of holding the last value (hold pays the noise twice; docs/decisions.md) and
    predicting 0 scores ~0.52 here: the bundled model must come within 5 % of that floor."""
    model, zero = _stream_ratios("quantum", 800, 300, "omega", 5)
    assert model <= 1.05 * zero and zero < 0.6


def test_bundled_models_resolve_by_name_and_refuse_others():
    from metasym_core.errors import MetaSymError

    for system in SYSTEMS:
        assert resolve_checkpoint("pretrained", system) == str(PRETRAINED / f"{system}.pt")
    with pytest.raises(MetaSymError, match="no such bundled model for quantum"):
        resolve_checkpoint("pretrained:mppi", "quantum")
    assert copy.deepcopy(load_config("quadrotor"))["ros"]["predictor"]["checkpoint"] == "pretrained"
