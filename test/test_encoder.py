"""SymplecticEncoder: exact symplecticity, exact inverse, DropConnect."""

import pytest
import torch
from torch.func import jacrev

from metasym_core import MetaSymError, SymplecticEncoder


def _random_encoder(dim: int, seed: int = 0, **kw) -> SymplecticEncoder:
    torch.manual_seed(seed)
    enc = SymplecticEncoder(dim, **kw).double()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.5 if dim < 100 else 0.05)
    return enc


def _omega(dim: int) -> torch.Tensor:
    d = dim // 2
    eye = torch.eye(d, dtype=torch.float64)
    zero = torch.zeros(d, d, dtype=torch.float64)
    return torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)], 0)


@pytest.mark.parametrize("dim", [2, 12, 400])
def test_symplectic_to_roundoff(dim):
    enc = _random_encoder(dim)
    x = torch.randn(dim, dtype=torch.float64)
    J = jacrev(lambda v: enc(v, 0.37))(x)
    omega = _omega(dim)
    err = torch.linalg.matrix_norm(J.T @ omega @ J - omega)
    assert err < 1e-10, f"||J^T Ω J - Ω|| = {err}"
    # the map is far from the identity, so the check is not vacuous
    assert torch.linalg.matrix_norm(J - torch.eye(dim, dtype=torch.float64)) > 0.1
    sign, logdet = torch.linalg.slogdet(J)
    assert sign == 1 and abs(logdet) < 1e-9


@pytest.mark.parametrize("dim", [2, 12])
def test_symplectic_with_other_activations(dim):
    for act in ("tanh", "elu"):
        enc = _random_encoder(dim, activation=act, layers=4, sublayers=3)
        x = torch.randn(dim, dtype=torch.float64)
        J = jacrev(lambda v, e=enc: e(v, 0.2))(x)
        assert torch.linalg.matrix_norm(J.T @ _omega(dim) @ J - _omega(dim)) < 1e-10


def test_inverse_exact_scalar_and_per_sample_h():
    enc = _random_encoder(12)
    x = torch.randn(64, 7, 12, dtype=torch.float64)
    assert (enc.inverse(enc(x, 0.1), 0.1) - x).abs().max() < 1e-12
    h = torch.rand(64, 7, 1, dtype=torch.float64) + 0.01
    y = enc(x, h)
    assert (enc.inverse(y, h) - x).abs().max() < 1e-12
    # per-sample h really is per sample: a different h gives a different image
    assert (enc(x, h.flip(0)) - y).abs().max() > 1e-3


def test_flipping_h_alone_is_not_an_inverse():
    enc = _random_encoder(12)
    x = torch.randn(32, 12, dtype=torch.float64)
    y = enc(x, 0.3)
    assert (enc(y, -0.3) - x).abs().max() > 1e-3
    assert (enc.inverse(y, 0.3) - x).abs().max() < 1e-12


def test_dropconnect_only_in_training_and_stays_symplectic():
    enc = _random_encoder(12, dropconnect=0.5)
    x = torch.randn(12, dtype=torch.float64)
    enc.eval()
    assert torch.equal(enc(x, 0.1), enc(x, 0.1))
    enc.train()
    torch.manual_seed(1)
    a = enc(x, 0.1)
    torch.manual_seed(2)
    b = enc(x, 0.1)
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    J = jacrev(lambda v: enc(v, 0.3))(x)
    om = _omega(12)
    assert torch.linalg.matrix_norm(J.T @ om @ J - om) < 1e-10


def test_bad_inputs():
    enc = SymplecticEncoder(12)
    with pytest.raises(MetaSymError, match=r"expected \[\.\.\., 12\]"):
        enc(torch.randn(3, 10), 0.1)
    with pytest.raises(MetaSymError, match="h has shape"):
        enc(torch.randn(3, 12), torch.rand(4, 1))
    with pytest.raises(MetaSymError, match="even"):
        SymplecticEncoder(7)


@pytest.mark.parametrize("dim", [12, 400])
def test_centring_shift_keeps_symplectic_and_exact_inverse(dim):
    """`Φ(x) = Φ₀(x - c) + c` with a non-zero shift c (the data's state mean): still exactly
    symplectic and exactly invertible, and it is the uncentred stack conjugated by the translation."""
    enc = _random_encoder(dim)
    g = torch.Generator().manual_seed(1)
    c = 9.0 * torch.rand(dim, generator=g, dtype=torch.float64)  # positions ~9 units, as on a 10x10 mesh
    x = c + 0.3 * torch.randn(5, dim, generator=g, dtype=torch.float64)
    plain = enc(x - c, 0.37) + c
    with torch.no_grad():
        enc.shift.copy_(c)
    assert torch.equal(enc(x, 0.37), plain)
    J = jacrev(lambda v: enc(v, 0.37))(x[0])
    assert torch.linalg.matrix_norm(J.T @ _omega(dim) @ J - _omega(dim)) < 1e-10
    assert (enc.inverse(enc(x, 0.37), 0.37) - x).abs().max() < 1e-12
    assert (enc(enc.inverse(x, 0.37), 0.37) - x).abs().max() < 1e-12
    assert enc.shift.requires_grad is False and "shift" in dict(enc.named_buffers())
