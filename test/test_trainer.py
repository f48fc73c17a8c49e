"""Trainer: resume reproduces the uninterrupted run, Ctrl-C, bad inputs, CLI."""

import json
import math

import pytest
import torch
import yaml

from metasym_core.checkpoint import load_checkpoint, read_checkpoint
from metasym_core.cli import main
from metasym_core.config import load_config
from metasym_core.errors import MetaSymError
from metasym_core.systems.dataset import SystemDataset, generate, save_dataset
from metasym_core.train.config import TrainingConfig
from metasym_core.train.trainer import Trainer

TINY = {"encoder_steps": 4, "outer_steps": 5, "inner_steps": 2, "batch_systems": 2, "window": 12,
        "checkpoint_interval": 3, "eval_interval": 2, "patience": 50}


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: 1 thread (conftest)


@pytest.fixture(scope="module")
def arrays():
    return {split: generate("oscillator", split, systems=4, steps=60, seed=seed, workers=1, progress=False)
            for split, seed in (("train", 0), ("ood", 1))}


@pytest.fixture
def data(arrays):
    return SystemDataset.from_arrays(arrays["train"]), SystemDataset.from_arrays(arrays["ood"])


def _cfg(**training):
    cfg = load_config("oscillator")
    cfg["training"] = {**cfg["training"], **TINY, **training}
    return cfg


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_and_ctrl_c_reproduce_uninterrupted_run(data, tmp_path):
    train, val = data
    full = Trainer(_cfg(), train, val, tmp_path / "full", seed=3, progress=False)
    full.run()
    assert full.step == 9
    # interrupted by --max-steps inside the encoder phase, then resumed
    part = Trainer(_cfg(), train, val, tmp_path / "part", seed=3, max_steps=3, progress=False)
    part.run()
    again = Trainer(_cfg(), train, val, tmp_path / "part", seed=3, progress=False)
    again.resume()
    assert again.step == 3
    again.run()
    assert _same(full.model, again.model)
    # Ctrl-C in the decoder phase saves last.pt first
    ctrl = Trainer(_cfg(), train, val, tmp_path / "ctrl", seed=3, progress=False)
    calls = {"n": 0}
    real = ctrl._decoder_step

    def interrupt():
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real()
    ctrl._decoder_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        ctrl.run()
    assert read_checkpoint(tmp_path / "ctrl" / "last.pt")["extra"]["step"] == 6
    resumed = Trainer(_cfg(), train, val, tmp_path / "ctrl", seed=3, progress=False)
    resumed.resume()
    resumed.run()
    assert _same(full.model, resumed.model)
    for run in ("full", "part"):
        rows = (tmp_path / run / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("step,phase,loss") and len(rows) == 10
        summary = json.loads((tmp_path / run / "metrics.json").read_text())
        assert summary["steps"] == 9
    assert (tmp_path / "full" / "final.pt").is_file() and (tmp_path / "full" / "best.pt").is_file()


def test_the_encoder_cosine_schedule_is_applied_and_survives_a_resume(data, tmp_path):
    """`encoder_cosine`: the encoder's Adam rate at step s is encoder_lr·(1 + cos(π s/S))/2 (a function of
    the step alone), the decoder's is untouched, and a run resumed inside phase 1 equals the uninterrupted one."""
    tc = TrainingConfig.from_config(_cfg(encoder_cosine=True, encoder_lr=0.02))
    assert tc.encoder_rate(0) == 0.02 and tc.encoder_rate(2) == pytest.approx(0.01)
    assert tc.encoder_rate(4) == pytest.approx(0.0, abs=1e-12)
    assert TrainingConfig.from_config(_cfg()).encoder_rate(3) == TrainingConfig.from_config(_cfg()).encoder_lr
    train, val = data
    seen = []
    full = Trainer(_cfg(encoder_cosine=True), train, val, tmp_path / "full", seed=3, progress=False)
    real = full._apply

    def spy(loss, opt, params):
        seen.append((opt is full.enc_opt, opt.param_groups[0]["lr"]))
        return real(loss, opt, params)
    full._apply = spy
    full.run()
    lr = full.tc.encoder_lr
    expected = [lr * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [r for enc, r in seen if enc] == pytest.approx(expected)
    assert {r for enc, r in seen if not enc} == {full.tc.outer_lr}
    part = Trainer(_cfg(encoder_cosine=True), train, val, tmp_path / "part", seed=3, max_steps=2, progress=False)
    part.run()
    again = Trainer(_cfg(encoder_cosine=True), train, val, tmp_path / "part", seed=3, progress=False)
    again.resume()
    again.run()
    assert _same(full.model, again.model)
    with pytest.raises(MetaSymError, match="training.encoder_cosine = 1 must be a boolean"):
        TrainingConfig.from_config(_cfg(encoder_cosine=1))


@pytest.mark.parametrize("residual", ["state", "encoder"])
def test_input_noise_perturbs_inputs_not_targets(data, tmp_path, residual):
    """`input_noise`: the decoder's input states move by ~noise·delta_std (never on fixed coordinates), and each
    target is still the clean next state measured from the noisy input's anchor; 0 gives the cached tokens."""
    from metasym_core.train.data import TrainData
    train, val = data
    cfg = _cfg()
    cfg["model"]["decoder"]["residual"] = residual
    trainer = Trainer(cfg, train, val, tmp_path, seed=0, progress=False)
    model = trainer.model.eval()
    with torch.no_grad():
        model.fixed[0] = True  # a coordinate that never moves keeps its value
    td = TrainData(train, model, 0.5, 12, "training")
    systems, first = torch.tensor([0, 2]), torch.tensor([3, 5])
    clean = td.decoder_window(model, systems, first, lead=2)
    assert torch.equal(td.decoder_window(model, systems, first, lead=2, noise=0.0).x, clean.x)
    noisy = td.decoder_window(model, systems, first, lead=2, noise=1.0, gen=torch.Generator().manual_seed(0))
    moved = (noisy.x - clean.x) * model.state_std / model.delta_std  # in delta_std units
    assert (moved[..., 0] == 0).all() and 0.7 < float(moved[..., 1:].std()) < 1.3
    idx = (first - 2)[:, None] + torch.arange(td.window + 3)
    states = td.states[systems[:, None], idx]
    x_in = noisy.x * model.state_std + model.state_mean
    e_in = noisy.e * model.state_std + model.state_mean
    anchor = model.anchor(x_in, e_in, td.controls[systems[:, None], idx], td.h[systems[:, None], idx])
    assert torch.allclose(anchor[:, :-1] + noisy.target * model.delta_std, states[:, 1:], atol=1e-9)
    with pytest.raises(MetaSymError, match="training.input_noise = -0.1 must be a non-negative number"):
        TrainingConfig.from_config(_cfg(input_noise=-0.1))
    assert TrainingConfig.from_config(_cfg(input_noise=0)).input_noise == 0.0


def test_training_with_input_noise_resumes_exactly(data, tmp_path):
    """The noise is drawn from the trainer's saved generator: a run resumed mid-way equals the uninterrupted one,
    and differs from a run without noise."""
    train, val = data
    full = Trainer(_cfg(input_noise=0.5), train, val, tmp_path / "full", seed=3, progress=False)
    full.run()
    part = Trainer(_cfg(input_noise=0.5), train, val, tmp_path / "part", seed=3, max_steps=6, progress=False)
    part.run()
    again = Trainer(_cfg(input_noise=0.5), train, val, tmp_path / "part", seed=3, progress=False)
    again.resume()
    again.run()
    assert _same(full.model, again.model)
    plain = Trainer(_cfg(), train, val, tmp_path / "plain", seed=3, progress=False)
    plain.run()
    assert not _same(full.model, plain.model)


def test_nan_loss_keeps_last_good_checkpoint(data, tmp_path):
    train, val = data
    t = Trainer(_cfg(), train, val, tmp_path, seed=0, max_steps=3, progress=False)
    t.run()
    good = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.total = 9
    with torch.no_grad():
        t.model.encoder.S.fill_(float("nan"))
    with pytest.raises(MetaSymError, match="training loss is nan at step 3") as info:
        t.run()
    assert "\n" not in str(info.value)
    model, extra = load_checkpoint(tmp_path / "last.pt")
    assert extra["step"] == 3
    assert all(torch.equal(model.state_dict()[k], good[k]) for k in good)


def test_bad_inputs(data, tmp_path):
    train, val = data
    with pytest.raises(MetaSymError, match="state_dim 2, control_dim 1; the config expects 12, 4"):
        Trainer(load_config("quadrotor"), train, val, tmp_path)
    empty = SystemDataset(train.metadata, train.system_index[:0], train.params[:0], train.times[:0],
                          train.states[:0], train.controls[:0], {})
    with pytest.raises(MetaSymError, match="empty"):
        Trainer(_cfg(), empty, val, tmp_path)
    with pytest.raises(MetaSymError, match="training.inner_lr"):
        TrainingConfig.from_config({"training": {"inner_lr": -1}})
    with pytest.raises(MetaSymError, match="unknown training keys"):
        TrainingConfig.from_config({"training": {"inner_step": 3}})
    with pytest.raises(MetaSymError, match="too few"):
        Trainer(_cfg(support_fraction=0.1), train, val, tmp_path)


def test_open_trainer_one_rule_for_every_caller(data, tmp_path):
    """`train.runs.open_trainer`: auto continues an interrupted run, always needs one, never refuses to overwrite
    one, fresh starts over; a last.pt of another model config is a one-line error."""
    from metasym_core.train.runs import open_trainer
    train, val = data
    run = tmp_path / "run"
    with pytest.raises(MetaSymError, match="nothing to resume"):
        open_trainer(_cfg(), train, val, run, "always", progress=False)
    first = open_trainer(_cfg(), train, val, run, "never", seed=3, max_steps=3, progress=False)
    first.run()
    assert first.step == 3
    with pytest.raises(MetaSymError, match="already holds a run"):
        open_trainer(_cfg(), train, val, run, "never", progress=False)
    assert open_trainer(_cfg(), train, val, run, "auto", seed=3, progress=False).step == 3
    assert open_trainer(_cfg(), train, val, run, "always", seed=3, progress=False).step == 3
    assert open_trainer(_cfg(), train, val, tmp_path / "empty", "auto", progress=False).step == 0
    assert open_trainer(_cfg(), train, val, run, "fresh", progress=False).step == 0
    wider = _cfg()
    wider["model"]["decoder"]["d_model"] = 2 * wider["model"]["decoder"]["d_model"]
    with pytest.raises(MetaSymError, match="cannot resume .*last.pt .*different model config"):
        open_trainer(wider, train, val, run, "auto", progress=False)
    with pytest.raises(MetaSymError, match="resume must be one of auto, always, never, fresh"):
        open_trainer(_cfg(), train, val, run, "sometimes", progress=False)


def test_cli_train_and_evaluate(arrays, tmp_path, capsys):
    for split, arr in arrays.items():
        save_dataset(arr, tmp_path / f"{split}.npz")
    cfg = yaml.safe_load(open(load_config("oscillator")["_path"]))
    cfg["training"].update(TINY)
    (tmp_path / "osc.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--system", "oscillator", "--config", str(tmp_path / "osc.yaml"), "--data",
            str(tmp_path / "train.npz"), "--val", str(tmp_path / "ood.npz"), "--out", str(tmp_path / "run"),
            "--quiet"]
    assert main(args + ["--max-steps", "5"]) == 0
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 9
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "final.pt"), "--data",
                 str(tmp_path / "ood.npz"), "--shots", "30", "--horizon", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["systems"]) == 4 and math.isfinite(out["mse_after"]["mean"])
    assert set(out["mse_before"]) == {"mean", "std"}
    assert main(["train", "--system", "quadrotor", "--config", str(tmp_path / "osc.yaml"), "--data",
                 str(tmp_path / "train.npz"), "--val", str(tmp_path / "ood.npz"), "--out", str(tmp_path / "x")]) == 1
    assert "is for oscillator" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "final.pt"), "--data",
                 str(tmp_path / "ood.npz"), "--shots", "3"]) == 1
    assert "shots must be in" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train, val = (SystemDataset.from_arrays(generate("oscillator", s, systems=4, steps=60, seed=seed, workers=1,
                                                         progress=False)) for s, seed in (("train", 0), ("ood", 1)))
        cfg = _cfg(batch_systems=4)
        cfg["model"]["encoder"]["dropconnect"] = 0.0
        t = Trainer(cfg, train, val, f"{folder}/run", seed=5, progress=False)
        t.run()
        torch.save({"state": t.model.state_dict(), "losses": [r["loss"] for r in t.history]},
                   f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_matches_single_process(data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    cfg = _cfg(batch_systems=4)
    cfg["model"]["encoder"]["dropconnect"] = 0.0
    single = Trainer(cfg, *data, tmp_path / "single", seed=5, progress=False)
    single.run()
    assert [r["loss"] for r in single.history] == pytest.approx(r0["losses"], rel=1e-4, abs=1e-6)
    state = single.model.state_dict()
    assert all(torch.allclose(state[k], r0["state"][k], rtol=1e-4, atol=1e-5) for k in state)
    assert (tmp_path / "run" / "final.pt").is_file()


def test_train_bench_smoke(tmp_path):
    from metasym_core.bench.train import run_train_bench

    figures = run_train_bench(["oscillator"], repeats=1, adapt_repeats=2, doc=tmp_path / "bench.md")
    assert figures["oscillator_decoder_step_ms"] > 0 and figures["adapt_k10_t200_1thread_ms"] > 0
    assert "## Training" in (tmp_path / "bench.md").read_text()
