"""Ablation D.3 (paper Table 5): MetaSym without meta-attention (`ActiveDecoder(meta_attention=False)`).

The variant's blocks go self-attention → MLP: no meta-attention parameters, an empty φ, the
encoder latents never read. It must stay causal, save/load, meta-train (the inner loop a no-op)
and refuse adaptation with a one-line error. Rollout paths: see test_rollout.py (`meta` cases).
"""

import copy

import pytest
import torch
from _models import random_model

from metasym_core import ActiveDecoder, MetaSym, load_checkpoint, save_checkpoint
from metasym_core.config import build_model, load_config
from metasym_core.errors import MetaSymError
from metasym_core.meta.adapt import adapt
from metasym_core.meta.decoder_bilevel import bilevel_loss
from metasym_core.online.learner import OnlineLearner
from metasym_core.systems.dataset import SystemDataset, generate
from metasym_core.train.data import TrainData
from metasym_core.train.evaluate import evaluate
from metasym_core.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: 1 thread (conftest)


def _cfg(**training) -> dict:
    cfg = load_config("oscillator")
    cfg["model"]["decoder"]["meta_attention"] = False
    cfg["training"] = {**cfg["training"], **training}
    return cfg


def test_no_meta_attention_parameters_and_empty_phi():
    dec = ActiveDecoder(6, 2, 16, heads=4, layers=2, context=4, meta_attention=False)
    full = ActiveDecoder(6, 2, 16, heads=4, layers=2, context=4)
    names = [n for n, _ in dec.named_parameters()]
    assert not any("meta_attn" in n or ".ln2." in n for n in names)
    assert all(not hasattr(b, "meta_attn") and not hasattr(b, "ln2") for b in dec.blocks)
    assert dec.local_parameters() == {} and set(dec.global_parameters()) == set(names)
    # exactly the meta-attention branch is gone
    missing = {n for n, _ in full.named_parameters()} - set(names)
    assert missing and all(".meta_attn." in n or ".ln2." in n for n in missing)
    assert dec.config()["meta_attention"] is False and full.config()["meta_attention"] is True


def test_config_key_checkpoints_and_old_configs(tmp_path):
    model = build_model(_cfg())
    assert model.decoder.meta_attention is False
    assert build_model(load_config("oscillator")).decoder.meta_attention is True  # default on
    path = save_checkpoint(tmp_path / "d3.pt", model)
    loaded = load_checkpoint(path)[0]
    assert loaded.decoder.meta_attention is False and loaded.decoder.local_parameters() == {}
    old = build_model(load_config("oscillator")).config()
    del old["decoder"]["meta_attention"]  # a checkpoint from before the key existed
    assert MetaSym.from_config(old).decoder.meta_attention is True
    bad = _cfg()
    bad["model"]["decoder"]["meta_attention"] = "no"
    with pytest.raises(MetaSymError, match="meta_attention must be true or false"):
        build_model(bad)


def test_causal_and_ignores_the_latents():
    torch.manual_seed(0)
    dec = ActiveDecoder(6, 2, 16, heads=4, layers=2, context=4, meta_attention=False).double().eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    x, e = (torch.randn(2, 12, 6, generator=g, dtype=torch.float64) for _ in range(2))
    u, h = torch.randn(2, 12, 2, generator=g, dtype=torch.float64), torch.rand(2, 12, 1, generator=g,
                                                                              dtype=torch.float64)
    base = dec(x, u, h, e)
    for t in (0, 5, 11):
        for i in range(3):  # x, u, h
            args = [a.clone() for a in (x, u, h, e)]
            args[i][:, t] += 1.0
            out = dec(*args)
            assert torch.equal(out[:, :t], base[:, :t]), f"input {i} at step {t} leaked backwards"
            assert (out[:, t] - base[:, t]).abs().max() > 0
    assert torch.equal(dec(x, u, h, e + 1.0), base)  # the encoder latents are not read
    out, kv = dec.forward_with_kv(x, u, h, e)
    assert torch.equal(out, base) and all(len(block) == 2 for block in kv)  # self-attention keys/values only


