"""Astromorphic, linear and softmax attention: exactness against oracles, padding, robustness."""

import math

import pytest
import torch
import torch.nn.functional as F

from rmaat.attention import AttentionConfig, build_attention
from rmaat.attention.reference import reference_astromorphic
from rmaat.errors import ConfigError

KINDS = ("astro", "linear", "softmax")


def _layer(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> torch.nn.Module:
    params = dict(kind="astro", d_model=8, n_heads=2, seq_len=16)
    params.update(overrides)
    torch.manual_seed(seed)
    return build_attention(AttentionConfig(**params)).to(dtype).eval()


def _mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]        # (B, N) True = real


def _grads(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, upstream: torch.Tensor) -> list:
    params = [p for p in layer.parameters()]
    return list(torch.autograd.grad((y * upstream).sum(), [x, *params]))


# ---------------------------------------------------------------- fast == literal reference

@pytest.mark.parametrize("batch, n, lengths", [
    (1, 1, None), (2, 7, [7, 4]), (3, 13, [13, 1, 9]), (1, 16, None)])
@pytest.mark.parametrize("overrides", [
    {}, {"decay_scale": 0.0, "alpha": 0.5}, {"decay_scale": 10.0, "m_scale": 3.0},
    {"sigmoid_h": True, "decay_scale": 0.3}, {"use_astro": False}])
def test_fast_equals_reference_outputs_and_gradients(batch, n, lengths, overrides):
    _assert_fast_equals_reference(batch, n, lengths, overrides)


@pytest.mark.parametrize("batch, n, lengths", [(3, 67, [67, 64, 40]), (1, 97, None)])
@pytest.mark.parametrize("overrides", [
    {"decay_scale": 0.0, "alpha": 0.5}, {"sigmoid_h": True, "decay_scale": 0.3}, {"decay_scale": 0.05}])
def test_fast_equals_reference_beyond_the_scan_chunk(batch, n, lengths, overrides):
    """N > 64, odd: the positional scan runs over several 32-token chunks (positional.DEFAULT_CHUNK)
    and a ragged last one (67 = 2 x 32 + 3, 97 = 3 x 32 + 1), with padding that ends on a chunk edge
    (64) and inside a chunk (40). The decay scales keep what crosses a chunk edge above the
    tolerance (r^32 = 1, 7e-5, 0.2); at the default 2.0 it would be e^-64 and a lost carry invisible."""
    _assert_fast_equals_reference(batch, n, lengths, overrides)


def _assert_fast_equals_reference(batch, n, lengths, overrides):
    """The chunked O(N) layer equals the literal O(N^2) reference: outputs, and gradients with
    respect to the input and every parameter."""
    seed = 100 * n + batch + len(overrides)
    layer = _layer(seed, seq_len=max(16, n), **overrides)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = None if lengths is None else _mask(lengths, n)
    upstream = torch.randn(batch, n, 8, generator=gen, dtype=torch.float64)
    fast, ref = layer(x, mask), reference_astromorphic(layer, x, mask)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for g_fast, g_ref in zip(_grads(layer, x, fast, upstream), _grads(layer, x, ref, upstream)):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-11)


def test_reference_reacts_to_every_term():
    """The oracle itself is not blind: changing W_R, alpha or m changes its output."""
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    base = reference_astromorphic(_layer(1), x)
    layer = _layer(1)
    with torch.no_grad():
        layer.w_r.add_(0.5)
    assert not torch.allclose(reference_astromorphic(layer, x), base)
    assert not torch.allclose(reference_astromorphic(_layer(1, alpha=0.9), x), base)
    assert not torch.allclose(reference_astromorphic(_layer(1, m_scale=7.0), x), base)


# ---------------------------------------------------------------- linear-attention oracle

@pytest.mark.parametrize("n, lengths", [(1, None), (9, [9, 3]), (32, [5, 32])])
def test_alpha_one_no_astro_unit_m_is_linear_attention(n, lengths):
    astro = _layer(7, alpha=1.0, use_astro=False, m_scale=1.0, seq_len=32)
    linear = _layer(8, kind="linear", seq_len=32)
    linear.load_state_dict(astro.state_dict())
    x = torch.randn(len(lengths or [0]), n, 8, dtype=torch.float64)
    mask = None if lengths is None else _mask(lengths, n)
    torch.testing.assert_close(astro(x, mask), linear(x, mask), rtol=1e-12, atol=1e-13)
    # and the astrocytic terms really change the result
    assert not torch.allclose(_layer(7, alpha=0.25, use_astro=False, m_scale=1.0, seq_len=32)(x, mask),
                              linear(x, mask))


def test_linear_attention_matches_its_formula():
    layer = _layer(3, kind="linear")
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    att = fq @ fk.transpose(-1, -2)                                       # (B, H, N, N) un-normalised
    heads = (att @ v) / (att.sum(-1, keepdim=True) + layer.cfg.eps)
    expected = layer.out(heads.transpose(1, 2).reshape(2, 6, 8))
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-13)


