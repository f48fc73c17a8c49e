"""LiveController: the controller node's work without DDS (plans with one period of delay, the newest state
only, bad states, adaptations and models of the learner, the worker thread)."""

import hashlib
import math

import numpy as np
import pytest
from _models import random_model
from _wait import wait_for

from metasym_core.checkpoint import content_tag, save_checkpoint
from metasym_core.control.live_controller import LiveController
from metasym_core.control.mppi import MPPIConfig
from metasym_core.control.reference import FigureEight
from metasym_core.errors import MetaSymError
from metasym_core.online.live_predictor import Adaptation, ModelUpdate
from metasym_core.online.local_params import to_entries
from metasym_core.online.streams import make_stream
from metasym_core.systems import quadrotor as quad

D, M, DT, H, CONTEXT = 12, 4, 0.02, 6, 5


class _Sink:
    def __init__(self):
        self.plans, self.infos, self.warnings = [], [], []

    def publish(self, token, plan):
        self.plans.append((token, plan))


@pytest.fixture
def ctl(one_thread):
    sink = _Sink()
    model = random_model(D, M, d_model=16, context=CONTEXT)
    live = LiveController(model, "quadrotor", sink.publish, reference=FigureEight(),
                          config=MPPIConfig(samples=16, horizon=H), info=sink.infos.append, warn=sink.warnings.append)
    live.sink = sink
    yield live
    live.stop()


def _states(n, seed=0):
    """n consecutive samples of the quadrotor flying its own MPC."""
    stream = make_stream("quadrotor", dt=DT, seed=seed)
    return [stream.advance() for _ in range(n)]


def _feed(ctl, sample, **changes):
    args = {"system": "quadrotor", "step": sample.step, "stamp": 100.0 + sample.t, "state": sample.state,
            "control": sample.control, "dt": sample.dt, "token": ("header", sample.step), **changes}
    return ctl.on_state(**args)


def test_each_plan_starts_at_its_state_with_the_control_the_plant_already_applies(ctl):
    for sample in _states(12):
        assert _feed(ctl, sample) is None
        plan = ctl.solve_pending()
        assert (plan.step, plan.stamp, plan.dt, plan.system) == (sample.step, 100.0 + sample.t, DT, "quadrotor")
        assert plan.controls.shape == (H, M)
        np.testing.assert_array_equal(plan.controls[0], sample.control)  # one period of actuation delay
        assert np.all((plan.controls >= 0.0) & (plan.controls <= quad.MAX_THRUST))
    assert [token for token, _ in ctl.sink.plans] == [("header", k) for k in range(12)]
    assert ctl.solve_pending() is None  # nothing new
    report = ctl.report()
    assert report["solves"] == 12 and report["plans"] == 12 and report["skipped"] == 0
    assert math.isfinite(report["solve_ms_p50"]) and report["solve_ms_p99"] >= report["solve_ms_p50"]
    # the position error against the reference, which begins where the vehicle was when the controller took
    # over (here the vehicle flies its own MPC, so the error is that of 0.24 s apart)
    assert 0.0 <= report["tracking_rmse_m"] < 0.5
    again = ctl.report()
    assert again["solves"] == 0 and math.isnan(again["tracking_rmse_m"])  # per report period


def test_the_reference_begins_with_an_approach_from_where_the_controller_took_over(ctl):
    """The vehicle hovers somewhere else than on the figure-8 when the first plan is asked for: the
    controller's reference leads from there to it, with time counted from that first state."""
    samples = _states(30)[20:]  # a controller that starts late, mid-flight
    for sample in samples[:3]:
        _feed(ctl, sample)
        ctl.solve_pending()
    approach = ctl.mppi.reference
    np.testing.assert_allclose(approach.start, quad.position_of(samples[0].state))
    np.testing.assert_allclose(approach.position(0.0), quad.position_of(samples[0].state))
    np.testing.assert_allclose(approach.position(approach.duration_s), FigureEight().position(0.0))
    seen = []
    plan = ctl.mppi.plan
    ctl.mppi.plan = lambda t, x, applied=None: (seen.append(t), plan(t, x, applied))[1]
    _feed(ctl, samples[3])
    ctl.solve_pending()
    assert seen == [pytest.approx(3 * DT)]  # time since the controller took over


def test_only_the_newest_state_is_solved_from_and_the_others_fill_the_context(ctl):
    samples = _states(9)
    _feed(ctl, samples[0])
    ctl.solve_pending()
    shifts = []
    shift = ctl.mppi.mppi.shift
    ctl.mppi.mppi.shift = lambda: (shifts.append(1), shift())
    for sample in samples[1:4]:  # a slow solve: three states came meanwhile
        _feed(ctl, sample)
    previous = ctl.sink.plans[-1][1].controls  # the plan the plant flies until the next one arrives
    plan = ctl.solve_pending()
    assert plan.step == 3 and len(ctl.sink.plans) == 2 and ctl.skipped == 2
    # the next solve will take about as long: the plant applies this state's control, then the previous plan's
    # entries for the next two steps before this plan arrives; those stay, the rest is optimised
    np.testing.assert_array_equal(plan.controls[0], samples[3].control)
    np.testing.assert_array_equal(plan.controls[1:3], previous[4:6])
    assert not np.array_equal(plan.controls[3:], np.vstack([previous[6:], previous[-1:]])[: H - 3])
    history = ctl.mppi.history  # the context: every state with the control applied from it, in order
    np.testing.assert_array_equal(np.array([x for x, _ in history]), np.array([s.state for s in samples[:4]]))
    np.testing.assert_array_equal(np.array([u for _, u in history]), np.array([s.control for s in samples[:4]]))
    assert len(shifts) == 3  # the warm start moved on by the two skipped steps, then by the solved one
    for sample in samples[4:]:
        _feed(ctl, sample)
    assert ctl.solve_pending().step == 8 and len(ctl.mppi.history) == CONTEXT - 1


