"""Encoder MAML, decoder bi-level loop and the meta-learning acceptance test (oscillator family)."""

import copy

import pytest
import torch

from metasym_core.config import build_model, load_config
from metasym_core.meta.decoder_bilevel import bilevel_loss
from metasym_core.meta.encoder_maml import maml_loss
from metasym_core.meta.losses import DecoderBatch
from metasym_core.systems import EXTRA_SYSTEMS, SYSTEM_NAMES, make_family
from metasym_core.systems.dataset import SystemDataset, generate
from metasym_core.train.data import TrainData
from metasym_core.train.evaluate import evaluate
from metasym_core.train.trainer import Trainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster for these small models
    yield
    torch.set_num_threads(threads)


def _data(split: str, systems: int, seed: int) -> SystemDataset:
    return SystemDataset.from_arrays(generate("oscillator", split, systems=systems, steps=200, seed=seed,
                                              workers=1, progress=False))


def test_oscillator_family_registered():
    assert "oscillator" in EXTRA_SYSTEMS and "oscillator" not in SYSTEM_NAMES
    fam = make_family("oscillator")
    ds = _data("ood", 2, 3)
    assert ds.states.shape == (2, 200, 2) and ds.controls.shape == (2, 200, 1)
    lo, hi = fam.param_ranges("ood")["omega"]
    assert all(lo <= ds.param_dict(i)["omega"] <= hi for i in range(2))


def _symplectic_error(encoder, x: torch.Tensor, h: float) -> float:
    d = encoder.dim // 2
    omega = torch.zeros(2 * d, 2 * d, dtype=torch.float64)
    omega[:d, d:], omega[d:, :d] = torch.eye(d), -torch.eye(d)
    J = torch.autograd.functional.jacobian(lambda v: encoder(v, h), x)
    return float((J.T @ omega @ J - omega).abs().max())


def test_encoder_maml_loss_decreases_and_stays_symplectic():
    torch.manual_seed(0)
    model = build_model(load_config("oscillator"))
    data = TrainData(_data("train", 8, 0), model, 0.5, 30, "training")
    model.set_normalization(data.states, data.controls, data.h)
    opt = torch.optim.Adam(model.encoder.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(40):
        systems, s0, q0 = data.sample_offsets(8, gen)
        loss = maml_loss(model.encoder, data.transitions(systems, s0), data.transitions(systems, q0),
                         model.delta_std, inner_steps=3, inner_lr=1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    enc = copy.deepcopy(model.encoder).double().eval()
    for x in torch.randn(3, 2, dtype=torch.float64):
        assert _symplectic_error(enc, x, 0.05) < 1e-10
    y = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(enc.inverse(enc(y, 0.05), 0.05), y, atol=1e-12)


def _toy_batches(model, systems=3, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    D, m = model.state_dim, model.control_dim

    def batch():
        return DecoderBatch(torch.randn(systems, T, D, generator=g), torch.randn(systems, T, m, generator=g),
                            torch.randn(systems, T, 1, generator=g), torch.randn(systems, T, D, generator=g),
                            torch.randn(systems, T - 1, D, generator=g))
    return batch(), batch()


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.decoder.named_parameters()}


def test_bilevel_vmap_matches_per_system_loop_and_orders_differ():
    torch.manual_seed(0)
    model = build_model(load_config("oscillator"))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0, 0.3)
    s, q = _toy_batches(model)
    total = bilevel_loss(model, s, q, 3, 0.1, query_start=2)
    parts = [bilevel_loss(model, DecoderBatch(*(t[i:i + 1] for t in (s.x, s.u, s.h, s.e, s.target))),
                          DecoderBatch(*(t[i:i + 1] for t in (q.x, q.u, q.h, q.e, q.target))), 3, 0.1,
                          query_start=2) for i in range(3)]
    assert float(total.detach()) == pytest.approx(float(sum(parts).detach() / 3), rel=1e-5)
    second = _grads(model, bilevel_loss(model, s, q, 3, 0.1))
    first = _grads(model, bilevel_loss(model, s, q, 3, 0.1, first_order=True))
    local = set(model.decoder.local_parameters())
    assert all(g is not None for g in second.values())  # θ and φ₀ both get gradients
    assert any(not torch.allclose(second[n], first[n]) for n in second if n not in local)
    frozen = _grads(model, bilevel_loss(model, s, q, 3, 0.1, learn_init=False))
    assert all(frozen[n] is None or not frozen[n].any() for n in local)


def test_meta_training_beats_pooled_and_adaptation_halves_ood_error(tmp_path):
    """Acceptance: OOD rollout MSE after K-shot adaptation <= half the unadapted one, and below a
    same-size model trained without meta-learning on the pooled data."""
    train, val, test = _data("train", 16, 0), _data("ood", 4, 1), _data("ood", 6, 2)
    cfg = load_config("oscillator")
    results = {}
    for meta in (True, False):
        cfg["training"] = {**cfg["training"], "meta": meta}
        trainer = Trainer(cfg, train, val, tmp_path / str(meta), seed=0, progress=False)
        trainer.run()
        results[meta] = evaluate(trainer.model, test, shots=60, horizon=50, inner_steps=10, inner_lr=0.1)
    meta, pooled = results[True], results[False]
    print(f"meta before {meta['mse_before']['mean']:.4f} after {meta['mse_after']['mean']:.4f}; "
          f"pooled before {pooled['mse_before']['mean']:.4f} after {pooled['mse_after']['mean']:.4f}")
    assert meta["mse_after"]["mean"] <= 0.5 * meta["mse_before"]["mean"]
    assert meta["mse_after"]["mean"] < min(pooled["mse_before"]["mean"], pooled["mse_after"]["mean"])
