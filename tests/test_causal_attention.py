"""Causal attention (SPEC §8): the chunked O(N) astromorphic layer against its literal reference,
causality, the RNN form, the linear-attention limit, causal softmax, and float32 at 4K tokens."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rmaat.attention import AttentionConfig, build_attention
from rmaat.attention.causal import (CAUSAL_LAYERS, CausalAstromorphicAttention, CausalLinearAttention,
                                    build_causal_attention, causal_kernel)
from rmaat.attention.causal_reference import reference_causal_astromorphic
from rmaat.errors import ConfigError

D = 8  # d_model of the small layers: 2 heads of 4


@pytest.fixture(autouse=True)
def _one_thread(one_intra_op_thread):
    """Tiny tensors: extra threads only add synchronisation on a shared 2-core machine."""


def _layer(kind: str = "astro", seed: int = 0, dtype: torch.dtype = torch.float64, chunk: int = 64,
           **overrides) -> torch.nn.Module:
    params = dict(kind=kind, d_model=D, n_heads=2, seq_len=16)
    params.update(overrides)
    torch.manual_seed(seed)
    cfg = AttentionConfig(**params)
    layer = CAUSAL_LAYERS[kind](cfg, chunk) if kind != "softmax" else build_causal_attention(cfg)
    return layer.to(dtype).eval()


def _mask(pattern: str, batch: int, n: int) -> torch.Tensor | None:
    """None, or (B, N) bool: row b keeps a different number of tokens, padded on the right
    ("right"), on the left ("left"), or with holes anywhere ("holes")."""
    if pattern == "none":
        return None
    gen = torch.Generator().manual_seed(n)
    if pattern == "holes":
        mask = torch.rand(batch, n, generator=gen) < 0.7
        mask[:, -1] = True                                   # at least one real token per row
        return mask
    lengths = torch.tensor([max(1, n - 3 * b) for b in range(batch)])[:, None]
    pos = torch.arange(n)[None, :]
    return pos < lengths if pattern == "right" else pos >= n - lengths


def _grads(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, upstream: torch.Tensor) -> list:
    return list(torch.autograd.grad((y * upstream).sum(), [x, *layer.parameters()]))


def _decode(layer: CausalAstromorphicAttention, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token RNN decoding of x (B, N, D) -> (B, N, D)."""
    state = layer.init_state(x.shape[0], dtype=torch.float64)
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)                # (B, D)
        ys.append(y)
    return torch.stack(ys, dim=1)


# ---------------------------------------------------------------- fast == literal reference

@pytest.mark.parametrize("batch, n, chunk, pattern", [
    (1, 1, 64, "none"), (2, 7, 3, "right"), (3, 7, 4, "left"), (2, 13, 5, "holes"),
    (3, 67, 16, "right"), (1, 97, 32, "none")])
@pytest.mark.parametrize("overrides", [
    {}, {"decay_scale": 0.05, "alpha": 0.5}, {"decay_scale": 0.0, "m_scale": 3.0}, {"use_astro": False}])
def test_fast_equals_reference_outputs_and_gradients(batch, n, chunk, pattern, overrides):
    """The chunked layer equals the literal float64 reference: outputs, and gradients with respect
    to the input and every parameter (W_R included). Chunks are smaller than N, with a ragged last
    one (7 = 2·3 + 1, 67 = 4·16 + 3, 97 = 3·32 + 1), so the inter-chunk carry is exercised; the
    decay scales 0.05 and 0 keep the positional state that crosses a chunk edge well above the
    tolerance (at 2.0 it is e^-32 after one 16-token chunk)."""
    seed = 100 * n + batch + len(overrides)
    layer = _layer(seed=seed, chunk=chunk, seq_len=max(16, n), **overrides)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, D, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch, n, D, generator=gen, dtype=torch.float64)
    mask = _mask(pattern, batch, n)
    fast, ref = layer(x, mask), reference_causal_astromorphic(layer, x, mask)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for g_fast, g_ref in zip(_grads(layer, x, fast, upstream), _grads(layer, x, ref, upstream)):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-11)


def test_reference_reacts_to_every_term():
    """The oracle itself is not blind: W_R, alpha, m and the decay scale all change its output,
    and its first output ignores every later token."""
    x = torch.randn(1, 5, D, dtype=torch.float64)
    base = reference_causal_astromorphic(_layer(seed=1), x)
    layer = _layer(seed=1)
    with torch.no_grad():
        layer.w_r.add_(0.5)
    assert not torch.allclose(reference_causal_astromorphic(layer, x), base)
    for change in ({"alpha": 0.9}, {"m_scale": 7.0}, {"decay_scale": 0.3}):
        assert not torch.allclose(reference_causal_astromorphic(_layer(seed=1, **change), x), base)
    x2 = x.clone()
    x2[:, 1:] += 1.0
    out2 = reference_causal_astromorphic(_layer(seed=1), x2)
    assert torch.equal(out2[:, 0], base[:, 0]) and not torch.allclose(out2[:, 1:], base[:, 1:])


