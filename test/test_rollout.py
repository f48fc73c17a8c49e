"""MetaSym rollout: shapes, batching, determinism, dtypes, the cached fast path
against the plain path, and bad input. Tests parametrized over `meta` also cover the
decoder without meta-attention (ablation D.3) on every rollout path."""

import pytest
import torch
from _models import random_model, spy_on

from metasym_core import MetaSymError

META = pytest.mark.parametrize("meta", [True, False], ids=["meta-attention", "no-meta-attention"])


def _model(meta: bool = True, **kwargs):
    """`random_model`, or the same without meta-attention (ablation D.3), with a non-zero encoder
    centring shift (every rollout path must honour it)."""
    model = random_model(meta_attention=meta, **kwargs)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        model.encoder.shift.copy_(torch.randn(model.state_dim, generator=g, dtype=torch.float64))
    return model


def _data(B=4, T=10, D=12, m=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, D, generator=g).to(dtype), torch.randn(B, T, m, generator=g).to(dtype))


@META
def test_shapes_and_fast_path_equals_plain_path(meta):
    model64 = _model(meta)
    x, u = _data()
    fu = torch.randn(4, 30, 4, dtype=torch.float64)
    h = torch.rand(4, 40, dtype=torch.float64) * 0.02 + 0.005
    fast = model64.rollout(x, u, h, 30, future_controls=fu)
    plain = model64.rollout_reference(x, u, h, 30, future_controls=fu)
    assert fast.shape == (4, 30, 12)
    assert (fast - plain).abs().max() < 1e-10


@META
def test_two_layer_cached_rollout_matches_plain(meta):
    model = _model(meta, layers=2, context=5)
    x, u = _data(T=12)
    assert (model.rollout(x, u, 0.01, 8) - model.rollout_reference(x, u, 0.01, 8)).abs().max() < 1e-10


def test_rows_are_independent(model64):
    x, u = _data(B=5)
    full = model64.rollout(x, u, 0.01, 12)
    x2 = x.clone()
    x2[2] += 3.0
    changed = model64.rollout(x2, u, 0.01, 12)
    keep = [0, 1, 3, 4]
    assert torch.allclose(full[keep], changed[keep], atol=1e-12, rtol=0)
    assert (full[2] - changed[2]).abs().max() > 1e-3
    single = model64.rollout(x[3:4], u[3:4], 0.01, 12)
    assert torch.allclose(single[0], full[3], atol=1e-12, rtol=0)


def test_eval_mode_deterministic_and_dtypes():
    for dtype in (torch.float32, torch.float64):
        model = random_model(dtype=dtype)
        model.decoder.dropout = 0.5
        for block in model.decoder.blocks:
            block.dropout = 0.5
        x, u = _data(dtype=dtype)
        a, b = model.rollout(x, u, 0.01, 10), model.rollout(x, u, 0.01, 10)
        assert a.dtype == dtype and torch.equal(a, b)


def test_local_params_used_and_module_untouched(model64):
    x, u = _data()
    local = {k: v.detach() * 0.5 for k, v in model64.decoder.local_parameters().items()}
    before = {k: v.clone() for k, v in model64.state_dict().items()}
    adapted = model64.rollout(x, u, 0.01, 10, local_params=local)
    assert (adapted - model64.rollout(x, u, 0.01, 10)).abs().max() > 1e-6
    assert (adapted - model64.rollout_reference(x, u, 0.01, 10, local_params=local)).abs().max() < 1e-10
    assert all(torch.equal(before[k], v) for k, v in model64.state_dict().items())


