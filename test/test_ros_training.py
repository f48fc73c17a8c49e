"""The learner's meta-training over real DDS (issue 5): training at start, the `~/train` service,
stopping on shutdown / SIGINT (last.pt), and the hand-over of each trained model to the learner
itself and to the predictor (`metasym/model`), on tiny quadrotor datasets.

Discovery stays on this host, on a random domain in 100-200 (`_ros_env`).
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from _ros_env import ros_context, wait_for

from metasym_core.checkpoint import load_checkpoint, read_checkpoint
from metasym_core.config import load_config
from metasym_core.systems.dataset import SystemDataset, generate, save_dataset
from metasym_core.train.trainer import Trainer
from metasym_ros.start import STOP_GRACE_S, TEARDOWN_LIMIT_S

DEADLINE_S = 60.0  # generous: other work may load this 2-core machine


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(train.npz, val.npz): 3 + 2 quadrotors of 60 frames (~1 s to make)."""
    root = tmp_path_factory.mktemp("data")
    paths = []
    for split, systems, seed in (("train", 3, 0), ("ood", 2, 1)):
        arrays = generate("quadrotor", split, systems=systems, steps=60, seed=seed, workers=1, progress=False)
        paths.append(str(save_dataset(arrays, root / f"quadrotor_{split}.npz")))
    return tuple(paths)


def _learner_params(tiny_data, tmp_path, **extra):
    train, val = tiny_data
    return {"system": "quadrotor", "checkpoint": "", "train_data": train, "val_data": val,
            "train_dir": str(tmp_path / "train"),
            "params_dir": str(tmp_path / "phi"), "window": 40, "period_s": 0.0, "error_rise": 1e9, **extra}


def _call(client, what):
    """A Trigger call once the service is ready (plus a moment for the response path to match)."""
    from std_srvs.srv import Trigger

    wait_for(client.service_is_ready, what)
    time.sleep(0.2)
    res = client.call(Trigger.Request(), timeout_sec=DEADLINE_S)
    assert res is not None, f"no answer from {what}"
    return res


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)