def test_softmax_attention_matches_explicit_masked_softmax():
    layer = _layer(4, kind="softmax")
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    mask = _mask([6, 4], 6)
    q, k, v = layer.qkv(x).view(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    heads = scores.softmax(-1) @ v
    expected = layer.out(heads.transpose(1, 2).reshape(2, 6, 8)) * mask[..., None]
    torch.testing.assert_close(layer(x, mask), expected, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_real, n_pad", [(1, 5), (7, 1), (12, 20)])
def test_appending_padding_changes_nothing(kind, n_real, n_pad):
    layer = _layer(11, kind=kind, seq_len=32)
    x = torch.randn(2, n_real, 8, dtype=torch.float64, requires_grad=True)
    garbage = 1e3 * torch.randn(2, n_pad, 8, dtype=torch.float64)
    padded = torch.cat([x, garbage], dim=1)
    mask = _mask([n_real, n_real], n_real + n_pad)
    upstream = torch.randn(2, n_real, 8, dtype=torch.float64)
    y, y_pad = layer(x), layer(padded, mask)
    torch.testing.assert_close(y_pad[:, :n_real], y, rtol=1e-11, atol=1e-12)
    assert torch.equal(y_pad[:, n_real:], torch.zeros_like(y_pad[:, n_real:]))
    g = torch.autograd.grad((y * upstream).sum(), x)[0]
    g_pad = torch.autograd.grad((y_pad[:, :n_real] * upstream).sum(), x)[0]
    torch.testing.assert_close(g_pad, g, rtol=1e-10, atol=1e-12)


def test_padded_keys_are_excluded_from_the_normaliser_too():
    """With alpha = 1 and no astro term a padded key would show up only through g if leaked."""
    layer = _layer(5, alpha=1.0, use_astro=False)
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    padded = torch.cat([x, torch.full((1, 3, 8), 5.0, dtype=torch.float64)], dim=1)
    y = layer(padded, _mask([4], 7))[:, :4]
    torch.testing.assert_close(y, layer(x), rtol=1e-12, atol=1e-13)
    assert not torch.allclose(layer(padded)[:, :4], layer(x))   # unmasked, the extra tokens matter


# ---------------------------------------------------------------- robustness

@pytest.mark.parametrize("kind", KINDS)
def test_no_nan_for_large_activations(kind):
    layer = _layer(6, dtype=torch.float32, kind=kind, d_model=32, n_heads=4, seq_len=64)
    x = (1e4 * torch.randn(2, 64, 32)).requires_grad_(True)
    y = layer(x, _mask([64, 30], 64))
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_all_but_one_padded_equals_the_lone_token(kind):
    layer = _layer(9, kind=kind)
    x = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3] = mask[1, 0] = True
    y = layer(x, mask)
    assert torch.isfinite(y).all()
    # the lone token at position 0 is the same as a length-1 input
    torch.testing.assert_close(y[1, 0], layer(x[1:2, 0:1])[0, 0], rtol=1e-12, atol=1e-13)
    if kind == "astro":  # position-dependent through W_R: check against the literal reference
        torch.testing.assert_close(y, reference_astromorphic(layer, x, mask), rtol=1e-10, atol=1e-12)
    else:  # position-free kinds: equal to the token alone
        torch.testing.assert_close(y[0, 3], layer(x[0:1, 3:4])[0, 0], rtol=1e-12, atol=1e-13)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_fully_padded_rows_give_zero_output_and_finite_gradients(kind):
    """Defined behaviour: a row with no real token outputs exact zeros; other rows are unaffected."""
    layer = _layer(10, kind=kind)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = _mask([5, 0], 5)
    y = layer(x, mask)
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    torch.testing.assert_close(y[0], layer(x[:1])[0], rtol=1e-12, atol=1e-13)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, n, scale", [(torch.bfloat16, 128, 1.0), (torch.float16, 512, 40.0)])
def test_low_precision_autocast_on_cpu(kind, dtype, n, scale):
    """bf16 and fp16 autocast stay finite and close to float32. In the fp16 case the key-value
    sums over 512 tokens exceed fp16's range (about 6.5e4), so they must be accumulated in float32."""
    layer = _layer(12, dtype=torch.float32, kind=kind, d_model=32, n_heads=4, seq_len=n)
    x = scale * torch.randn(2, n, 32, generator=torch.Generator().manual_seed(12))
    mask = _mask([n, 50], n)
    expected = layer(x, mask)
    xb = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(xb, mask)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert (y.float() - expected).norm() <= 0.05 * expected.norm()
    # low-precision inputs too (a model run entirely in that dtype)
    with torch.autocast("cpu", dtype=dtype):
        yb = layer(x.to(dtype), mask)
    assert torch.isfinite(yb).all()


def test_normaliser_is_float32_under_autocast():
    layer = _layer(13, dtype=torch.float32, d_model=32, n_heads=4, seq_len=64)
    x = torch.randn(1, 64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = layer.qkv(x).view(1, 64, 3, 4, 8).permute(2, 0, 3, 1, 4)
        heads = layer.attend(q, k, v, None)
    assert q.dtype == torch.bfloat16 and heads.dtype == torch.float32


# ---------------------------------------------------------------- scale of the default m

def _head_output_and_grads(layer, x):
    b, n, d = x.shape
    q, k, v = layer.qkv(x).view(b, n, 3, layer.n_heads, layer.d_head).permute(2, 0, 3, 1, 4)
    heads = layer.attend(q, k, v, None)                                  # (B, H, N, dh) before W_O
    upstream = torch.randn(heads.shape, generator=torch.Generator().manual_seed(0))
    (heads * upstream).sum().backward()
    w = layer.qkv.weight.grad
    d = layer.cfg.d_model
    grads = [w[:d].norm().item(), w[d:2 * d].norm().item(), w[2 * d:].norm().item()]   # W_Q, W_K, W_V
    return (heads.norm() / v.norm()).item(), grads


@pytest.mark.parametrize("seq_len", (64, 512))
def test_default_m_carries_signal_and_gradient(seq_len):
    """At N = seq_len the head output is on the scale of the values (like linear attention's
    convex combination), and W_Q, W_K, W_V get gradients at least comparable to linear
    attention's. The predecessor's m = 100·d fails the same check."""
    gen = torch.Generator().manual_seed(seq_len)
    # tokens share a component, as real embeddings do, so a normalised mixing keeps signal
    x = torch.randn(2, 1, 64, generator=gen) + 0.5 * torch.randn(2, seq_len, 64, generator=gen)

    def probe(**overrides):
        return _head_output_and_grads(_layer(21, torch.float32, d_model=64, n_heads=2, seq_len=seq_len,
                                             **overrides), x)

    lin_ratio, lin_grads = probe(kind="linear")
    ratio, grads = probe()
    assert 0.3 < ratio < 5.0 and 0.3 < lin_ratio < 5.0
    assert all(g >= 0.5 * gl for g, gl in zip(grads, lin_grads))
    old_ratio, old_grads = probe(m_scale=100.0 * 32)
    assert old_ratio < 0.3 and old_grads[2] < 0.1 * lin_grads[2]


def test_default_m_value():
    cfg = AttentionConfig(seq_len=512, alpha=0.25)
    assert cfg.m == pytest.approx(512 ** 0.75)
    assert AttentionConfig(seq_len=512, m_scale=3.0).m == 3.0


# ---------------------------------------------------------------- configuration and interface

def test_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        AttentionConfig(kind="flash")
    with pytest.raises(ConfigError, match="multiple"):
        AttentionConfig(d_model=10, n_heads=3)
    with pytest.raises(ConfigError, match="alpha"):
        AttentionConfig(alpha=0.0)
    with pytest.raises(ConfigError, match="decay_scale"):
        AttentionConfig(decay_scale=-1.0)
    with pytest.raises(ConfigError, match="seq_len"):
        _layer(0, seq_len=4)(torch.randn(1, 5, 8, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_interface_shapes_and_dropout(kind):
    layer = _layer(14, kind=kind, dropout=0.5)
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    assert layer(x).shape == (3, 11, 8)
    assert torch.equal(layer(x), layer(x))                              # eval: no dropout
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_positional_keys_scan_equals_dense_with_mask():
    layer = _layer(15, decay_scale=0.4, seq_len=40)
    mask = _mask([40, 17], 40)
    torch.testing.assert_close(layer.positional_keys(40, mask), layer.dense_positional_keys(40, mask),
                               rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(layer.positional_keys(23), layer.dense_positional_keys(23),
                               rtol=1e-12, atol=1e-13)


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import rmaat.attention, rmaat.benchmarks, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- benchmark smoke test

def test_attention_bench_rows_and_summary():
    from rmaat.benchmarks.attention_bench import run_attention_bench, summarise

    rows = run_attention_bench(lengths=(64, 128), d_model=16, n_heads=2, device="cpu", repeats=1)
    assert {(r["length"], r["kind"]) for r in rows} == {(n, k) for n in (64, 128) for k in KINDS}
    for r in rows:
        assert r["seconds"] > 0 and r["peak_bytes"] > 0 and r["method"].startswith("cpu")
    summary = summarise(rows)
    assert [s["length"] for s in summary] == [64, 128, "fit"]
    assert summary[1]["softmax_over_astro_time"] > 0 and summary[-1]["astro_time_exponent"] is not None
    # the peak accounting sees memory that grows with the input
    peak = {(r["length"], r["kind"]): r["peak_bytes"] for r in rows}
    assert all(peak[(128, k)] > peak[(64, k)] for k in KINDS)
