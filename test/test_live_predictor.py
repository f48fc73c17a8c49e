"""LivePredictor: the predictor node's work without DDS (scheduling, plans, bad input, swaps, batches)."""

import hashlib
import io
import threading

import numpy as np
import pytest
import torch
from _models import random_model
from _wait import wait_for

from metasym_core.checkpoint import content_tag, save_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.online.live_predictor import Adaptation, LivePredictor, ModelUpdate
from metasym_core.online.local_params import to_entries
from metasym_core.online.throttle import Throttled

D, M, H, DT = 12, 4, 6, 0.02
DEADLINE_S = 30.0


def _wait(condition, what: str) -> None:
    wait_for(condition, what, DEADLINE_S)


class _Sink:
    """The node's side: what was published and logged."""

    def __init__(self):
        self.published: list[tuple] = []
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.lock = threading.Lock()

    def publish(self, token, result, source, plan_step):
        with self.lock:
            self.published.append((token, result, source, plan_step))


@pytest.fixture
def live(one_thread):
    sink = _Sink()
    model = random_model(D, M, d_model=16, context=5)
    live = LivePredictor(model, "quadrotor", sink.publish, horizon=H, max_age_s=1e9, max_rate_hz=1e6,
                         info=sink.infos.append, warn=sink.warnings.append)
    live.sink = sink
    live.start()
    assert live.ready.wait(DEADLINE_S)
    yield live
    live.stop()


def _feed(live, steps, rng, start=0, now=None):
    for k in range(start, start + steps):
        reason = live.on_state("quadrotor", k, DT * k, rng.normal(size=D), rng.normal(size=M), DT,
                               now=DT * k if now is None else now, token=("header", k))
        assert reason is None


def test_states_are_predicted_once_the_window_is_full_under_the_held_control(live):
    rng = np.random.default_rng(0)
    _feed(live, 4, rng)
    assert live.sink.published == []  # context 5: not full yet
    _feed(live, 6, rng, start=4)
    _wait(lambda: live.predictions == 6, "6 predictions")
    tokens = [p[0] for p in live.sink.published]
    assert tokens[-1] == ("header", 9) and len(set(tokens)) == len(tokens)
    token, result, source, plan_step = live.sink.published[-1]
    assert source == "held" and plan_step == 0 and result.states.shape == (H, D)
    states, controls, steps = live.window.arrays()
    ref = live.predictor.predict_arrays(states, controls, steps)
    np.testing.assert_allclose(result.states, ref.states, rtol=1e-12)
    np.testing.assert_allclose(result.controls, np.repeat(controls[-1:], H, axis=0))
    _feed(live, H, rng, start=10)  # the later states score the earlier predictions' whole horizons
    _wait(lambda: live.predictions == 6 + H, "the later predictions")
    report = live.report()
    assert np.isfinite(report["realised_mse"]) and report["dropped"] == 0
    # at start it said what a state costs and how many predictions per second that allows
    rate = [m for m in live.sink.infos if "predictions/s" in m]
    assert len(rate) == 1 and f"one rollout of {H} steps takes" in rate[0]


def test_a_fresh_plan_gives_the_future_controls_and_a_stale_one_falls_back(live):
    rng = np.random.default_rng(1)
    _feed(live, 5, rng)
    plan = rng.normal(size=(H + 2, M))
    assert live.on_plan("quadrotor", 3, 3 * DT, DT, plan.ravel(), H + 2, M, now=5 * DT) is None
    _wait(lambda: live.predictions >= 1, "a prediction")
    _feed(live, 1, rng, start=5)
    _wait(lambda: live.predictions >= 2, "the plan's prediction")
    _, result, source, plan_step = live.sink.published[-1]
    assert (source, plan_step) == ("plan", 3)
    # state 5 is 2 steps after the plan's start: the prediction applies plan[2:] from state 5 on
    np.testing.assert_allclose(result.controls[1:], plan[3:3 + H - 1])
    live.set_plan_max_age(0.01)  # now 0.04 s old for state 5 on: stale
    _feed(live, 1, rng, start=6)
    _wait(lambda: live.predictions >= 3, "the held prediction")
    assert live.sink.published[-1][2] == "held"