@pytest.mark.parametrize("pattern", ["none", "left"])
def test_positional_keys_scan_equals_dense_causal_decay(pattern):
    """R from the O(N) causal scan equals the dense lower-triangular P (over 3 scan chunks)."""
    layer = _layer(seq_len=80, decay_scale=0.05)
    mask = _mask(pattern, 2, 77)
    torch.testing.assert_close(layer.positional_keys(77, mask), layer.dense_positional_keys(77, mask),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_chunk_length_does_not_change_the_result(chunk):
    layer = _layer(chunk=64, seq_len=37, decay_scale=0.1)
    x = torch.randn(2, 37, D, dtype=torch.float64)
    full = layer(x)
    layer.chunk = chunk
    torch.testing.assert_close(layer(x), full, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- causality

CAUSALITY_KINDS = ["astro", "linear", "softmax"]
PROBES = [0, 15, 16, 40, 66]  # first token, both sides of a chunk edge (chunk 16), inside, last


def _causality_case(kind: str, seed: int) -> tuple[torch.nn.Module, torch.Generator, torch.Tensor]:
    """A layer of `kind` with 16-token chunks, a generator, and x (2, 67, D) float64."""
    gen = torch.Generator().manual_seed(seed)
    layer = _layer(kind, seed=seed, chunk=16, seq_len=67, decay_scale=0.05)
    return layer, gen, torch.randn(2, 67, D, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("kind", CAUSALITY_KINDS)
def test_output_at_i_ignores_tokens_after_i(kind):
    """Changing tokens i+1.. leaves outputs 0..i bit for bit unchanged (and does change the rest)."""
    layer, gen, x = _causality_case(kind, seed=3)
    base = layer(x)
    for i in PROBES[:-1]:
        x2 = x.clone()
        x2[:, i + 1:] = torch.randn(2, 66 - i, D, generator=gen, dtype=torch.float64)
        out = layer(x2)
        assert torch.equal(out[:, :i + 1], base[:, :i + 1]), f"{kind}: output <= {i} changed"
        assert not torch.allclose(out[:, i + 1:], base[:, i + 1:])


@pytest.mark.parametrize("kind", CAUSALITY_KINDS)
def test_gradient_of_out_i_wrt_later_tokens_is_zero(kind):
    """d out_i / d x_j is exactly 0 for j > i, and not 0 for j = i and j = 0 (the prefix is used)."""
    layer, gen, x = _causality_case(kind, seed=4)
    x.requires_grad_()
    y = layer(x)
    for i in PROBES:
        upstream = torch.randn(2, D, generator=gen, dtype=torch.float64)
        (g,) = torch.autograd.grad((y[:, i] * upstream).sum(), x, retain_graph=True)  # (B, N, D)
        assert torch.count_nonzero(g[:, i + 1:]) == 0, f"{kind}: out_{i} depends on later tokens"
        assert g[:, i].abs().amin(dim=-1).gt(0).all() and g[:, 0].abs().amax(dim=-1).gt(0).all()


# ---------------------------------------------------------------- RNN form

@pytest.mark.parametrize("kind", ["astro", "linear"])
@pytest.mark.parametrize("n", [1, 7, 67])
@pytest.mark.parametrize("overrides", [{}, {"decay_scale": 0.05, "alpha": 0.5}, {"decay_scale": 0.0}])
def test_token_by_token_decoding_equals_forward(kind, n, overrides):
    layer = _layer(kind, seed=n, chunk=16, seq_len=max(16, n), **overrides)
    x = torch.randn(3, n, D, dtype=torch.float64)
    torch.testing.assert_close(_decode(layer, x), layer(x), rtol=1e-10, atol=1e-12)


def test_step_leaves_its_input_state_alone_and_stops_at_seq_len():
    layer = _layer(seq_len=3)
    state = layer.init_state(2, dtype=torch.float64)
    x = torch.randn(2, D, dtype=torch.float64)
    y1, after = layer.step(x, state)
    y2, _ = layer.step(x, state)                              # same state again: same output
    assert torch.equal(y1, y2) and state.pos == 0 and torch.count_nonzero(state.s) == 0
    assert after.pos == 1 and after.s.shape == (2, 2, 4, 4) and after.z.shape == (2, 2, 4)
    for _ in range(2):
        _, after = layer.step(x, after)
    with pytest.raises(ConfigError, match="seq_len"):
        layer.step(x, after)                                  # a 4th token has no W_R row
    with pytest.raises(ConfigError, match="seq_len"):
        layer(torch.randn(1, 4, D, dtype=torch.float64))


def test_step_carries_gradient():
    """Decoding is differentiable (e.g. for training an RNN-style decoder)."""
    layer = _layer(decay_scale=0.1)
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 5, D, dtype=torch.float64)
    for g_rnn, g_fast in zip(_grads(layer, x, _decode(layer, x), upstream), _grads(layer, x, layer(x), upstream)):
        torch.testing.assert_close(g_rnn, g_fast, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- linear limit and baselines

def _heads(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, N, d) from the layer's own projection, written out."""
    b, n, _ = x.shape
    return F.linear(x, layer.qkv.weight, layer.qkv.bias).view(b, n, 3, 2, D // 2).permute(2, 0, 3, 1, 4)


def _merge(layer: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> output projection (B, N, D)."""
    return F.linear(y.transpose(1, 2).flatten(2), layer.out.weight, layer.out.bias)


def _katharopoulos_causal(layer: torch.nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Causal linear attention in its quadratic form: A = tril(phi(Q) phi(K)^T), out = A V / rowsum(A)."""
    q, k, v = _heads(layer, x)
    feat = lambda t: F.elu(t) + 1.0                                       # noqa: E731
    n = x.shape[1]
    a = (feat(q) @ feat(k).transpose(-1, -2)) * torch.ones(n, n, dtype=x.dtype).tril()  # (B, H, N, N)
    return _merge(layer, (a @ v) / (a.sum(dim=-1, keepdim=True) + eps))


@pytest.mark.parametrize("n, chunk", [(1, 64), (7, 3), (97, 32)])
def test_alpha_one_without_positional_term_is_causal_linear_attention(n, chunk):
    """SPEC §3's oracle, causal: alpha = 1, no H_astro (and the default m = seq_len^0 = 1) is
    Katharopoulos causal linear attention; ``CausalLinearAttention`` is that layer whatever its
    config says about alpha, m and the positional term."""
    x = torch.randn(2, n, D, dtype=torch.float64)
    astro = _layer(seed=n, chunk=chunk, seq_len=max(16, n), alpha=1.0, use_astro=False)
    assert astro.cfg.m == 1.0
    torch.testing.assert_close(astro(x), _katharopoulos_causal(astro, x, astro.cfg.eps), rtol=1e-10, atol=1e-12)
    linear = _layer("linear", seed=n, chunk=chunk, seq_len=max(16, n), alpha=0.25, m_scale=9.0)
    assert isinstance(linear, CausalLinearAttention) and linear.w_r is None
    torch.testing.assert_close(linear(x), _katharopoulos_causal(linear, x, linear.cfg.eps), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, astro_overrides", [
    ("astro", {"use_astro": False, "alpha": 0.5}), ("linear", {}), ("softmax", {})])
def test_last_token_equals_the_non_causal_layer(kind, astro_overrides):
    """At the last query every key is in the past, so the causal layer agrees with the non-causal
    one there (with the same weights; the positional terms differ, so astro runs without it)."""
    causal = _layer(kind, seed=5, chunk=4, seq_len=11, **astro_overrides)
    torch.manual_seed(5)
    plain = build_attention(AttentionConfig(kind=kind, d_model=D, n_heads=2, seq_len=11, **astro_overrides))
    plain = plain.to(torch.float64).eval()
    plain.load_state_dict(causal.state_dict())
    x = torch.randn(2, 11, D, dtype=torch.float64)
    torch.testing.assert_close(causal(x)[:, -1], plain(x)[:, -1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n, pattern", [(1, "none"), (7, "right"), (13, "left"), (97, "holes")])
def test_causal_softmax_equals_masked_softmax(n, pattern):
    layer = _layer("softmax", seed=n, seq_len=max(16, n))
    x = torch.randn(3, n, D, dtype=torch.float64)
    mask = _mask(pattern, 3, n)
    q, k, v = _heads(layer, x)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()                   # (N, N) key j <= query i
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]                        # (B, 1, N, N) and j real
    scores = (q @ k.transpose(-1, -2) / (D // 2) ** 0.5).masked_fill(~allowed, float("-inf"))
    ref = _merge(layer, torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v)  # rows with no key: 0
    real = torch.ones(3, n, dtype=torch.bool) if mask is None else mask
    out = layer(x, mask)
    assert torch.isfinite(out).all() and torch.equal(out[~real], torch.zeros_like(out[~real]))
    torch.testing.assert_close(out[real], ref[real], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- float32 at 4K tokens

@pytest.mark.parametrize("overrides", [{"decay_scale": 0.01, "alpha": 0.25}, {"alpha": 1.0, "use_astro": False}])
def test_float32_chunked_form_holds_at_4k_tokens(overrides):
    """The whole layer (projections, float32 positional scan over 4096 W_R rows, kernel) at 4096
    tokens in float32 against the same layer in float64 (checked against the literal reference
    above; the kernel test below uses an independent formula). Measured: outputs of size up to
    0.6-1.1 differ by <= 2.1e-7, input gradients by <= 3.7e-7; tolerance atol 1e-6, rtol 1e-5."""
    n = 4096
    torch.manual_seed(6)
    l32 = CausalAstromorphicAttention(AttentionConfig(d_model=32, n_heads=2, seq_len=n, **overrides)).eval()
    l64 = copy.deepcopy(l32).to(torch.float64)
    x = torch.randn(1, n, 32)
    upstream = torch.randn(1, n, 32)
    x32, x64 = x.clone().requires_grad_(), x.to(torch.float64).requires_grad_()
    y32, y64 = l32(x32), l64(x64)
    (g32,) = torch.autograd.grad((y32 * upstream).sum(), x32)
    (g64,) = torch.autograd.grad((y64 * upstream.to(torch.float64)).sum(), x64)
    assert y64.abs().max() > 0.1                                          # a signal, not ~0
    torch.testing.assert_close(y32.to(torch.float64), y64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g32.to(torch.float64), g64, rtol=1e-5, atol=1e-6)


def _prefix_sum_kernel(phi_q, phi_k, v, phi_r, alpha, m, eps=1e-6):
    """The kernel as plain prefix sums over all tokens (one running sum, no chunks): (B, H, N, d)."""
    key = phi_k if phi_r is None else phi_k + phi_r
    s = torch.einsum("bhnk,bhnv->bhnkv", key, v).cumsum(dim=2)            # (B, H, N, d, d) m * S_i
    z = phi_k.cumsum(dim=2)                                               # (B, H, N, d)
    num = torch.einsum("bhnk,bhnkv->bhnv", phi_q, s) / m
    return num / ((phi_q * z ** alpha).sum(dim=-1, keepdim=True) + eps)


@pytest.mark.parametrize("alpha, positional", [(0.25, True), (1.0, False)])
def test_float32_kernel_holds_at_4k_tokens(alpha, positional):
    """The chunked kernel at 4096 tokens in float32 against plain prefix sums in float64 (an
    independent formula), outputs and gradients w.r.t. q, k, v. Values have mean 1, so S grows
    like N (zero-mean values keep it near sqrt(N) and hide accumulation error). Errors are
    relative to the largest entry. Measured: outputs 3.5e-7, gradients up to 1.5e-5 (q at
    alpha = 0.25); tolerances 1e-5 and 1e-4. A carried state rounded to bfloat16 fails it."""
    n, gen = 4096, torch.Generator().manual_seed(7)
    q, k, r = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    v = torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64) + 1.0
    upstream = torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64)
    results = []
    for dtype, kernel in ((torch.float32, causal_kernel), (torch.float64, _prefix_sum_kernel)):
        qkv = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        phi_r = F.elu(r.to(dtype)) + 1.0 if positional else None
        y = kernel(F.elu(qkv[0]) + 1.0, F.elu(qkv[1]) + 1.0, qkv[2], phi_r,
                   alpha=alpha, m=n ** (1.0 - alpha))                      # (1, 2, N, 16)
        grads = torch.autograd.grad((y * upstream.to(dtype)).sum(), qkv)
        results.append([y.to(torch.float64)] + [g.to(torch.float64) for g in grads])
    (y32, *g32), (y64, *g64) = results
    assert (y32 - y64).abs().max() <= 1e-5 * y64.abs().max()
    for a, b in zip(g32, g64):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


# ---------------------------------------------------------------- config

def test_sigmoid_h_and_bad_chunk_are_refused():
    with pytest.raises(ConfigError, match="sigmoid_h"):
        CausalAstromorphicAttention(AttentionConfig(d_model=D, n_heads=2, sigmoid_h=True))
    with pytest.raises(ConfigError, match="chunk"):
        CausalAstromorphicAttention(AttentionConfig(d_model=D, n_heads=2), chunk=0)
