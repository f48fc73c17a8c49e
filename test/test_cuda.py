"""The same model on CUDA: rollouts, adaptation, the online predictor and training agree
with the CPU. These run only where a GPU is present (`tools/device_check.sh` runs them on
one); everything else in the suite is CPU-only by design."""

import numpy as np
import pytest
import torch
from _models import random_model

from metasym_core.bench.train import synthetic_dataset
from metasym_core.checkpoint import load_checkpoint
from metasym_core.config import load_config
from metasym_core.meta.adapt import adapt
from metasym_core.online.predictor import OnlinePredictor
from metasym_core.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _inputs(B=5, C=10, H=8, D=12, m=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, C, D, generator=g, dtype=dtype).cumsum(1) * 0.1
    controls = torch.rand(B, C, m, generator=g, dtype=dtype)
    steps = 0.01 + 0.01 * torch.rand(B, C + H, generator=g, dtype=dtype)
    future = torch.rand(B, H, m, generator=g, dtype=dtype)
    return states, controls, steps, future


@pytest.mark.parametrize("meta_attention", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_cuda_rollout_equals_cpu_reference(dtype, tol, meta_attention):
    cpu = random_model(meta_attention=meta_attention).to(dtype)
    gpu = random_model(meta_attention=meta_attention).to(dtype).to(CUDA)
    states, controls, steps, future = _inputs(dtype=dtype)
    local = {k: v.detach() * 1.1 for k, v in cpu.decoder.local_parameters().items()} or None
    for lp in (None, local):
        ref = cpu.rollout_reference(states, controls, steps, 8, future, local_params=lp)
        lp_gpu = {k: v.to(CUDA) for k, v in lp.items()} if lp else None
        out = gpu.rollout(states.to(CUDA), controls.to(CUDA), steps.to(CUDA), 8, future.to(CUDA),
                          local_params=lp_gpu)
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(out.cpu(), ref, rtol=tol, atol=tol)


def test_cuda_adapt_equals_cpu():
    cpu = random_model(state_dim=4, control_dim=1, d_model=16, context=8, scale=0.2)
    gpu = random_model(state_dim=4, control_dim=1, d_model=16, context=8, scale=0.2).to(CUDA)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64).cumsum(0) * 0.05
    u = torch.rand(60, 1, generator=g, dtype=torch.float64)
    a = adapt(cpu, x, u, 0.02, inner_steps=5, lr=0.05)
    b = adapt(gpu, x.to(CUDA), u.to(CUDA), 0.02, inner_steps=5, lr=0.05)
    assert b.loss_after == pytest.approx(a.loss_after, rel=1e-8)
    for k, v in a.local_params.items():
        assert b.local_params[k].device.type == "cuda"
        torch.testing.assert_close(b.local_params[k].cpu(), v, rtol=1e-8, atol=1e-10)


def test_cuda_online_predictor_matches_cpu():
    cpu = random_model(state_dim=4, control_dim=2, d_model=8, context=5)
    gpu = random_model(state_dim=4, control_dim=2, d_model=8, context=5).to(CUDA)
    rng = np.random.default_rng(0)
    xs, us, hs = rng.normal(size=(5, 4)), rng.uniform(size=(5, 2)), np.full(5, 0.01)
    a, b = OnlinePredictor(cpu, 6), OnlinePredictor(gpu, 6)
    np.testing.assert_allclose(b.predict_arrays(xs, us, hs).states, a.predict_arrays(xs, us, hs).states,
                               rtol=1e-10, atol=1e-12)
    cand = rng.uniform(size=(64, 6, 2))
    np.testing.assert_allclose(b.rollout_batch(xs, us, hs, cand, 0.01)[0], a.rollout_batch(xs, us, hs, cand, 0.01)[0],
                               rtol=1e-10, atol=1e-12)