def test_bad_input_is_dropped_counted_and_logged_throttled(live):
    rng = np.random.default_rng(2)
    _feed(live, 5, rng)
    assert live.on_state("spring_mesh", 5, 0.1, rng.normal(size=D), rng.normal(size=M), DT, now=0.1) == "system"
    for k in range(20):  # a flood of NaN states: every one counted, one warning line
        bad = np.full(D, np.nan)
        assert live.on_state("quadrotor", 6 + k, DT * (6 + k), bad, np.zeros(M), DT, now=DT * (6 + k)) is not None
    assert live.on_plan("quadrotor", 5, 0.1, DT, np.zeros(3), 2, M, now=0.1) == "dimension"
    _feed(live, 1, rng, start=40)  # 14 steps after the last NaN one: a gap = states lost on the way
    assert live.dropped["system"] == 1 and live.window.dropped == 20 and live.plans.dropped == 1
    assert live.dropped["lost"] == 1 + 14  # step 5 (another system's: not counted as ours) and 26..39
    nan_lines = [w for w in live.sink.warnings if "nonfinite" in w]
    assert len(nan_lines) == 1, live.sink.warnings
    _wait(lambda: live.predictions >= 2, "predictions on after the bad input")
    report = live.report()
    assert report["dropped"] == live.dropped_total > 0
    assert live.report()["dropped"] == 0  # counted once


def test_throttled_logs_each_key_once_per_period_and_counts_the_rest():
    clock = [0.0]
    lines: list[str] = []
    warn = Throttled(lines.append, every_s=2.0, clock=lambda: clock[0])
    assert warn("a", "first a") and warn("b", "first b")
    assert not warn("a", "again a") and not warn("a", "again a")
    clock[0] = 2.5
    assert warn("a", "late a")
    assert lines == ["first a", "first b", "late a (+2 like it since the last)"]


def _adaptation(model, version, tag="", scale=0.5):
    local = {k: v.detach() + scale for k, v in model.decoder.local_parameters().items()}
    return Adaptation(tag, version, to_entries(local), loss_before=1.0, loss_after=0.5)


def test_adaptations_swap_in_only_for_the_model_in_use_and_when_newer(live):
    model = live.predictor.model
    assert live.on_adaptation("quadrotor", _adaptation(model, 2))
    assert live.predictor.version == 2
    assert not live.on_adaptation("quadrotor", _adaptation(model, 1))  # older: the transient-local replay
    assert not live.on_adaptation("quadrotor", _adaptation(model, 3, tag="model-abc"))  # another model's
    assert not live.on_adaptation("spring_mesh", _adaptation(model, 4))
    broken = Adaptation("", 5, [("nope", [1], [0.0])])
    assert not live.on_adaptation("quadrotor", broken)
    assert live.predictor.version == 2 and any("v5 not used" in w for w in live.sink.warnings)


def _checkpoint_bytes(tmp_path, seed: int) -> bytes:
    path = save_checkpoint(tmp_path / f"m{seed}.pt", random_model(D, M, d_model=16, context=5, seed=seed))
    return path.read_bytes()


def test_models_are_checked_loaded_and_swapped_with_their_early_adaptation(live, tmp_path):
    live.warn.every_s = 0.0  # every refusal's line (they are throttled per kind)
    data = _checkpoint_bytes(tmp_path, 7)
    tag = content_tag(data)
    assert live.on_model("quadrotor", ModelUpdate(data, "0" * 64, tag, "m7.pt"))  # wrong checksum
    _wait(lambda: live.models_refused == 1 and not live.loading, "the refusal")
    assert live.model_swaps == 0 and any("checksum" in w for w in live.sink.warnings)
    other = random_model(D, M, d_model=16, context=5, seed=7)
    early = _adaptation(other, 1, tag=tag)  # its parameters arrive before the model itself
    assert not live.on_adaptation("quadrotor", early)
    assert live.on_model("quadrotor", ModelUpdate(data, hashlib.sha256(data).hexdigest(), tag, "m7.pt"))
    _wait(lambda: live.model_swaps == 1 and not live.loading, "the swap")
    assert live.model_tag == tag and live.predictor.version == 1
    assert not live.on_model("quadrotor", ModelUpdate(data, hashlib.sha256(data).hexdigest(), tag, "m7.pt"))
    # a model of another context is refused, the running one stays
    buf = io.BytesIO()
    torch.save(b"not a checkpoint", buf)
    junk = buf.getvalue()
    live.on_model("quadrotor", ModelUpdate(junk, hashlib.sha256(junk).hexdigest(), "model-junk", "junk.pt"))
    _wait(lambda: live.models_refused == 2 and not live.loading, "the junk refusal")
    small = save_checkpoint(tmp_path / "ctx3.pt", random_model(D, M, d_model=16, context=3)).read_bytes()
    live.on_model("quadrotor", ModelUpdate(small, hashlib.sha256(small).hexdigest(), content_tag(small), "c.pt"))
    _wait(lambda: live.models_refused == 3 and not live.loading, "the context refusal")
    assert live.model_tag == tag and any("context" in w for w in live.sink.warnings)


