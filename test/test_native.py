"""The compiled rollout kernel (metasym_core/models/native.py, csrc/rollout.c) equals the plain rollout."""

import copy

import pytest
import torch
from _models import random_model, spy_on

from metasym_core.models import backends, native

META = pytest.mark.parametrize("meta", [True, False], ids=["meta-attention", "no-meta-attention"])


@pytest.fixture
def kernel_calls(monkeypatch):
    """Per `MetaSym.rollout` call, whether the kernel produced the result."""
    return spy_on(monkeypatch, backends.BACKENDS, "native")


def _inputs(B, T, horizon, D=12, m=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    u = torch.randn(B, T, m, generator=g, dtype=dtype)
    h = torch.rand(B, T + horizon, generator=g, dtype=dtype) * 0.02 + 0.005  # per row and per token
    fu = torch.randn(B, horizon, m, generator=g, dtype=dtype)
    return x, u, h, fu


def test_the_kernel_is_built():
    """`make` compiles it; without it every CPU rollout silently falls back to the slower paths."""
    assert native.available()


@META
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("T", [1, 3, 10, 25])
@pytest.mark.parametrize("B", [1, 37])
def test_kernel_equals_reference(kernel_calls, layers, T, B, meta):
    """Any context length (shorter, equal, longer than the window), 1-2 layers, per-row and per-token
    steps, given future controls; one row and a batch that ends in a partial block of lanes."""
    model = random_model(layers=layers, context=10, meta_attention=meta)
    x, u, h, fu = _inputs(B, T, 15)
    with torch.no_grad():
        fast = model.rollout(x, u, h, 15, future_controls=fu)
        ref = model.rollout_reference(x, u, h, 15, future_controls=fu)
    assert kernel_calls == [True]
    assert fast.shape == (B, 15, 12) and fast.dtype == torch.float64
    assert (fast - ref).abs().max() < 1e-10


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu"])
def test_kernel_activations_local_params_and_held_controls(kernel_calls, activation):
    model = random_model(layers=2, context=6)
    model.encoder.activation = activation
    local = {k: v.detach() * 0.7 + 0.1 for k, v in model.decoder.local_parameters().items()}
    x, u, _, _ = _inputs(3, 8, 12)
    with torch.no_grad():
        fast = model.rollout(x, u, 0.02, 12, local_params=local)
        ref = model.rollout_reference(x, u, 0.02, 12, local_params=local)
        plain = model.rollout(x, u, 0.02, 12)
    assert kernel_calls == [True, True]
    assert (fast - ref).abs().max() < 1e-10
    assert (fast - plain).abs().max() > 1e-6  # the local parameters are used, not the module's own


@META
def test_kernel_softmax_is_safe_for_extreme_logits(kernel_calls, meta):
    """Logits of ~-800 (exp underflows without the max shift) still give the reference rollout."""
    model = random_model(d_model=16, meta_attention=meta)
    with torch.no_grad():
        block = model.decoder.blocks[0]
        (block.meta_attn if meta else block.self_attn).rel_bias.fill_(-800.0)
        x, u, _, _ = _inputs(2, 10, 10)
        out = model.rollout(x, u, 0.01, 10)
        ref = model.rollout_reference(x, u, 0.01, 10)
    assert kernel_calls == [True]
    assert torch.isfinite(out).all() and (out - ref).abs().max() < 1e-10


def test_kernel_float32_and_autonomous_systems(kernel_calls):
    """float32 to its round-off; a system without controls (control_dim 0, e.g. the spring mesh)."""
    model = random_model(state_dim=8, control_dim=0, d_model=16, context=5, dtype=torch.float32, scale=0.2)
    x, u, h, fu = _inputs(20, 7, 30, D=8, m=0, dtype=torch.float32)
    with torch.no_grad():
        fast = model.rollout(x, u, h, 30)
        ref = copy.deepcopy(model).double().rollout_reference(x.double(), u.double(), h.double(), 30)
    assert kernel_calls == [True] and fast.dtype == torch.float32
    assert (fast.double() - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


def test_rows_are_independent_and_threads_do_not_change_results(kernel_calls):
    """Each row's prediction is the one it gets alone, whatever the batch is split into across threads."""
    model = random_model(d_model=16)
    x, u, h, fu = _inputs(70, 10, 20)
    threads = torch.get_num_threads()
    with torch.no_grad():
        try:
            torch.set_num_threads(1)
            one = model.rollout(x, u, h, 20, future_controls=fu)
            torch.set_num_threads(3)
            three = model.rollout(x, u, h, 20, future_controls=fu)
        finally:
            torch.set_num_threads(threads)
        alone = model.rollout(x[41:42], u[41:42], h[41:42], 20, future_controls=fu[41:42])
    assert torch.equal(one, three)
    assert (one[41:42] - alone).abs().max() < 1e-13


def test_concurrent_callers_with_different_thread_counts(kernel_calls):
    """Two threads rolling out at once, with 2 and 3 kernel threads, get what one caller gets (scratch is
    per thread, pools per size)."""
    import threading

    model = random_model(d_model=16)
    x, u, h, fu = _inputs(70, 10, 8)
    with torch.no_grad():
        want = model.rollout(x, u, h, 8, future_controls=fu)
    results, errors = {}, []

    def call(n):
        torch.set_num_threads(n)  # per thread (OpenMP); the kernel reads it for its pool size
        try:
            with torch.no_grad():
                for _ in range(20):
                    results[n] = model.rollout(x, u, h, 8, future_controls=fu)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and all(torch.equal(results[n], want) for n in (2, 3))


@pytest.mark.parametrize("K", [1, 5, 37])
def test_shared_context_streams_once_and_equals_separate_rows(kernel_calls, K):
    """K candidate control sequences from one context given as an expanded view (the rollout service):
    the kernel streams the context once and gives what K separate copies of it give."""
    model = random_model(d_model=16, layers=2)
    x, u, h, fu = _inputs(1, 10, 12)
    fu = torch.randn(K, 12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    args = (x.expand(K, 10, 12), u.expand(K, 10, 4), h.expand(K, 22))
    copies = tuple(a.contiguous() for a in args)
    with torch.no_grad():
        shared = model.rollout(*args, 12, future_controls=fu)
        separate = model.rollout(*copies, 12, future_controls=fu)
        ref = model.rollout_reference(*copies, 12, future_controls=fu)
    assert kernel_calls == [True, True]
    assert (shared - separate).abs().max() < 1e-13 and (shared - ref).abs().max() < 1e-10
    assert (shared[:, 1:] - shared[:1, 1:]).abs().amax() > 1e-6 or K == 1  # the candidates differ


def test_candidates_that_start_at_the_newest_state_share_the_rest_of_the_context(kernel_calls):
    """MPPI's rows: one context, each row's last context control its candidate's first. The kernel streams
    the first T - 1 tokens once (`shares_context`) and gives what separate rows give."""
    model = random_model(d_model=16, layers=2)
    x, u, h, fu = _inputs(1, 10, 12)
    K = 21
    g = torch.Generator().manual_seed(4)
    u_rows = u.expand(K, 10, 4).clone()
    u_rows[:, -1] = torch.randn(K, 4, generator=g, dtype=torch.float64)
    fu = torch.randn(K, 12, 4, generator=g, dtype=torch.float64)
    states, steps = x.expand(K, 10, 12), h.expand(K, 22)
    assert native.shares_context(states, u_rows.numpy(), steps.numpy())
    assert not native.shares_context(states.contiguous(), u_rows.numpy(), steps.numpy())
    other = u_rows.clone()
    other[3, -2] += 1.0  # an earlier context control differs: nothing is shared
    assert not native.shares_context(states, other.numpy(), steps.numpy())
    with torch.no_grad():
        shared = model.rollout(states, u_rows, steps, 12, future_controls=fu)
        separate = model.rollout(states.contiguous(), u_rows, steps.contiguous(), 12, future_controls=fu)
        ref = model.rollout_reference(states.contiguous(), u_rows, steps.contiguous(), 12, future_controls=fu)
    assert kernel_calls == [True, True]
    assert (shared - separate).abs().max() < 1e-13 and (shared - ref).abs().max() < 1e-10
    assert (shared[:, 0] - shared[:1, 0]).abs().amax() > 1e-6  # the first predictions differ by row


def test_a_forked_child_rolls_out_on_its_own_threads():
    """The thread pool does not survive fork(): a child must build its own instead of waiting forever."""
    import multiprocessing as mp

    model = random_model(d_model=16)
    x, u, h, fu = _inputs(40, 10, 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            parent = model.rollout(x, u, h, 5, future_controls=fu)  # the parent's pool exists now
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            child = pool.apply_async(_child_rollout, (model, x, u, h, fu)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(child, parent)


def _child_rollout(model, x, u, h, fu):
    torch.set_num_threads(2)
    with torch.no_grad():
        return model.rollout(x, u, h, 5, future_controls=fu)


def test_kernel_sees_parameter_changes(kernel_calls):
    """In-place parameter and buffer updates and new or updated local tensors are all re-packed."""
    model = random_model(d_model=16)
    x, u, _, _ = _inputs(2, 10, 10)
    local = {k: v.detach().clone() for k, v in model.decoder.local_parameters().items()}

    def check(**kw):
        out = model.rollout(x, u, 0.01, 10, **kw)
        assert (out - model.rollout_reference(x, u, 0.01, 10, **kw)).abs().max() < 1e-10
        return out

    with torch.no_grad():
        before = check(local_params=local)
        model.decoder.blocks[0].mlp[0].bias.add_(0.5)
        assert (check(local_params=local) - before).abs().max() > 1e-6
        for v in local.values():
            v.mul_(0.5)
        check(local_params=local)
        check(local_params={k: v * 2.0 for k, v in local.items()})
        model.state_mean.add_(0.3)
        check()
        model.encoder.shift.add_(0.5)
        check()
    assert kernel_calls and all(kernel_calls)


def test_torch_path_where_the_kernel_does_not_apply(kernel_calls):
    """Gradients, training mode (dropout/DropConnect draws) and models too large for the kernel's
    cache-resident weights run the torch path (same results)."""
    model = random_model(d_model=16)
    x, u, _, _ = _inputs(2, 10, 5)
    out = model.rollout(x, u, 0.01, 5)  # gradients enabled and parameters require them
    assert out.requires_grad
    with torch.no_grad():
        model.train()
        model.rollout(x, u, 0.01, 5)
        model.eval()
        big = random_model(d_model=128)
        assert not native.Packed(big, None).ok  # ~210k packed values > MAX_WEIGHTS
        got = big.rollout(x, u, 0.01, 5)
        ref = big.rollout(x, u, 0.01, 5, backend="torch")
    assert kernel_calls == [False] * 3
    assert (got - ref).abs().max() < 1e-10


@pytest.mark.parametrize("residual", ["state", "nominal:quadrotor"])
def test_every_isa_level_this_cpu_runs_equals_the_reference(kernel_calls, residual):
    """Each ISA level (its own vector width: 16-byte SSE2, 32-byte AVX2, 64-byte AVX-512) gives the reference
    rollout in float64 and float32, with a batch ending in a partial block; a level the CPU lacks is refused.
    Also with the quadrotor's nominal step (csrc/nominal.h, in double on every level)."""
    from metasym_core.errors import MetaSymError

    model = random_model(layers=2, context=6, residual=residual)
    model32 = copy.deepcopy(model).float()
    x, u, h, fu = _inputs(37, 8, 9)
    with torch.no_grad():
        ref = model.rollout_reference(x, u, h, 9, future_controls=fu)
    levels = native.isas()
    assert levels and native.isa() in levels
    ran = []
    try:
        for level in levels:
            try:
                native.use_isa(level)
            except MetaSymError as err:
                assert "does not support" in str(err)
                continue
            assert native.isa() == level
            with torch.no_grad():
                out = model.rollout(x, u, h, 9, future_controls=fu)
                out32 = model32.rollout(x.float(), u.float(), h.float(), 9, future_controls=fu.float())
            assert (out - ref).abs().max() < 1e-10
            assert (out32.double() - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
            ran.append(level)
    finally:
        native.use_isa("best")
    assert kernel_calls == [True] * 2 * len(ran)
    assert levels[-1] in ran  # the baseline level runs everywhere


def test_the_kernels_nominal_step_is_the_torch_step_at_every_angle(kernel_calls):
    """csrc/nominal.h's vector step (its own sin, cos and atan2) equals systems/quadrotor/torch_step.py to
    round-off on every ISA level: rotation angles from 0 (the series) through the quadrants to near π,
    thrusts below 0 and above the limit (saturated). A model whose increment is 0 rolls out that step alone."""
    from metasym_core.systems.quadrotor import MAX_THRUST
    from metasym_core.systems.quadrotor.torch_step import step

    model = random_model(context=1, residual="nominal:quadrotor")
    with torch.no_grad():
        model.decoder.head[-1].weight.zero_()
        model.decoder.head[-1].bias.zero_()
    g = torch.Generator().manual_seed(3)
    angles = torch.tensor([0.0, 1e-9, 3e-5, 2e-4, 0.3, 0.9, 1.6, 2.2, 2.8, 3.0] * 4, dtype=torch.float64)
    B = len(angles)
    axis = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, dtype=torch.float64), dim=-1)
    x = torch.cat([torch.randn(B, 3, generator=g, dtype=torch.float64), axis * angles[:, None],
                   torch.randn(B, 3, generator=g, dtype=torch.float64),
                   0.3 * torch.randn(B, 3, generator=g, dtype=torch.float64)], -1)
    u = torch.rand(B, 4, generator=g, dtype=torch.float64) * (MAX_THRUST + 4.0) - 2.0
    h = torch.rand(B, 2, generator=g, dtype=torch.float64) * 0.02 + 0.005
    with torch.no_grad():
        want = step(x, u, h[:, :1])
    ran = []
    try:
        for level in native.isas():
            try:
                native.use_isa(level)
            except Exception:
                continue
            with torch.no_grad():
                got = model.rollout(x[:, None], u[:, None], h, 1)[:, 0]
            assert (got - want).abs().max() < 1e-12, level
            ran.append(level)
    finally:
        native.use_isa("best")
    assert ran and kernel_calls == [True] * len(ran)


@pytest.mark.slow
def test_unknown_isa_level_is_refused_and_the_environment_picks_one():
    import subprocess
    import sys

    from metasym_core.errors import MetaSymError

    with pytest.raises(MetaSymError, match="no ISA level 'avx9000'"):
        native.use_isa("avx9000")
    baseline = native.isas()[-1]
    code = "from metasym_core.models import native; print(native.isa())"
    for value, want in ((baseline, baseline), ("avx9000", native.isa())):
        env = {**__import__("os").environ, native.ISA_ENV: value}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.split() == [want]
        assert ("ignored: no ISA level 'avx9000'" in run.stderr) == (value == "avx9000")
