"""ActiveDecoder: causality and the global/local parameter split."""

import torch

from metasym_core import ActiveDecoder


def _decoder(layers=2, context=4):
    torch.manual_seed(0)
    dec = ActiveDecoder(6, 2, 16, heads=4, layers=layers, context=context).double().eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    return dec


def _inputs(T=12):
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(2, T, 6, generator=g, dtype=torch.float64), torch.randn(2, T, 6, generator=g,
                                                                              dtype=torch.float64)
    u, h = torch.randn(2, T, 2, generator=g, dtype=torch.float64), torch.rand(2, T, 1, generator=g,
                                                                             dtype=torch.float64)
    return x, u, h, e


def test_causal_every_input():
    dec = _decoder()
    x, u, h, e = _inputs()
    base = dec(x, u, h, e)
    for t in (0, 5, 11):
        for i in range(4):
            args = [a.clone() for a in (x, u, h, e)]
            args[i][:, t] += 1.0
            out = dec(*args)
            assert torch.equal(out[:, :t], base[:, :t]), f"input {i} at step {t} leaked backwards"
            assert (out[:, t] - base[:, t]).abs().max() > 0, "the perturbed step should change its output"


def test_window_limits_the_past():
    """One layer, context c: output t ignores inputs older than t - c + 1."""
    dec = _decoder(layers=1, context=4)
    x, u, h, e = _inputs()
    base = dec(x, u, h, e)
    x2 = x.clone()
    x2[:, 3] += 1.0
    out = dec(x2, u, h, e)
    assert torch.equal(out[:, 7:], base[:, 7:])
    assert (out[:, 6] - base[:, 6]).abs().max() > 0


def test_global_local_split_covers_everything_once():
    dec = _decoder(layers=3)
    glob, loc = dec.global_parameters(), dec.local_parameters()
    names = [n for n, _ in dec.named_parameters()]
    assert set(glob) | set(loc) == set(names)
    assert not set(glob) & set(loc)
    assert sorted(loc) == sorted(f"blocks.{i}.meta_attn.{w}" for i in range(3)
                                 for w in ("w_q.weight", "w_v.weight", "w_v.bias"))
    assert all(n.endswith(("w_q.weight", "w_v.weight", "w_v.bias")) and "meta_attn" in n for n in loc)


def test_local_value_bias_shifts_every_token_and_starts_at_zero():
    assert torch.equal(ActiveDecoder(6, 2, 16).blocks[0].meta_attn.w_v.bias, torch.zeros(16))
    dec = _decoder()
    bias = dec.blocks[0].meta_attn.w_v.bias
    x, u, h, e = _inputs()
    base = dec(x, u, h, e)
    local = {k: v.detach().clone() for k, v in dec.local_parameters().items()}
    local["blocks.0.meta_attn.w_v.bias"] = torch.full_like(bias, 0.5)
    shifted = dec(x, u, h, e, local=local)
    assert (shifted - base).abs().amin(dim=-1).gt(0).all()  # a per-system offset reaches every prediction


def test_local_params_override_without_mutation():
    dec = _decoder()
    x, u, h, e = _inputs()
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    local = {k: torch.zeros_like(v) for k, v in dec.local_parameters().items()}
    out = torch.func.functional_call(dec, local, (x, u, h, e))
    explicit = dec(x, u, h, e, local=local)
    assert torch.allclose(out, explicit, atol=1e-12)
    assert not torch.allclose(out, dec(x, u, h, e))
    assert all(torch.equal(before[k], v) for k, v in dec.state_dict().items())
