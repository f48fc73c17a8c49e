"""Every rollout backend gives the reference rollout through the one interface (`models/backends.py`),
`auto` takes the fastest that applies, and a backend named explicitly must apply."""

import pytest
import torch
from _models import random_model, spy_on

from metasym_core.errors import MetaSymError
from metasym_core.models import backends

CUDA = torch.cuda.is_available()


def _case(B=3, T=8, horizon=12, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 12, generator=g, dtype=torch.float64)
    u = torch.randn(B, T, 4, generator=g, dtype=torch.float64)
    fu = torch.randn(B, horizon, 4, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (x, u, fu)]


#: residual -> backends that do not apply to it (they add the increment to x_t only; the compiled kernel
#: also has the quadrotor's nominal step)
DECLINE = {"state": (), "encoder": ("native",), "nominal:quadrotor": ("numpy",), "mean": ("numpy",),
           "state+skip": (), "encoder+skip": ("native",)}


@pytest.mark.parametrize("name", backends.names())
@pytest.mark.parametrize("meta", [True, False], ids=["meta-attention", "no-meta-attention"])
@pytest.mark.parametrize("residual", ["state", "encoder", "nominal:quadrotor", "mean", "state+skip", "encoder+skip"],
                         ids=["state-residual", "encoder-residual", "nominal-residual", "mean-residual", "linear-skip",
                              "encoder-residual-linear-skip"])
def test_every_backend_equals_the_reference(name, meta, residual):
    """Local parameters, given future controls, a 2-block decoder, float64: the same rollout to round-off.
    `cudagraph` runs where CUDA is; elsewhere it is refused by name (it does not apply to CPU tensors),
    as are the compiled kernel for the encoder residual and the NumPy path for a nominal step or the mean
    residual. (The case's 12 states and 4 controls are the quadrotor's, so its nominal step
    applies.)"""
    device = "cuda" if name == "cudagraph" and CUDA else "cpu"
    model = random_model(layers=2, context=6, meta_attention=meta, residual=residual.split("+")[0],
                         linear_skip=residual.endswith("+skip")).to(device)
    local = {k: v.detach() * 0.7 + 0.1 for k, v in model.decoder.local_parameters().items()} if meta else None
    x, u, fu = _case(device=device)
    with torch.no_grad():
        ref = model.rollout_reference(x, u, 0.02, 12, future_controls=fu, local_params=local)
        if (name == "cudagraph" and not CUDA) or name in DECLINE[residual]:
            with pytest.raises(MetaSymError, match=f"{name} rollout backend does not apply"):
                model.rollout(x, u, 0.02, 12, future_controls=fu, local_params=local, backend=name)
            return
        out = model.rollout(x, u, 0.02, 12, future_controls=fu, local_params=local, backend=name)
    assert out.shape == (3, 12, 12) and out.dtype == torch.float64 and out.device == ref.device
    assert (out - ref).abs().max() < 1e-10


@pytest.mark.parametrize("residual", ["state", "encoder"])
def test_the_numpy_path_has_the_linear_skip_in_one_row_too(residual):
    """One row takes the NumPy path's own single-row loop (`fastpath._steps_single`): the skip there as well."""
    model = random_model(layers=2, context=6, residual=residual, linear_skip=True)
    x, u, fu = (t[:1] for t in _case())
    with torch.no_grad():
        ref = model.rollout_reference(x, u, 0.02, 12, future_controls=fu)
        out = model.rollout(x, u, 0.02, 12, future_controls=fu, backend="numpy")
    assert (out - ref).abs().max() < 1e-10


def test_auto_takes_the_first_backend_that_applies(monkeypatch):
    """CPU inference: the kernel; autograd or training mode: streaming torch (which keeps the graph)."""
    calls = {name: spy_on(monkeypatch, backends.BACKENDS, name) for name in backends.AUTO}
    model = random_model(context=6)
    x, u, _ = _case()
    with torch.no_grad():
        model.rollout(x, u, 0.02, 5)
    assert calls["native"] == [True] and calls["torch"] == []
    out = model.rollout(x, u, 0.02, 5)  # parameters require grad
    assert out.requires_grad and calls["torch"] == [True]
    assert calls["native"] == [True, False] and calls["numpy"] == [False] and calls["cudagraph"] == [False]


def test_bad_or_inapplicable_backend_is_a_one_line_error():
    model = random_model(context=6)
    x, u, _ = _case(B=40)
    with pytest.raises(MetaSymError, match="backend must be auto or one of native, numpy"):
        model.rollout(x, u, 0.02, 5, backend="fortran")
    with torch.no_grad(), pytest.raises(MetaSymError, match="numpy rollout backend does not apply.*batch 40"):
        model.rollout(x, u, 0.02, 5, backend="numpy")  # more rows than fastpath.MAX_BATCH


def test_a_registered_backend_is_callable_by_name(monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))
    seen = []

    def doubled(model, *args):
        seen.append(args[0].shape)
        return 2 * backends.BACKENDS["torch"](model, *args)

    backends.register("doubled", doubled)
    model = random_model(context=6)
    x, u, _ = _case()
    with torch.no_grad():
        out = model.rollout(x, u, 0.02, 4, backend="doubled")
        assert torch.allclose(out, 2 * model.rollout(x, u, 0.02, 4))
    assert seen == [(3, 8, 12)] and "doubled" in backends.names() and "doubled" not in backends.AUTO
