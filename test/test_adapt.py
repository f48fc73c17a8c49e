"""Online K-shot adaptation (`metasym_core.meta.adapt`)."""

import time

import pytest
import torch
from _models import perturbed_system, random_model

from metasym_core.config import build_model, load_config
from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt, local_subset


def test_adapt_improves_holdout_and_leaves_module_alone():
    model, states, controls = perturbed_system()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = adapt(model, states, controls, 0.1, inner_steps=20, lr=0.05)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training is False
    assert set(res.local_params) == set(model.decoder.local_parameters())
    assert res.train_loss_after < res.train_loss_before
    assert res.loss_after < 0.9 * res.loss_before and res.improved
    assert all(not v.requires_grad for v in res.local_params.values())
    # The adapted params plug into the model without touching it.
    with torch.no_grad():
        y = model(states[None, :20], controls[None, :20], 0.1, local_params=res.local_params)
    assert torch.isfinite(y).all()


def test_adapt_accepts_batched_input_and_step_tensors():
    model, states, controls = perturbed_system(1)
    r1 = adapt(model, states, controls, 0.1, inner_steps=3, lr=0.05)
    h = torch.full((states.shape[0],), 0.1, dtype=torch.float64)
    r2 = adapt(model, states[None], controls[None], h, inner_steps=3, lr=0.05)
    assert r1.loss_after == pytest.approx(r2.loss_after, rel=1e-9)
    assert r1.loss_before == pytest.approx(r2.loss_before, rel=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"states": torch.zeros(50, 5)}, "states has shape"),
    ({"states": torch.zeros(2, 50, 4)}, "states has shape"),
    ({"controls": torch.zeros(49, 1)}, "controls has shape"),
    ({"states": torch.zeros(3, 4), "controls": torch.zeros(3, 1)}, "at least 4"),
    ({"states": torch.full((50, 4), float("nan"))}, "NaN"),
    ({"steps": -0.1}, "positive"),
    ({"holdout": 1.0}, "holdout"),
    ({"inner_steps": 0}, "inner_steps"),
    ({"lr": 0.0}, "lr"),
    ({"states": [[0.0] * 4] * 50}, "torch.Tensor"),
])
def test_adapt_bad_inputs(kwargs, match):
    model = random_model(state_dim=4, control_dim=1, d_model=16, context=8)
    args = {"states": torch.zeros(50, 4, dtype=torch.float64), "controls": torch.zeros(50, 1, dtype=torch.float64),
            "steps": 0.1, "inner_steps": 2, "lr": 0.1, "holdout": 0.25}
    args.update(kwargs)
    with pytest.raises(MetaSymError, match=match) as info:
        adapt(model, **args)
    assert "\n" not in str(info.value)


def test_adapt_a_subset_of_phi_leaves_the_rest_at_phi0():
    """`params="value_bias"` moves b_V alone (the online learner's choice for the quadrotor demo)."""
    model, states, controls = perturbed_system()
    phi0 = {k: v.detach() for k, v in model.decoder.local_parameters().items()}
    bias = local_subset(model, "value_bias")
    assert bias and all(k.endswith("w_v.bias") for k in bias) and local_subset(model, None) == list(phi0)
    res = adapt(model, states, controls, 0.1, inner_steps=20, lr=0.5, params="value_bias")
    assert set(res.local_params) == set(phi0)  # a full φ: it plugs in like any other
    for k, v in res.local_params.items():
        assert torch.equal(v, phi0[k]) != (k in bias), k
    assert res.train_loss_after < res.train_loss_before
    named = adapt(model, states, controls, 0.1, inner_steps=20, lr=0.5, params=bias)
    assert all(torch.equal(named.local_params[k], res.local_params[k]) for k in phi0)
    for bad, match in (("weights", "params must be one of"), (["w_q"], "unknown local parameters"),
                       ([], "unknown local parameters")):
        with pytest.raises(MetaSymError, match=match):
            adapt(model, states, controls, 0.1, inner_steps=2, params=bad)


def test_adapt_latency_quadrotor():
    """K=10 on the last 200 steps with the quadrotor config (target 100 ms with 1 torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(load_config("quadrotor")).eval()
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.normal_(0, 0.2)
        x, u = torch.randn(200, 12), torch.rand(200, 4)
        adapt(model, x, u, 0.02, inner_steps=10)  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            adapt(model, x, u, 0.02, inner_steps=10)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    median = sorted(times)[2]
    print(f"adapt K=10, 200 steps, quadrotor: {1000 * median:.1f} ms")
    assert median < 0.5  # loose bound on a shared machine; the target is 0.1 s


def test_rollout_loss_scores_free_running_rollouts():
    from metasym_core.meta.adapt import prepare
    from metasym_core.meta.losses import increment_loss, rollout_loss

    model, states, controls = perturbed_system(2)
    batch = prepare(model, states[:40], controls[:40], 0.1)
    c, n = model.context, 5
    # horizon 1 is the next-step loss over the targets that have a full context
    with torch.no_grad():
        one = rollout_loss(model, batch, None, horizon=1, stride=1)
        assert float(one) == pytest.approx(float(increment_loss(model, batch, None, start=c - 1)), rel=1e-12)
    # horizon n: the error of MetaSym.rollout from each start, step k divided by k
    starts = range(c - 1, 40 - n, 2)
    expected = 0.0
    for s in starts:
        with torch.no_grad():
            pred = model.rollout(states[None, s - c + 1:s + 1], controls[None, s - c + 1:s + 1], 0.1, n,
                                 future_controls=controls[None, s + 1:s + 1 + n])[0]
        k = torch.arange(1, n + 1, dtype=pred.dtype)[:, None]
        expected += (((pred - states[s + 1:s + 1 + n]) / (model.delta_std * k)) ** 2).mean(1).mean()
    with torch.no_grad():
        got = rollout_loss(model, batch, None, horizon=n, stride=2)
    assert float(got) == pytest.approx(float(expected) / len(starts), rel=1e-9)
    with pytest.raises(MetaSymError, match="rollout_loss needs"):
        rollout_loss(model, prepare(model, states[:12], controls[:12], 0.1), None, horizon=n)


def test_adapt_on_rollouts_improves_held_out_rollouts():
    model, states, controls = perturbed_system()
    res = adapt(model, states, controls, 0.1, inner_steps=20, lr=0.5, horizon=5)
    assert res.train_loss_after < 0.5 * res.train_loss_before
    assert res.loss_after < 0.5 * res.loss_before