def test_holds_last_control_by_default(model64):
    x, u = _data()
    held = u[:, -1:].expand(4, 10, 4)
    assert torch.allclose(model64.rollout(x, u, 0.01, 10), model64.rollout(x, u, 0.01, 10, held), atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (lambda x, u: ((x[..., :11], u, 0.01, 5), {}), r"states has shape \[4, 10, 11\], expected \[batch, time, 12\]"),
    (lambda x, u: ((x, u[:, :9], 0.01, 5), {}), r"controls has shape \[4, 9, 4\], expected \[4, 10, 4\]"),
    (lambda x, u: ((x[0], u, 0.01, 5), {}), r"states has shape \[10, 12\]"),
    (lambda x, u: ((x.index_fill(1, torch.tensor([3]), float("nan")), u, 0.01, 5), {}), "states contains NaN"),
    (lambda x, u: ((x, u.index_fill(1, torch.tensor([3]), float("inf")), 0.01, 5), {}), "controls contains NaN"),
    (lambda x, u: ((x, u, 0.0, 5), {}), "steps must be a positive"),
    (lambda x, u: ((x, u, -torch.ones(4, 10), 5), {}), "steps must be positive"),
    (lambda x, u: ((x, u, torch.ones(4, 7), 5), {}), r"steps has shape \[4, 7\]"),
    (lambda x, u: ((x, u, 0.01, 0), {}), "horizon must be a positive integer"),
    (lambda x, u: ((x, u, 0.01, -3), {}), "horizon must be a positive integer"),
    (lambda x, u: ((x, u, 0.01, 5), {"future_controls": torch.zeros(4, 4, 4)}), r"future_controls has shape"),
    (lambda x, u: ((x, u, 0.01, 5), {"local_params": {"nope": torch.zeros(1)}}), "unknown key"),
])
def test_bad_input_is_a_value_error_naming_it(model64, bad, match):
    x, u = _data()
    args, kwargs = bad(x, u)
    with pytest.raises(ValueError, match=match):
        model64.rollout(*args, **kwargs)
    assert issubclass(MetaSymError, ValueError)


@META
@pytest.mark.parametrize("T", [1, 3, 9, 10, 25])
def test_fast_path_any_context_length(T, meta):
    """Contexts shorter than, equal to and longer than the window (empty ring slots are masked)."""
    model = _model(meta, layers=2, context=10)
    x, u = _data(T=T)
    h = torch.rand(4, T + 15, dtype=torch.float64) * 0.02 + 0.005
    fast = model.rollout(x, u, h, 15)
    assert (fast - model.rollout_reference(x, u, h, 15)).abs().max() < 1e-10


def test_set_normalization_with_and_without_controls():
    for m in (4, 0):
        model = random_model(control_dim=m)
        x = torch.randn(3, 20, 12, dtype=torch.float64) * 5 + 2
        u = torch.randn(3, 20, m, dtype=torch.float64)
        model.set_normalization(x, u, torch.full((3, 20), 0.01, dtype=torch.float64))
        assert torch.allclose(model.state_mean, x.reshape(-1, 12).mean(0))
        assert torch.allclose(model.delta_std, (x[:, 1:] - x[:, :-1]).reshape(-1, 12).std(0, unbiased=False))
        assert model.rollout(x, u, 0.01, 5).shape == (3, 5, 12)


def test_constant_features_keep_unit_scale():
    model = random_model(control_dim=0)
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    x[..., 3] = 7.0  # a coordinate that never moves
    model.set_normalization(x, torch.zeros(2, 30, 0, dtype=torch.float64), 0.01)
    assert model.state_std[3] == 1.0 and model.delta_std[3] == 1.0 and model.state_mean[3] == 7.0
    assert torch.isfinite(model(x, torch.zeros(2, 30, 0, dtype=torch.float64), 0.01)).all()


# -- the NumPy fast path (metasym_core/models/fastpath.py) ------------------------------------------------------------

def _spy(monkeypatch):
    """Count NumPy-path rollouts that produced the result; the compiled kernel, which `auto` tries first,
    is made not to apply, as in an install without a C compiler."""
    from metasym_core.models import backends, fastpath
    monkeypatch.setitem(backends.BACKENDS, "native", lambda *args: None)
    return spy_on(monkeypatch, fastpath, "rollout_numpy")


@META
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("T", [1, 3, 9, 10, 25])
@pytest.mark.parametrize("B", [1, 3])
def test_numpy_path_equals_reference(monkeypatch, layers, T, B, meta):
    """Any context length, 1-2 layers, per-step h, given future controls; B = 1 and a small batch."""
    calls = _spy(monkeypatch)
    model = _model(meta, layers=layers, context=10)
    x, u = _data(B=B, T=T)
    h = (torch.rand(1, T + 15, dtype=torch.float64) * 0.02 + 0.005).expand(B, T + 15)
    fu = torch.randn(B, 15, 4, dtype=torch.float64)
    with torch.no_grad():
        fast = model.rollout(x, u, h, 15, future_controls=fu)
        ref = model.rollout_reference(x, u, h, 15, future_controls=fu)
    assert calls == [True]
    assert fast.shape == (B, 15, 12) and fast.dtype == torch.float64
    assert (fast - ref).abs().max() < 1e-10


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu"])
def test_numpy_path_held_controls_local_params_and_activations(monkeypatch, activation):
    calls = _spy(monkeypatch)
    model = _model(layers=2, context=6)
    model.encoder.activation = activation
    local = {k: v.detach() * 0.7 + 0.1 for k, v in model.decoder.local_parameters().items()}
    x, u = _data(B=1, T=8)
    with torch.no_grad():
        fast = model.rollout(x, u, 0.02, 12, local_params=local)
        ref = model.rollout_reference(x, u, 0.02, 12, local_params=local)
        plain = model.rollout(x, u, 0.02, 12)
    assert calls == [True, True]
    assert (fast - ref).abs().max() < 1e-10
    assert (fast - plain).abs().max() > 1e-6  # local_params honoured, not a cached fold of the module's own


