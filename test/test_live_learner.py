"""LiveLearner and BackgroundTraining: the learner node's work without DDS."""

import threading

import numpy as np
import pytest
from _models import perturbed_system, random_model
from _wait import wait_for

from metasym_core.checkpoint import content_tag, save_checkpoint
from metasym_core.errors import MetaSymError
from metasym_core.online.live_learner import LiveLearner
from metasym_core.online.throttle import Throttled
from metasym_core.systems.dataset import generate, save_dataset
from metasym_core.train.runs import BackgroundTraining, next_run

DEADLINE_S = 60.0
SETTINGS = {"window": 60, "inner_steps": 10, "lr": 0.1, "period_s": 0.0, "error_rise": 0.0, "min_gain": 0.0}


def _wait(condition, what: str) -> None:
    wait_for(condition, what, DEADLINE_S)


class _Sink:
    def __init__(self):
        self.published, self.infos, self.debugs, self.warnings = [], [], [], []

    def kwargs(self):
        return {"info": self.infos.append, "debug": self.debugs.append, "warn": self.warnings.append}


def _live(system="test", paused=False, model=None, **settings):
    sink = _Sink()
    if model is None:
        model, states, controls = perturbed_system()
    live = LiveLearner(model, system, {**SETTINGS, **settings}, lambda o, tag: sink.published.append((o, tag)),
                       max_age_s=1e9, paused=paused, **sink.kwargs())
    live.sink = sink
    live.start()
    _wait(lambda: not live.busy, "the warm-up")
    return live


def _feed(live, system="test"):
    _, states, controls = perturbed_system()
    for i in range(len(states)):
        assert live.on_state(system, 0.1 * i, states[i].numpy(), controls[i].numpy(), 0.1, now=0.1 * i) is None


def test_adaptations_run_off_the_callers_thread_and_publish_every_attempt(one_thread):
    live = _live()
    ok, why = live.request()
    assert not ok and "not enough samples" in why
    _feed(live)
    assert live.on_state("other", 0.0, np.zeros(4), np.zeros(1), 0.1, now=0.0) is None  # another system's: ignored
    assert not live.tick(now=20.0)  # period 0, no alarm: nothing due
    assert live.request() == (True, "adaptation scheduled")
    caller = threading.current_thread()
    assert live.tick(now=20.0)
    _wait(lambda: live.sink.published and not live.busy, "the adaptation")
    outcome, tag = live.sink.published[0]
    assert outcome.accepted and outcome.version == 1 and tag == "" and live.outcomes == [outcome]
    assert outcome.params is not None and any("adaptation v1 accepted" in t for t in live.sink.infos)
    assert live._worker is not caller and not live.tick(now=20.05)  # min_interval_s: not again at once
    live.stop()


def test_stop_waits_briefly_for_a_running_adaptation_which_then_publishes_nothing():
    """A node stopping mid-adaptation: `stop` returns within its wait (the launcher's grace covers every node),
    the adaptation still running publishes nothing (the node's publishers are going), and none starts after."""
    live = _live()
    _feed(live)
    release = threading.Event()
    adapt_window = live.learner.adapt_window

    def slow(*args, **kwargs):
        release.wait(DEADLINE_S)
        return adapt_window(*args, **kwargs)

    live.learner.adapt_window = slow
    assert live.request()[0] and live.tick(now=20.0) and live.busy
    assert not live.stop(wait_s=0.05)  # still running
    release.set()
    _wait(lambda: not live.busy, "the adaptation")
    assert len(live.outcomes) == 1 and live.sink.published == []
    assert live.request()[0] and not live.tick(now=40.0)  # stopped: nothing starts any more
    assert live.stop()


def test_bad_states_are_dropped_counted_and_logged_once_per_period():
    live = _live()
    for k in range(10):
        assert live.on_state("test", 0.1 * k, np.full(4, np.nan), np.zeros(1), 0.1, now=0.1 * k) == "nonfinite"
    assert live.learner.buffer.dropped == 10 and len(live.sink.warnings) == 1
    live.stop()


