"""OnlineLearner: triggers, acceptance only on held-out improvement, versioned parameter files."""

import pytest
import torch
from _models import perturbed_system

from metasym_core.errors import MetaSymError
from metasym_core.online.learner import OnlineLearner
from metasym_core.online.local_params import load_local_params


def _system(seed=0):
    """A model and a trajectory of the same model with perturbed local params (a "new system")."""
    model, states, controls = perturbed_system(seed)
    return model, states.numpy(), controls.numpy()


def _filled(tmp_path, **kw):
    model, states, controls = _system()
    learner = OnlineLearner(model, "test", tmp_path, window=60, inner_steps=10, lr=0.1, period_s=1.0, **kw)
    for i in range(len(states)):
        assert learner.push(0.1 * i, states[i], controls[i], 0.1) is None
    return model, learner


def test_accepts_improvement_and_writes_versioned_params(tmp_path):
    model, learner = _filled(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert learner.should_adapt(now=10.0)
    out = learner.adapt_now(now=10.0)
    assert out.accepted and out.version == 1 and out.loss_after < out.loss_before
    params, version = load_local_params(out.params_path, model.decoder.local_parameters())
    assert version == 1 and all(torch.equal(params[k], learner.active[k]) for k in params)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a second attempt must beat the parameters now in force, not just the init
    again = learner.adapt_now(now=20.0)
    assert again.loss_before <= out.loss_after + 1e-12
    assert again.version == (2 if again.accepted else 1)


def test_adapts_only_the_chosen_part_of_phi(tmp_path):
    model, states, controls = perturbed_system(only="w_v.bias", size=3.0)  # a system that differs in b_V alone
    learner = OnlineLearner(model, "test", tmp_path, window=60, inner_steps=10, lr=3.0, params="value_bias")
    for i in range(len(states)):
        learner.push(0.1 * i, states[i].numpy(), controls[i].numpy(), 0.1)
    out = learner.adapt_now(now=10.0)
    assert out.accepted
    phi0 = model.decoder.local_parameters()
    moved = {k for k in phi0 if not torch.equal(learner.active[k], phi0[k].detach())}
    assert moved == {k for k in phi0 if k.endswith("w_v.bias")}
    with pytest.raises(MetaSymError, match="params must be one of"):
        OnlineLearner(model, "test", tmp_path, window=60, params="heads")


def test_refuses_when_nothing_improves(tmp_path):
    _, learner = _filled(tmp_path)
    learner.lr = 1e-12  # an adaptation that cannot move φ cannot improve the held-out loss
    out = learner.adapt_now(now=10.0)
    assert not out.accepted and out.version == 0 and "refused" in out.reason
    assert list(tmp_path.iterdir()) == []


def test_triggers(tmp_path):
    model, _, _ = _system()
    learner = OnlineLearner(model, "test", tmp_path, window=20, period_s=5.0, error_rise=2.0, min_interval_s=0.5)
    assert not learner.should_adapt(100.0)  # buffer not full
    _, learner = _filled(tmp_path)
    learner.period_s = 5.0
    learner.adapt_now(now=10.0)
    assert not learner.should_adapt(11.0)  # period not due, no alarm
    for mse in (1.0, 1.1, 0.9):
        learner.observe_error(mse)
    assert not learner.should_adapt(11.0)
    learner.observe_error(5.0)  # the error jumps: adapt early
    assert learner.should_adapt(11.0)
    assert not learner.should_adapt(10.2)  # but never more often than min_interval_s
    assert learner.should_adapt(15.0)


def test_rollout_horizon_adapts_on_rollouts_and_must_fit_the_window(tmp_path):
    import pytest

    from metasym_core.errors import MetaSymError

    model, learner = _filled(tmp_path / "ok", horizon=5)
    learner.lr = 0.5
    out = learner.adapt_now(now=10.0)
    assert out.accepted and out.loss_after < out.loss_before
    with pytest.raises(MetaSymError, match="does not fit the window"):
        OnlineLearner(model, "test", tmp_path, window=60, horizon=20)  # held-out tail of 15 < 20
