"""The O(N) exponential scans for P @ W equal the dense decay matrix, for any scale and length."""

import math

import pytest
import torch

from rmaat.attention.positional import causal_decay_scan, decay_apply, decay_matrix, dense_decay_apply

SCALES = (0.0, 0.01, 1.0, 2.0, 10.0)


def test_decay_matrix_is_symmetric_toeplitz_with_unit_diagonal():
    p = decay_matrix(6, 0.5, dtype=torch.float64)
    assert torch.equal(p, p.T)
    assert torch.equal(torch.diagonal(p), torch.ones(6, dtype=torch.float64))
    assert p[0, 3].item() == pytest.approx(math.exp(-1.5))
    assert p[2, 5].item() == p[0, 3].item()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("n", (1, 7, 64, 1000, 5000))
def test_scan_equals_dense(scale, n):
    gen = torch.Generator().manual_seed(1000 + n)
    w = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    if n <= 1000:
        rows = torch.arange(n)
        dense = dense_decay_apply(w, scale)
    else:  # rows of the dense P (all of P would cost seconds): ends, chunk edges, random rows
        picks = torch.randint(0, n, (200,), generator=gen)
        rows = torch.unique(torch.cat([torch.tensor([0, 1, 31, 32, 33, n // 2, n - 2, n - 1]), picks]))
        p_rows = torch.exp(-scale * (rows[:, None] - torch.arange(n)[None, :]).abs().double())
        dense = p_rows @ w
    tol = 1e-12 * dense.abs().max().item()
    torch.testing.assert_close(decay_apply(w, scale)[rows], dense, rtol=0, atol=tol)
    # a tiny chunk forces several recursion levels even at small n
    torch.testing.assert_close(decay_apply(w, scale, chunk=3)[rows], dense, rtol=0, atol=tol)


@pytest.mark.parametrize("scale", (0.0, 0.3, 10.0))
@pytest.mark.parametrize("n", (1, 2, 5, 29, 200))
def test_causal_scan_equals_lower_triangle(scale, n):
    w = torch.randn(2, n, 4, dtype=torch.float64)
    lower = torch.tril(decay_matrix(n, scale, dtype=torch.float64)) @ w
    for chunk in (2, 4, 32):
        torch.testing.assert_close(causal_decay_scan(w, scale, chunk), lower, rtol=1e-12, atol=1e-12)


def test_leading_dims_and_gradient_match_dense():
    w = torch.randn(2, 3, 77, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, 77, 5, dtype=torch.float64)
    fast, = torch.autograd.grad((decay_apply(w, 0.7, chunk=8) * upstream).sum(), w)
    dense, = torch.autograd.grad((dense_decay_apply(w, 0.7) * upstream).sum(), w)
    torch.testing.assert_close(fast, dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", (0.0, 1e-3, 2.0, 50.0))
def test_long_inputs_stay_finite_and_exact(scale):
    """N = 20000 in float32 (dense P would need 1.6 GB): compare with the closed-form row sums."""
    n = 20000
    y = decay_apply(torch.ones(n, 1), scale)[:, 0].double()
    i = torch.arange(n, dtype=torch.float64)
    if scale == 0.0:
        expected = torch.full((n,), float(n), dtype=torch.float64)
    else:
        r = math.exp(-scale)
        # sum_{j<=i} r^(i-j) + sum_{j>=i} r^(j-i) - 1
        expected = (1 - r ** (i + 1)) / (1 - r) + (1 - r ** (n - i)) / (1 - r) - 1
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=0)


def test_negative_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        decay_apply(torch.ones(4, 1), -1.0)