@META
def test_numpy_path_float32(monkeypatch, meta):
    calls = _spy(monkeypatch)
    model = _model(meta, dtype=torch.float32, scale=0.2)
    x, u = _data(B=1, dtype=torch.float32)
    h = torch.rand(1, 40) * 0.02 + 0.005
    with torch.no_grad():
        fast = model.rollout(x, u, h, 30)
        ref = model.rollout_reference(x, u, h, 30)
    assert calls == [True] and fast.dtype == torch.float32
    assert (fast - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))


@META
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("residual,D", [("encoder", 12), ("state", 80)], ids=["encoder-residual", "wide-state"])
def test_numpy_path_with_the_encoder_unfolded(monkeypatch, meta, B, residual, D):
    """The encoder residual (whose anchor is the latent e_t, with x_t kept on coordinates the data never moved)
    and states wider than MAX_STATE run the encoder as it is: the same rollout as the reference, with a step
    size per token and row (jittered streams) and a context longer than the window."""
    from metasym_core.models import fastpath
    calls = _spy(monkeypatch)
    model = _model(meta, state_dim=D, residual=residual, layers=2, context=6)
    x, u = _data(B=B, T=14, D=D)
    x[..., 3] = 0.7  # a coordinate that never moves: the encoder residual holds it
    with torch.no_grad():
        model.fixed.copy_((x.reshape(-1, D) == x.reshape(-1, D)[:1]).all(0))
    assert (D > fastpath.MAX_STATE) == (residual == "state") and model.fixed.sum() == 1
    h = torch.rand(B, 14 + 20, dtype=torch.float64) * 0.02 + 0.005  # rows differ too (a batch of hindcasts)
    fu = torch.randn(B, 20, 4, dtype=torch.float64)
    with torch.no_grad():
        fast = model.rollout(x, u, h, 20, future_controls=fu)
        ref = model.rollout_reference(x, u, h, 20, future_controls=fu)
    assert calls == [True]
    assert (fast - ref).abs().max() < 1e-10


def test_numpy_path_refolds_after_changes(monkeypatch):
    """In-place parameter updates, new local tensors and in-place local updates are all seen."""
    calls = _spy(monkeypatch)
    model = random_model()
    x, u = _data(B=1)
    local = {k: v.detach().clone() for k, v in model.decoder.local_parameters().items()}
    with torch.no_grad():
        before = model.rollout(x, u, 0.01, 10, local_params=local)
        model.decoder.blocks[0].mlp[0].bias.add_(0.5)
        after = model.rollout(x, u, 0.01, 10, local_params=local)
        assert (after - before).abs().max() > 1e-6
        assert (after - model.rollout_reference(x, u, 0.01, 10, local_params=local)).abs().max() < 1e-10
        for v in local.values():
            v.mul_(0.5)
        changed = model.rollout(x, u, 0.01, 10, local_params=local)
        assert (changed - model.rollout_reference(x, u, 0.01, 10, local_params=local)).abs().max() < 1e-10
        fresh = {k: v * 2.0 for k, v in local.items()}
        again = model.rollout(x, u, 0.01, 10, local_params=fresh)
        assert (again - model.rollout_reference(x, u, 0.01, 10, local_params=fresh)).abs().max() < 1e-10
        model.state_mean.add_(0.3)  # normalisation buffers count too
        shifted = model.rollout(x, u, 0.01, 10)
        assert (shifted - model.rollout_reference(x, u, 0.01, 10)).abs().max() < 1e-10
        model.encoder.shift.add_(0.5)  # ... and the encoder's centring
        centred = model.rollout(x, u, 0.01, 10)
        assert (centred - shifted).abs().max() > 1e-6
        assert (centred - model.rollout_reference(x, u, 0.01, 10)).abs().max() < 1e-10
    assert all(calls) and len(calls) == 6