def test_numpy_path_runs_for_the_variant(monkeypatch):
    """The NumPy fast path takes the variant (not a fallback) and equals the plain rollout."""
    from metasym_core.models import fastpath
    calls = []
    real = fastpath.rollout_numpy
    monkeypatch.setattr(fastpath, "rollout_numpy", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    model = random_model(meta_attention=False, layers=2, context=6)
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(2, 8, 12, generator=g, dtype=torch.float64), torch.randn(2, 8, 4, generator=g,
                                                                               dtype=torch.float64)
    h = torch.rand(1, 20, dtype=torch.float64).expand(2, 20) * 0.02 + 0.005  # irregular steps
    with torch.no_grad():
        fast = model.rollout(x, u, h, 12, backend="numpy")
        ref = model.rollout_reference(x, u, h, 12)
    assert len(calls) == 1 and calls[0] is not None
    assert (fast - ref).abs().max() < 1e-10


def test_bilevel_loss_trains_theta_with_a_noop_inner_loop():
    """Empty φ: the bi-level loss is the plain query loss (any K), and Adam steps on θ lower it."""
    train = SystemDataset.from_arrays(generate("oscillator", "train", systems=4, steps=120, seed=0, workers=1,
                                               progress=False))
    torch.manual_seed(0)
    model = build_model(_cfg())
    data = TrainData(train, model, 0.5, 30, "training")
    model.set_normalization(data.states, data.controls, data.h)
    gen = torch.Generator().manual_seed(0)
    systems, s0, q0 = data.sample_offsets(4, gen)
    lead = model.context - 1
    support, query = data.decoder_window(model, systems, s0), data.decoder_window(model, systems, q0, lead)
    k10 = bilevel_loss(model, support, query, 10, 0.1, lead)
    k0 = bilevel_loss(model, support, query, 0, 0.1, lead)
    assert float(k10.detach()) == float(k0.detach())
    opt = torch.optim.Adam(model.decoder.parameters(), 3e-3)
    model.decoder.train()
    losses = []
    for _ in range(15):
        loss = bilevel_loss(model, support, query, 10, 0.1, lead)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_trainer_skips_the_encoder_phase_and_trains(tmp_path):
    arrays = {split: SystemDataset.from_arrays(generate("oscillator", split, systems=4, steps=60, seed=seed,
                                                        workers=1, progress=False))
              for split, seed in (("train", 0), ("ood", 1))}
    tiny = {"encoder_steps": 4, "outer_steps": 12, "inner_steps": 2, "batch_systems": 2, "window": 12,
            "checkpoint_interval": 100, "eval_interval": 4, "patience": 50, "outer_lr": 0.02}
    trainer = Trainer(_cfg(**tiny), arrays["train"], arrays["ood"], tmp_path, seed=0, progress=False)
    encoder = copy.deepcopy(trainer.model.encoder.state_dict())
    summary = trainer.run()
    assert trainer.tc.encoder_steps == 0 and summary["steps"] == 12
    assert {row["phase"] for row in trainer.history} == {"decoder"}
    assert all(torch.equal(v, trainer.model.encoder.state_dict()[k]) for k, v in encoder.items())
    vals = [row["val_loss"] for row in trainer.history if row["val_loss"] != ""]
    assert min(vals[1:]) < vals[0]  # validation (the adapted query loss, here unadapted) went down
    model = load_checkpoint(tmp_path / "final.pt")[0]
    assert model.decoder.meta_attention is False
    # `evaluate` scores it unadapted instead of failing
    result = evaluate(model, arrays["ood"], shots=20, horizon=10)
    assert result["adapted"] is False
    assert all(r["mse_after"] == r["mse_before"] and not r["adaptation_accepted"] for r in result["systems"])


def test_trainer_keeps_the_encoder_phase_when_its_flow_step_is_the_residual(tmp_path):
    """D.3 b with `residual: encoder`: the latents are unread, but Φ_θ(x_t) + Δ still predicts, so phase 1 trains
    the encoder (skipping it would leave an untrained flow step under the prediction)."""
    arrays = {split: SystemDataset.from_arrays(generate("oscillator", split, systems=4, steps=60, seed=seed,
                                                        workers=1, progress=False))
              for split, seed in (("train", 0), ("train", 1))}
    tiny = {"encoder_steps": 4, "outer_steps": 4, "inner_steps": 2, "batch_systems": 2, "window": 12,
            "checkpoint_interval": 100, "eval_interval": 4, "patience": 50}
    cfg = _cfg(**tiny)
    cfg["model"]["decoder"]["residual"] = "encoder"
    trainer = Trainer(cfg, arrays["train"], arrays["train"], tmp_path, seed=0, progress=False)
    encoder = copy.deepcopy(trainer.model.encoder.state_dict())
    trainer.run()
    assert trainer.tc.encoder_steps == 4
    assert {row["phase"] for row in trainer.history} == {"encoder", "decoder"}
    assert any(not torch.equal(v, trainer.model.encoder.state_dict()[k]) for k, v in encoder.items())


def test_adapt_and_the_online_learner_refuse_a_model_without_phi(tmp_path):
    model = random_model(meta_attention=False, state_dim=4, control_dim=1, d_model=16, context=8)
    states, controls = torch.randn(40, 4, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    with pytest.raises(MetaSymError, match=r"^adapt: nothing to adapt, the model has no local parameters") as exc:
        adapt(model, states, controls, 0.1)
    assert "\n" not in str(exc.value) and "meta_attention" in str(exc.value)
    with pytest.raises(MetaSymError, match=r"^online learner: nothing to adapt"):
        OnlineLearner(model, "test", tmp_path, window=60)