def test_bad_states_are_dropped_counted_and_a_gap_starts_a_new_context(ctl):
    samples = _states(8)
    for sample in samples[:4]:
        _feed(ctl, sample)
    ctl.solve_pending()
    bad = {"system": dict(system="spring_mesh"), "dimension": dict(state=np.zeros(5)),
           "nonfinite": dict(control=np.full(M, math.nan)), "bad_dt": dict(dt=0.0),
           "out_of_order": dict(stamp=0.0)}
    for _ in range(2):
        for reason, change in bad.items():
            assert _feed(ctl, samples[4], **change) == reason
    assert ctl.dropped_total == 10 and len(ctl.sink.warnings) == 5  # logged once per reason (throttled)
    assert ctl.solve_pending() is None and len(ctl.sink.plans) == 1
    _feed(ctl, samples[7])  # states 4-6 lost on the way: the context starts again at 7
    assert ctl.solve_pending().step == 7 and ctl.new_contexts == 1 and len(ctl.mppi.history) == 1
    with pytest.raises(MetaSymError, match="quadrotor"):
        LiveController(ctl.model, "spring_mesh", ctl.publish, reference=FigureEight(), config=MPPIConfig())


def _adaptation(model, version, tag="", scale=0.5):
    local = {k: v.detach() + scale for k, v in model.decoder.local_parameters().items()}
    return Adaptation(tag, version, to_entries(local), loss_before=1.0, loss_after=0.5)


def test_accepted_adaptations_of_its_model_are_adopted_before_the_next_solve(ctl):
    samples = _states(6)
    _feed(ctl, samples[0])
    ctl.solve_pending()
    assert ctl.version == 0
    assert ctl.on_adaptation("quadrotor", _adaptation(ctl.model, 2))
    assert not ctl.on_adaptation("spring_mesh", _adaptation(ctl.model, 3))
    _feed(ctl, samples[1])
    ctl.solve_pending()
    assert ctl.version == 2 and any("v2" in line for line in ctl.sink.infos)
    local = ctl.mppi.predictor.local
    ctl.on_adaptation("quadrotor", _adaptation(ctl.model, 1))  # older: a transient-local replay
    ctl.on_adaptation("quadrotor", _adaptation(ctl.model, 5, tag="model-other"))  # another model's
    ctl.on_adaptation("quadrotor", Adaptation("", 6, [("nope", [1], [0.0])]))  # does not fit: warned, left out
    for sample in samples[2:5]:
        _feed(ctl, sample)
        ctl.solve_pending()
    assert ctl.version == 2 and ctl.mppi.predictor.local is local
    assert sum("v6 not used" in w for w in ctl.sink.warnings) == 1
    ctl.configure(noise_std=0.3, reference=FigureEight(a=1.0))  # live settings, from the next solve
    _feed(ctl, samples[5])
    ctl.solve_pending()
    assert ctl.mppi.mppi.config.noise_std == 0.3 and ctl.mppi.reference.reference.a == 1.0
    with pytest.raises(MetaSymError):
        ctl.configure(temperature=-1.0)


def test_a_model_the_learner_trained_replaces_the_controllers_keeping_context_and_adaptations(ctl, tmp_path):
    samples = _states(5)
    for sample in samples[:3]:
        _feed(ctl, sample)
        ctl.solve_pending()
    other = random_model(D, M, d_model=16, context=CONTEXT, seed=7)
    data = save_checkpoint(tmp_path / "m7.pt", other).read_bytes()
    tag = content_tag(data)
    ctl.on_adaptation("quadrotor", _adaptation(other, 1, tag=tag))  # its parameters come before the model
    assert ctl.on_model("quadrotor", ModelUpdate(data, hashlib.sha256(data).hexdigest(), tag, "m7.pt"))
    wait_for(lambda: ctl._loaded is not None, "the loaded model")
    _feed(ctl, samples[3])
    ctl.solve_pending()
    assert ctl.model_tag == tag and ctl.model_swaps == 1 and ctl.version == 1
    assert len(ctl.mppi.history) == 4  # the context stayed
    small = save_checkpoint(tmp_path / "c3.pt", random_model(D, M, d_model=16, context=3)).read_bytes()
    ctl.on_model("quadrotor", ModelUpdate(small, hashlib.sha256(small).hexdigest(), content_tag(small), "c3.pt"))
    wait_for(lambda: ctl.models_refused == 1, "the refusal of a model of another context")
    assert ctl.model_tag == tag and any("context" in w for w in ctl.sink.warnings)


def test_the_worker_answers_the_newest_states_and_never_queues(ctl):
    ctl.start()
    assert ctl.ready.wait(30.0)
    samples = _states(40)
    for sample in samples:
        _feed(ctl, sample)
    wait_for(lambda: ctl.sink.plans and ctl.sink.plans[-1][1].step == 39, "the plan of the newest state")
    steps = [plan.step for _, plan in ctl.sink.plans]
    assert steps == sorted(set(steps)) and len(steps) + ctl.skipped == 40