def test_paused_learner_neither_adapts_nor_accepts_requests_until_a_model_comes(tmp_path):
    model = random_model(state_dim=2, control_dim=1, d_model=16, context=10)
    live = _live(system="oscillator", paused=True, model=model, window=30)
    rng = np.random.default_rng(0)
    for k in range(40):
        live.on_state("oscillator", 0.1 * k, rng.normal(size=2), rng.normal(size=1), 0.1, now=0.1 * k)
    assert live.request() == (False, "adaptation paused until a trained model is in use (start-up training or ~/train)")
    assert not live.tick(now=100.0)
    live.configure("lr", 0.05)  # a setting changed meanwhile holds for the model swapped in
    with pytest.raises((MetaSymError, ValueError)):
        live.check("window", 0)
    trained = save_checkpoint(tmp_path / "final.pt", random_model(state_dim=2, control_dim=1, d_model=16, context=10,
                                                                  seed=3))
    tag, data = live.use_model(trained)
    assert tag == content_tag(data) and data == trained.read_bytes() and live.model_tag == tag
    assert not live.paused and live.learner.version == 0 and live.learner.lr == 0.05
    assert len(live.learner.buffer) == 30  # the buffered window stays
    assert live.request()[0]
    live.stop()


def test_throttled_progress_lines_do_without_the_count():
    lines = []
    progress = Throttled(lines.append, every_s=60.0, count=False)
    progress("step", "step 1")
    progress("step", "step 2")
    progress("step", "step 3")
    assert lines == ["step 1"]


# -- training runs ---------------------------------------------------------------------------------
def test_next_run_reuses_resumes_or_numbers_a_new_folder(tmp_path):
    assert next_run(tmp_path, at_start=True) == ("new", tmp_path / "run001")
    (tmp_path / "run001").mkdir()
    assert next_run(tmp_path, at_start=True) == ("new", tmp_path / "run001")  # left empty: used again
    (tmp_path / "run001" / "last.pt").write_bytes(b"")
    assert next_run(tmp_path, at_start=True) == ("resume", tmp_path / "run001")
    assert next_run(tmp_path, at_start=False) == ("new", tmp_path / "run002")
    (tmp_path / "run001" / "final.pt").write_bytes(b"")
    assert next_run(tmp_path, at_start=True) == ("reuse", tmp_path / "run001")
    (tmp_path / "run010").mkdir()
    (tmp_path / "run010" / "metrics.csv").write_text("")
    assert next_run(tmp_path, at_start=False) == ("new", tmp_path / "run011")


@pytest.mark.timeout(180)
def test_background_training_refuses_a_second_stops_with_last_pt_and_resumes(tmp_path, one_thread):
    from metasym_core.checkpoint import read_checkpoint
    from metasym_core.config import load_config

    paths = [str(save_dataset(generate("quadrotor", split, systems=n, steps=60, seed=seed, workers=1, progress=False),
                              tmp_path / f"{split}.npz")) for split, n, seed in (("train", 3, 0), ("ood", 2, 1))]
    models, infos = [], []

    def training(max_steps):
        return BackgroundTraining("quadrotor", load_config("quadrotor"), tmp_path / "runs", models.append,
                                  train_data=paths[0], val_data=paths[1], max_steps=max_steps, threads=1,
                                  info=infos.append, error=infos.append)

    with pytest.raises(MetaSymError, match="train_data: dataset not found"):
        BackgroundTraining("quadrotor", {}, tmp_path, models.append, train_data=str(tmp_path / "none.npz"))
    long = training(100_000)
    assert long.start() == (True, f"meta-training in {tmp_path / 'runs' / 'run001'}")
    started, why = long.start()
    assert not started and "already running" in why
    _wait(lambda: long.step >= 3, "a few training steps")
    assert long.stop(wait_s=30.0)
    run = tmp_path / "runs" / "run001"
    step = read_checkpoint(run / "last.pt")["extra"]["step"]
    assert step >= 3 and not (run / "final.pt").exists() and models == []
    assert long.start() == (False, "shutting down")
    assert any("meta-training stopped at step" in line for line in infos)

    again = training(step + 2)  # at start: the interrupted run is resumed and finished
    assert again.start(at_start=True)[1] == f"resuming meta-training in {run}"
    _wait(lambda: models and not again.running, "the resumed training")
    assert models == [run / "final.pt"] and again.summaries[0]["steps"] == step + 2
    assert again.start(at_start=True)[1] == f"using the model meta-trained in {run}"
    _wait(lambda: len(models) == 2 and not again.running, "the reuse")