def test_models_load_on_a_normal_scheduled_thread(live, monkeypatch):
    """In a real-time predictor the loader must not compete with the prediction thread at its priority
    (metasym_core.online.scheduling): it asks for normal scheduling before it loads."""
    import metasym_core.online.live_predictor as module

    threads = []
    monkeypatch.setattr(module, "background_scheduling", lambda: threads.append(threading.current_thread().name))
    junk = b"not a checkpoint"
    live.on_model("quadrotor", ModelUpdate(junk, hashlib.sha256(junk).hexdigest(), "model-junk", "junk.pt"))
    _wait(lambda: live.models_refused == 1 and not live.loading, "the refusal")
    assert threads == ["metasym-model-loader"]


def test_rollout_batch_takes_flat_requests_and_names_bad_ones(live):
    rng = np.random.default_rng(3)
    L, K, Hb = 5, 3, 4
    xs, us, hs, cand = rng.normal(size=(L, D)), rng.normal(size=(L, M)), np.full(L, DT), rng.normal(size=(K, Hb, M))
    states, version = live.rollout_batch(L, K, Hb, D, M, xs.ravel(), us.ravel(), hs, cand.ravel(), DT)
    ref, _ = live.predictor.rollout_batch(xs, us, hs, cand, DT)
    assert version == 0 and states.shape == (K, Hb, D)
    np.testing.assert_allclose(states, ref, rtol=1e-12)
    with pytest.raises(MetaSymError, match="state_dim/control_dim"):
        live.rollout_batch(L, K, Hb, D + 1, M, xs.ravel(), us.ravel(), hs, cand.ravel(), DT)
    with pytest.raises(MetaSymError, match="candidate_controls has"):
        live.rollout_batch(L, K, Hb, D, M, xs.ravel(), us.ravel(), hs, cand.ravel()[:-1], DT)
    with pytest.raises(MetaSymError, match=">= 1"):
        live.rollout_batch(L, 0, Hb, D, M, xs.ravel(), us.ravel(), hs, [], DT)
    assert torch.get_num_threads() == live.threads


def test_live_settings_take_effect(live):
    rng = np.random.default_rng(4)
    live.horizon = 3
    _feed(live, 6, rng)
    _wait(lambda: live.predictions >= 1, "a prediction")
    assert live.sink.published[-1][1].states.shape == (3, D)
    live.set_max_age(0.5)
    assert live.on_state("quadrotor", 6, 0.0, rng.normal(size=D), rng.normal(size=M), DT, now=10.0) == "stale"
    live.max_rate_hz = 20.0
    assert live.max_rate_hz == pytest.approx(20.0)


def test_without_a_trained_model_nothing_is_published_until_one_arrives(one_thread, tmp_path):
    """`trained=False` (the node had no checkpoint): it says so once, publishes no prediction and refuses
    batched rollouts; the first state after a learner's checkpoint is swapped in is predicted on."""
    sink = _Sink()
    live = LivePredictor(random_model(D, M, d_model=16, context=5), "quadrotor", sink.publish, horizon=H,
                         max_age_s=1e9, max_rate_hz=1e6, trained=False, info=sink.infos.append,
                         warn=sink.warnings.append)
    live.start()
    try:
        assert live.ready.wait(DEADLINE_S)
        assert len(sink.warnings) == 1 and "publishing no predictions" in sink.warnings[0]
        rng = np.random.default_rng(5)
        _feed(live, 12, rng)
        assert sink.published == [] and live.predictions == 0 and live.withheld == 8
        with pytest.raises(MetaSymError, match="no trained quadrotor model yet"):
            live.rollout_batch(5, 1, 2, D, M, np.zeros(5 * D), np.zeros(5 * M), np.full(5, DT), np.zeros(2 * M), DT)
        data = _checkpoint_bytes(tmp_path, 3)
        assert live.on_model("quadrotor", ModelUpdate(data, hashlib.sha256(data).hexdigest(), content_tag(data),
                                                      "m3.pt"))
        _wait(lambda: live.model_swaps == 1 and not live.loading, "the swap")
        assert any("publishing predictions from now on" in m for m in sink.infos)
        _feed(live, 1, rng, start=12)
        _wait(lambda: live.predictions == 1, "the first prediction")
        assert sink.published[0][0] == ("header", 12) and len(sink.warnings) == 1
    finally:
        live.stop()