def test_cuda_training_runs_and_checkpoints_load_on_cpu(tmp_path):
    cfg = load_config("oscillator")
    cfg["training"] = {**cfg["training"], "encoder_steps": 3, "outer_steps": 6, "eval_interval": 3,
                       "checkpoint_interval": 3, "batch_systems": 4, "window": 12}
    ds = synthetic_dataset(cfg["state_dim"], cfg["control_dim"], 4, 80)
    trainer = Trainer(cfg, ds, ds, tmp_path, seed=0, progress=False, device="cuda")
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert trainer.train_data.states.device.type == "cuda"
    summary = trainer.run()
    assert summary["steps"] == 9 and np.isfinite(summary["best_val_loss"])
    model, _ = load_checkpoint(tmp_path / "final.pt")
    assert next(model.parameters()).device.type == "cpu"
    again = Trainer(cfg, ds, ds, tmp_path, seed=0, progress=False, device="cuda")
    again.resume()
    assert again.step == 9


def test_cuda_rollouts_replay_a_captured_graph_that_tracks_inputs_weights_and_local_params():
    from metasym_core.models import cudagraph

    cudagraph.clear()
    cpu = random_model()
    gpu = random_model().to(CUDA)
    local = {k: v.detach() * 0.9 for k, v in cpu.decoder.local_parameters().items()}
    for seed in (0, 1):  # the second call replays the graph with new inputs
        states, controls, steps, future = _inputs(seed=seed)
        for lp in (None, local):
            ref = cpu.rollout_reference(states, controls, steps, 8, future, local_params=lp)
            lp_gpu = {k: v.to(CUDA) for k, v in lp.items()} if lp else None
            with torch.inference_mode():
                out = gpu.rollout(states.to(CUDA), controls.to(CUDA), steps.to(CUDA), 8, future.to(CUDA),
                                  local_params=lp_gpu)
            torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    assert len(cudagraph._graphs) == 2 and all(g is not None for g in cudagraph._graphs.values())
    with torch.no_grad():  # an in-place weight update is seen by the replay
        for a, b in zip(cpu.parameters(), gpu.parameters(), strict=True):
            a.mul_(1.05)
            b.mul_(1.05)
    ref = cpu.rollout_reference(states, controls, steps, 8, future)
    with torch.inference_mode():
        out = gpu.rollout(states.to(CUDA), controls.to(CUDA), steps.to(CUDA), 8, future.to(CUDA))
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    assert len(cudagraph._graphs) == 2  # same layout: no new capture


def test_cuda_graph_rollouts_from_several_threads_agree():
    import threading

    from metasym_core.models import cudagraph

    cudagraph.clear()
    cpu = random_model()
    gpu = random_model().to(CUDA)
    cases = [_inputs(B=B, seed=seed) for B, seed in ((5, 0), (7, 1), (5, 2), (7, 3))]
    refs = [cpu.rollout_reference(s, c, h, 8, f) for s, c, h, f in cases]
    outs, errors = {}, []

    def work(i):
        try:
            s, c, h, f = (t.to(CUDA) for t in cases[i % 4])
            with torch.inference_mode():
                for _ in range(5):
                    outs[i] = gpu.rollout(s, c, h, 8, f).cpu()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, out in outs.items():
        torch.testing.assert_close(out, refs[i % 4], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["transformer", "dhnn", "mlp"])
def test_cuda_baseline_training_follows_the_cpu(name):
    """Table 1 trains the baselines on the GPU when present: same seed, same windows, same weights."""
    from metasym_core.baselines import make_baseline, train_baseline

    ds = synthetic_dataset(4, 1, systems=3, steps=40)
    weights = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = make_baseline(name, 4, 1).double()
        history = train_baseline(model, ds, ds, steps=6, window=10, eval_interval=3, noise=0.01, device=device)
        assert next(model.parameters()).device.type == device and np.isfinite(history[-1]["val_loss"])
        weights.append({k: v.cpu() for k, v in model.state_dict().items()})
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, atol=1e-8, rtol=1e-6, msg=k)