def test_trainer_should_stop_saves_last_and_resumes(tmp_path):
    """The cooperative stop hook: last.pt at the step it stopped, no final.pt, resume finishes the run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _stop_and_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _stop_and_resume(tmp_path):
    arrays = {s: generate("oscillator", s, systems=4, steps=60, seed=i, workers=1, progress=False)
              for i, s in enumerate(("train", "ood"))}
    train, val = SystemDataset.from_arrays(arrays["train"]), SystemDataset.from_arrays(arrays["ood"])
    cfg = load_config("oscillator")
    cfg["training"] = {**cfg["training"], "encoder_steps": 3, "outer_steps": 2, "inner_steps": 2,
                       "batch_systems": 2, "window": 12, "eval_interval": 2, "checkpoint_interval": 50}
    full = Trainer(cfg, train, val, tmp_path / "full", seed=1, progress=False)
    full.run(should_stop=lambda: False)
    part = Trainer(cfg, train, val, tmp_path / "part", seed=1, progress=False)
    summary = part.run(should_stop=lambda: part.step >= 4)
    assert summary == {"steps": 4, "stopped": True, "checkpoint": str(tmp_path / "part" / "last.pt")}
    assert read_checkpoint(tmp_path / "part" / "last.pt")["extra"]["step"] == 4
    assert not (tmp_path / "part" / "final.pt").exists()
    again = Trainer(cfg, train, val, tmp_path / "part", seed=1, progress=False)
    again.resume()
    assert again.run()["steps"] == 5 and (tmp_path / "part" / "final.pt").is_file()
    assert _same_weights(full.model, again.model)


def test_prepare_datasets_generates_once_and_stops(tmp_path):
    from metasym_core.config import data_tag
    from metasym_core.train.runs import prepare_datasets

    assert prepare_datasets("quadrotor", "", "", tmp_path, should_stop=lambda: True) is None
    train, val = prepare_datasets("quadrotor", "", "", tmp_path / "data", systems=2, steps=40)  # made
    # validation: held-out systems from the training ranges (train.runs.VALIDATION), never the OOD test systems
    assert (train.split, val.split, len(train), train.steps) == ("train", "train", 2, 40)
    assert not np.allclose(val.params, train.params) and (tmp_path / "data" / "quadrotor_val_train7.npz").is_file()
    whole = generate("quadrotor", "train", systems=2, steps=40, seed=0, workers=1, progress=False)
    assert (train.states == whole["states"]).all()  # one shard per system == one run
    stamp = os.stat(tmp_path / "data" / "quadrotor_train.npz").st_mtime_ns
    prepare_datasets("quadrotor", "", "", tmp_path / "data", systems=3, steps=40)  # present: reused as is
    assert os.stat(tmp_path / "data" / "quadrotor_train.npz").st_mtime_ns == stamp
    # the config's data section: family options (here the MPC flights) and their own files
    train, _ = prepare_datasets("quadrotor", "", "", tmp_path / "data", systems=1, steps=20,
                                family_options={"source": "flight"})
    assert (tmp_path / "data" / f"quadrotor{data_tag({'source': 'flight'})}_train.npz").is_file() and train.steps == 20


@pytest.mark.ros
@pytest.mark.timeout(120)
def test_learner_trains_at_start_and_predictor_switches(tiny_data, tmp_path):
    import hashlib

    from metasym_ros.msg import AdaptationStatus, LocalParameter, ModelCheckpoint, Prediction
    from std_srvs.srv import Trigger

    from metasym_core.checkpoint import content_tag, save_checkpoint
    from metasym_core.config import build_model
    from metasym_core.online.local_params import to_entries
    from metasym_ros import qos
    from metasym_ros.learner_node import LearnerNode
    from metasym_ros.predictor_node import PredictorNode
    from metasym_ros.simulator_node import SimulatorNode

    with ros_context() as (ns, make, thread):
        make(SimulatorNode, {"system": "quadrotor", "dt": 0.02, "change_time": -1.0})
        pred = make(PredictorNode, {"system": "quadrotor", "horizon": 5})
        learner = make(LearnerNode, _learner_params(tiny_data, tmp_path, train_at_start=True, train_steps=4))
        probe = make("probe")
        models, preds = [], []
        probe.create_subscription(ModelCheckpoint, qos.MODEL_TOPIC, models.append, qos.MODEL_QOS)
        probe.create_subscription(Prediction, qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        adapt_pub = probe.create_publisher(AdaptationStatus, qos.ADAPTATION_TOPIC, qos.ADAPTATION_QOS)
        model_pub = probe.create_publisher(ModelCheckpoint, qos.MODEL_TOPIC, qos.MODEL_QOS)
        thread.start()

        # start-up training -> final.pt -> metasym/model -> learner and predictor use it
        final = tmp_path / "train" / "run001" / "final.pt"
        wait_for(lambda: models, "the trained model on metasym/model", DEADLINE_S)
        data = final.read_bytes()  # the checkpoint travels whole, with its checksum
        assert models[0].path == str(final) and bytes(models[0].data) == data
        assert models[0].sha256 == hashlib.sha256(data).hexdigest()
        assert learner.trainer.summaries[0]["steps"] == 4
        trained, _ = load_checkpoint(final)
        assert _same_weights(learner.live.learner.model, trained)
        tag = content_tag(data)
        assert learner.live.model_tag == tag and learner.live.learner.version == 0
        assert learner.live.learner.out_dir == tmp_path / "phi" / tag  # versions restart, in the model's own folder
        wait_for(lambda: pred.live.model_swaps == 1, "the predictor to switch models", DEADLINE_S)
        assert pred.live.model_path == str(final) and pred.live.model_tag == tag
        assert _same_weights(pred.live.predictor.model, trained)
        n = len(preds)
        wait_for(lambda: len(preds) > n + 3, "predictions of the new model")

        # parameters of the previous model are not applied to the new one; its own are
        local = {k: torch.zeros_like(v) for k, v in trained.decoder.local_parameters().items()}
        entries = [LocalParameter(name=n, shape=shape, values=v.tolist()) for n, shape, v in to_entries(local)]
        for version, owner in ((5, ""), (1, tag)):
            status = AdaptationStatus(system="quadrotor", version=version, accepted=True, reason="test",
                                      model_tag=owner, params=entries, loss_before=1.0, loss_after=0.5)
            adapt_pub.publish(status)
            if version == 5:
                time.sleep(0.5)
                assert pred.live.predictor.version == 0, "parameters of the old model must not be applied"
        wait_for(lambda: pred.live.predictor.version == 1, "the new model's parameters")
        n = len(preds)
        wait_for(lambda: any(p.params_version == 1 for p in preds[n:]), "predictions with them")

        # a checkpoint of other dimensions is refused; the model in use stays
        other = build_model(load_config("quantum"))
        bad = save_checkpoint(tmp_path / "quantum.pt", other).read_bytes()
        model_pub.publish(ModelCheckpoint(system="quadrotor", tag=content_tag(bad), path="quantum.pt", data=bad,
                                          sha256=hashlib.sha256(bad).hexdigest()))
        wait_for(lambda: pred.live.models_refused == 1, "the quantum checkpoint to be refused")
        # bytes that do not match their checksum are refused too
        model_pub.publish(ModelCheckpoint(system="quadrotor", tag="model-x", path="x.pt", data=data[:-1],
                                          sha256=hashlib.sha256(data).hexdigest()))
        wait_for(lambda: pred.live.models_refused == 2, "the damaged checkpoint to be refused")
        assert pred.live.model_swaps == 1 and pred.live.model_path == str(final)

        # ~/train: a new run, announced and swapped in again
        res = _call(probe.create_client(Trigger, f"{ns}/learner/train"), "the train service")
        assert res.success and "run002" in res.message
        final2 = tmp_path / "train" / "run002" / "final.pt"
        wait_for(lambda: pred.live.model_swaps == 2, lambda: f"the predictor to switch to the second run (learner: "
                 f"{learner.trainer.state}, {len(learner.trainer.summaries)} trainings, refused "
                 f"{pred.live.models_refused})",
                 DEADLINE_S)
        assert pred.live.model_path == str(final2) == learner.live.model_path and pred.live.predictor.version == 0


@pytest.mark.ros
@pytest.mark.timeout(120)
def test_train_service_refuses_while_training_and_stops_on_shutdown(tiny_data, tmp_path):
    from std_srvs.srv import Trigger

    from metasym_ros.learner_node import LearnerNode

    run = tmp_path / "train" / "run001"
    t0 = None
    with ros_context() as (ns, make, thread):
        learner = make(LearnerNode, _learner_params(tiny_data, tmp_path, train_steps=100_000, train_at_start=False))
        probe = make("probe")
        thread.start()
        client = probe.create_client(Trigger, f"{ns}/learner/train")
        first = _call(client, "the train service")
        second = _call(client, "the train service again")
        assert first.success and str(run) in first.message, first.message
        assert not second.success and "already running" in second.message, second.message
        wait_for(lambda: learner.trainer.step >= 5, "a few training steps", DEADLINE_S)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10, "shutdown must stop the training within a few seconds"
    assert not learner.trainer.running and not (run / "final.pt").exists()
    step = read_checkpoint(run / "last.pt")["extra"]["step"]
    assert step >= 5
    load_checkpoint(run / "last.pt")

    # train_at_start resumes the interrupted run and finishes it
    with ros_context() as (_, make, thread):
        learner = make(LearnerNode, _learner_params(tiny_data, tmp_path, train_at_start=True,
                                                    train_steps=step + 2))
        thread.start()
        wait_for(lambda: learner.trainer.summaries, "the resumed training", DEADLINE_S)
    assert learner.trainer.summaries[0]["steps"] == step + 2 and (run / "final.pt").is_file()
    assert learner.live.model_path == str(run / "final.pt")


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(120)
def test_sigint_during_training_exits_cleanly_and_leaves_last_pt(tiny_data, tmp_path):
    train, val = tiny_data
    params = {"system": "quadrotor", "checkpoint": '""', "train_at_start": "true", "train_data": train, "val_data": val,
              "train_dir": str(tmp_path / "train"), "train_steps": "100000"}
    cmd = [sys.executable, "-m", "metasym_ros.learner_node", "--ros-args"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("meta-training step" in line for line in lines) or proc.poll() is not None,
                 "training progress of the learner process", 60)
        assert proc.poll() is None, "learner exited early:\n" + "".join(lines)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
        out = "".join(lines)
        assert proc.returncode == 0, out
        assert time.monotonic() - t0 < STOP_GRACE_S, "the learner must exit within a launcher's grace"
        assert "meta-training stopped at step" in out and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = tmp_path / "train" / "run001"
    model, extra = load_checkpoint(run / "last.pt")
    assert extra["step"] >= 1 and model.state_dim == 12
    assert not (run / "final.pt").exists()


@pytest.mark.ros
def test_the_learners_shutdown_waits_fit_in_a_launchers_grace():
    """A training that does not stop in time and an adaptation still running must not together outlast the
    grace after which `metasym launch` kills a node (the node would die before saving, with a stack dump)."""
    from metasym_core.online import live_learner
    from metasym_ros import learner_node

    # the learner's own waits run inside its teardown, which gives up after TEARDOWN_LIMIT_S (test_start.py)
    assert learner_node.STOP_WAIT_S + live_learner.STOP_WAIT_S + 0.5 <= TEARDOWN_LIMIT_S < STOP_GRACE_S


@pytest.mark.ros
def test_learner_refuses_bad_training_parameters(tiny_data, tmp_path):
    from metasym_core.errors import MetaSymError
    from metasym_ros.learner_node import LearnerNode

    with ros_context() as (_, make, _thread):
        with pytest.raises(MetaSymError, match="train_steps"):
            make(LearnerNode, _learner_params(tiny_data, tmp_path, train_steps=-1))
        with pytest.raises(MetaSymError, match="train_data: dataset not found"):
            make(LearnerNode, _learner_params(tiny_data, tmp_path, train_data=str(tmp_path / "none.npz")))
        with pytest.raises(MetaSymError, match="checkpoint not found"):  # without train_at_start: as before
            make(LearnerNode, _learner_params(tiny_data, tmp_path, checkpoint=str(tmp_path / "none.pt"),
                                              train_at_start=False))