def test_gradients_flow_through_rollout_on_the_torch_path(monkeypatch):
    calls = _spy(monkeypatch)
    model = random_model()
    x, u = _data(B=1)
    local = {k: v.detach().clone().requires_grad_(True) for k, v in model.decoder.local_parameters().items()}
    out = model.rollout(x, u, 0.01, 8, local_params=local)
    out.pow(2).sum().backward()
    assert calls == [] and all(v.grad is not None and v.grad.abs().sum() > 0 for v in local.values())
    assert model.encoder.S.grad is not None and model.encoder.S.grad.abs().sum() > 0
    with torch.no_grad():
        assert (out - model.rollout_reference(x, u, 0.01, 8, local_params=local)).abs().max() < 1e-10


def test_gradients_flow_through_the_variant_on_the_torch_path(monkeypatch):
    """Without meta-attention (D.3): autograd rollouts take the torch path, reach θ, equal the plain path."""
    calls = _spy(monkeypatch)
    model = random_model(meta_attention=False, layers=2, context=6)
    x, u = _data(B=2, T=8)
    out = model.rollout(x, u, 0.01, 8)
    out.pow(2).sum().backward()
    assert calls == [] and model.decoder.blocks[1].self_attn.qkv.weight.grad.abs().sum() > 0
    assert model.encoder.S.grad is None or not model.encoder.S.grad.any()  # the latents are never read
    with torch.no_grad():
        assert (out - model.rollout_reference(x, u, 0.01, 8)).abs().max() < 1e-10


def test_torch_path_when_numpy_does_not_apply(monkeypatch):
    """Training mode, per-row step sizes and batches above the threshold use the torch path."""
    from metasym_core.models import fastpath
    calls = _spy(monkeypatch)
    model = random_model()
    x, u = _data(B=3)
    h = torch.rand(3, 20, dtype=torch.float64) * 0.02 + 0.005  # rows differ
    with torch.no_grad():
        out = model.rollout(x, u, h, 10)
        assert (out - model.rollout_reference(x, u, h, 10)).abs().max() < 1e-10
        model.decoder.blocks[0].train()
        model.rollout(x, u, 0.01, 5)
        model.eval()
        big = fastpath.MAX_BATCH + 1
        xb, ub = _data(B=big)
        model.rollout(xb, ub, 0.01, 3)
    assert calls == []


@META
def test_numpy_path_falls_back_when_a_softmax_leaves_the_safe_range(monkeypatch, meta):
    """Logits of ~-800 underflow exp() without a max shift: the torch path must answer instead."""
    calls = _spy(monkeypatch)
    model = _model(meta)
    with torch.no_grad():
        block = model.decoder.blocks[0]
        (block.meta_attn if meta else block.self_attn).rel_bias.fill_(-800.0)
        x, u = _data(B=1)
        out = model.rollout(x, u, 0.01, 10)
        ref = model.rollout_reference(x, u, 0.01, 10)
    assert calls == [False]
    assert torch.isfinite(out).all() and (out - ref).abs().max() < 1e-10


@META
@pytest.mark.parametrize("activation", ["tanh", "elu"])
def test_torch_streaming_path_any_activation_and_safe_softmax(activation, meta):
    """The torch path (kernel and NumPy off): encoder activations other than sigmoid, and the unshifted
    no-grad softmax redoing the rollout with the max shift when a denominator underflows."""
    model = _model(meta, layers=2, context=6)
    model.encoder.activation = activation
    x, u = _data(B=2, T=8)
    with torch.no_grad():
        out = model.rollout(x, u, 0.02, 12, backend="torch")
        assert (out - model.rollout_reference(x, u, 0.02, 12)).abs().max() < 1e-10
        model.decoder.blocks[1].self_attn.rel_bias.fill_(-800.0)
        out = model.rollout(x, u, 0.02, 12, backend="torch")
        assert torch.isfinite(out).all()
        assert (out - model.rollout_reference(x, u, 0.02, 12)).abs().max() < 1e-10


def test_numpy_cache_does_not_keep_models_alive():
    import gc
    import weakref

    from metasym_core.models import fastpath
    model = random_model()
    x, u = _data(B=1)
    with torch.no_grad():
        model.rollout(x, u, 0.01, 3)
    assert model in fastpath._folds
    ref = weakref.ref(model)
    del model
    gc.collect()  # other tests' models may go too: only this one is checked
    assert ref() is None
