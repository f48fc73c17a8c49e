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


def test_watch_sees_a_change_of_system_and_opens_a_burst(tmp_path):
    """`watch_rise`: the next-step loss of the parameters in force on the newest window jumps when the
    system changes; the alarm comes at once, and `burst_s` keeps adapting every `min_interval_s`."""
    model, states, controls = _system()
    other = _system(seed=3)[1:]  # another system's trajectory (same model dims)
    learner = OnlineLearner(model, "test", tmp_path, window=30, period_s=0.0, min_interval_s=0.5,
                            watch_rise=2.0, burst_s=3.0)
    learner.watch()  # buffer not full: nothing to score
    for i in range(60):  # steady: the same system
        learner.push(0.1 * i, states[i], controls[i], 0.1)
        learner.watch()
    assert not learner.should_adapt(100.0)  # no period, no alarm
    for j in range(30):  # the system changes
        learner.push(6.0 + 0.1 * j, other[0][j], other[1][j], 0.1)
        learner.watch()
        if learner.should_adapt(100.0):
            break
    assert learner.should_adapt(100.0), "watch must see the change"
    assert j < 15, f"watch took {j} samples"
    now = 100.0
    learner.adapt_now(now)
    assert not learner.should_adapt(now + 0.2)  # min_interval_s
    assert learner.should_adapt(now + 0.6) and learner.should_adapt(now + 2.9)  # the burst
    assert not learner.should_adapt(now + 3.1)  # over; period 0: only alarms from now on
    with pytest.raises(MetaSymError, match="watch_rise"):
        OnlineLearner(model, "test", tmp_path, window=30, watch_rise=0.5)


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


def test_val_horizon_scores_candidates_by_rollouts(tmp_path):
    """`val_horizon`: fit on the next step, accept on n-step rollouts of the held-out tail."""
    from metasym_core.meta.adapt import prepare, split_point
    from metasym_core.meta.losses import window_loss

    model, learner = _filled(tmp_path / "ok", val_horizon=5)
    learner.lr = 0.5
    states, controls, steps = (torch.as_tensor(a) for a in learner.buffer.arrays())
    out = learner.adapt_now(now=10.0)
    assert out.accepted
    with torch.no_grad():
        batch = prepare(model, states, controls, steps)
        cut = split_point(batch.x.shape[1], learner.holdout)
        rollout_phi0 = float(window_loss(model, batch, None, start=cut - 1, horizon=5))
    assert out.loss_before == pytest.approx(rollout_phi0, rel=1e-9)  # the score is the rollout one
    with pytest.raises(MetaSymError, match="val_horizon 20 does not fit the window"):
        OnlineLearner(model, "test", tmp_path, window=60, val_horizon=20)
