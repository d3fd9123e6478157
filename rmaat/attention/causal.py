"""Causal attention (SPEC §8): astromorphic, linear (Katharopoulos) and softmax, for language modelling.

Causal astromorphic attention, per head, with phi(x) = elu(x) + 1 and only real tokens j:

    r_j   = sum_{l <= j} exp(-(j - l) * scale) W_R[l]          causal positional key (one forward scan)
    S_i   = (1/m) sum_{j <= i} (phi(k_j) + phi(r_j)) v_j^T     (d_k × d_v)
    z_i   = sum_{j <= i} phi(k_j)                               (d_k,)
    out_i = phi(q_i)^T S_i / (phi(q_i) . z_i ** alpha + eps)

Three equivalent ways to compute it:

* ``CausalAstromorphicAttention.forward`` — the O(N) chunked form (as flash-linear-attention
  computes causal linear attention): inside a chunk of c tokens a masked c×c product
  (phi(Q) Kᵀ ⊙ [j <= i]) V; across chunks a carried state, the exclusive prefix sum of the
  per-chunk totals Kᵀ V and sum phi(k). Cost O(N · c · d + N · d_k · d_v) per head, in
  batched matrix products. In float32 it agrees with float64 to ~4e-7 (relative to the
  largest output) at 4K tokens (tested): S has no decay and z only positive terms, so the
  prefix sums are benign; chunking buys speed (matmuls instead of N rank-1 updates), and one
  plain running sum over tokens measured the same error.
* ``step(x_t, state)`` — the RNN form for generation: one (S, z) state per head (plus the
  positional scan's state and the position), updated per token. ``forward`` returns no
  state, so a prompt is fed through ``step`` too (or re-run whole).
* ``causal_reference.reference_causal_astromorphic`` — literal float64 loops, for tests.

Choices SPEC §8 leaves open, made here:

* The positional keys use the causal decay P_ij = exp(-(i - j) scale) for j <= i, 0 otherwise,
  as §8 says: r_j sees W_R rows l <= j only. P depends on no data, so causality in the tokens
  holds either way, but the causal P is what makes the RNN form exist (r_t = e^-scale r_{t-1}
  + W_R[t]); the symmetric P of the non-causal layer would need W_R rows of future positions.
  W_R is indexed by absolute position, so one call (or one generation) sees at most
  ``seq_len`` tokens, as in the non-causal layer. Padded positions' W_R rows are zeroed before
  the scan (as there), and padded keys are excluded from S AND z.
* ``sigmoid_h`` is refused: sigmoid(S_i) is not linear in the prefix sums, so it has no O(N)
  chunked or constant-state form.
* W_R is initialised so that R has the variance of K at init for the causal P (whose last row
  has about half the squared norm of the symmetric P's middle row).

Causal linear attention is the special case alpha = 1, m = 1, no positional term (SPEC §3), so
``CausalLinearAttention`` is this layer with those settings. Causal softmax attention uses
``F.scaled_dot_product_attention(is_causal=True)``; it has no ``step`` (that would be a KV cache).

Shapes: B batch, N tokens, D = H · d model width, H heads, d = d_k = d_v head width,
c chunk length, nc = ceil(N / c) chunks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rmaat.attention.astromorphic import AstromorphicAttention
from rmaat.attention.config import AttentionConfig
from rmaat.attention.linear import MultiHeadProjections, accumulation_dtype, feature_maps, phi
from rmaat.attention.positional import causal_decay_scan, decay_matrix
from rmaat.errors import ConfigError

#: Tokens per chunk of the chunked form; 64 as in flash-linear-attention. Any value >= 1 gives
#: the same result (up to rounding); it only trades the c² intra-chunk work against the
#: number of carried states.
DEFAULT_CHUNK = 64


def _pos_pow(z: torch.Tensor, alpha: float) -> torch.Tensor:
    # clamp: a prefix of padded keys has z = 0, where z ** alpha has an infinite slope
    return z.clamp_min(torch.finfo(z.dtype).tiny) ** alpha


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """sum of the entries strictly before each index along ``dim`` (the state entering a chunk).

    Shifting the inclusive sum (not subtracting x from it) keeps it exact for the first chunk
    and free of cancellation.
    """
    inclusive = x.cumsum(dim).narrow(dim, 0, x.shape[dim] - 1)
    return torch.cat((torch.zeros_like(x.narrow(dim, 0, 1)), inclusive), dim=dim)


def causal_kernel(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                  phi_r: torch.Tensor | None = None, *, alpha: float = 1.0, m: float = 1.0,
                  eps: float = 1e-6, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Chunked causal astromorphic attention on feature-mapped per-head tensors.

    phi_q, phi_k, v: (B, H, N, d); phi_r: positional features broadcastable to phi_k, or None.
    Returns (B, H, N, d): out_i = phi_q_i^T S_i / (phi_q_i . z_i ** alpha + eps) with
    S_i = (1/m) sum_{j<=i} (phi_k_j + phi_r_j) v_j^T and z_i = sum_{j<=i} phi_k_j.
    Padded keys must already be zero in phi_k and v. Runs in the inputs' dtype.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    b, h, n, dk = phi_q.shape
    key = phi_k if phi_r is None else phi_k + phi_r                     # (B, H, N, d) keys of S
    c = min(chunk, n)
    nc = -(-n // c)
    pad = nc * c - n
    # zero tokens at the end contribute nothing to S or z; their outputs are cut off below
    q, key, kz, v = (F.pad(t, (0, 0, 0, pad)).view(b, h, nc, c, t.shape[-1])
                     for t in (phi_q, key, phi_k, v))                    # (B, H, nc, c, d)
    # Inter-chunk: the state entering chunk u sums the totals of chunks 0..u-1
    s_in = _exclusive_cumsum(torch.einsum("bhuck,bhucv->bhukv", key, v), dim=2)  # (B, H, nc, d, d)
    z_in = _exclusive_cumsum(kz.sum(dim=3), dim=2)                       # (B, H, nc, d)
    # Intra-chunk: token i sees tokens j <= i of its own chunk (the diagonal included)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # (c, c) [i, j] = j <= i
    scores = torch.einsum("bhuik,bhujk->bhuij", q, key).masked_fill(~causal, 0.0)  # (B, H, nc, c, c)
    num = scores @ v + q @ s_in                                          # (B, H, nc, c, d) m * phi(q)^T S
    z = z_in.unsqueeze(3) + kz.cumsum(dim=3)                             # (B, H, nc, c, d) inclusive z_i
    den = (q * _pos_pow(z, alpha)).sum(dim=-1, keepdim=True)             # (B, H, nc, c, 1)
    y = (num / m) / (den + eps)                                          # (B, H, nc, c, d)
    return y.reshape(b, h, nc * c, -1)[:, :, :n]


@dataclass(frozen=True)
class CausalState:
    """The RNN state of a causal astromorphic (or linear) layer after ``pos`` tokens.

    s:   (B, H, d, d)  sum_{j<pos} (phi(k_j) + phi(r_j)) v_j^T   (m · S, the 1/m is applied on read)
    z:   (B, H, d)     sum_{j<pos} phi(k_j)
    r:   (H, d)        the positional scan's state r_{pos-1} (zeros without the positional term)
    pos: the number of tokens consumed, i.e. the position (W_R row) of the next token.
    """

    s: torch.Tensor
    z: torch.Tensor
    r: torch.Tensor
    pos: int = 0


class CausalAstromorphicAttention(AstromorphicAttention):
    """Multi-head causal astromorphic attention (SPEC §8); see the module docstring.

    ``forward(x (B, N, D), key_mask (B, N) | None) -> (B, N, D)`` as every attention layer
    (no residual; padded query positions give zero). ``init_state`` and ``step`` run the same
    layer token by token. ``chunk`` sets the chunk length of the O(N) form.
    """

    def __init__(self, cfg: AttentionConfig, chunk: int = DEFAULT_CHUNK) -> None:
        if cfg.sigmoid_h:
            raise ConfigError("causal astromorphic attention has no sigmoid_h: sigmoid(S_i) has no "
                              "O(N) or recurrent form; set sigmoid_h=False")
        if chunk < 1:
            raise ConfigError(f"chunk={chunk} must be >= 1")
        super().__init__(cfg)
        self.chunk = chunk

    @torch.no_grad()
    def reset_astro_parameters(self) -> None:
        """Initialise W_R so that R = P_causal W_R has the variance of K at init (1/3).

        Var(r_i) = var(w) * sum_{l<=i} exp(-2 scale (i - l)), largest at the last row.
        """
        if self.w_r is None:
            return
        lag = torch.arange(self.cfg.seq_len, dtype=torch.float64)          # last row of causal P
        row_sq = torch.exp(-2.0 * self.cfg.decay_scale * lag).sum().item()
        nn.init.normal_(self.w_r, std=math.sqrt(1.0 / (3.0 * row_sq)))

    def _masked_w_r(self, n: int, key_mask: torch.Tensor | None) -> torch.Tensor:
        """W_R^T[:, :, :n] with padded positions' rows zeroed: (H, d, n), or (B, H, d, n) with a mask."""
        if self.w_r is None:
            raise ConfigError("this layer was built with use_astro=False: it has no positional keys")
        w = self.w_r[..., :n]                                             # (H, d, n)
        return w if key_mask is None else w * key_mask[:, None, None, :].to(w.dtype)

    def positional_keys(self, n: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """R = P_causal (mask ⊙ W_R[:n]), transposed: (H, d, n), or (B, H, d, n) with a mask."""
        w = self._masked_w_r(n, key_mask)
        with torch.autocast(device_type=w.device.type, enabled=False):
            return causal_decay_scan(w, self.cfg.decay_scale, dim=-1)

    def dense_positional_keys(self, n: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The O(N²) reference of ``positional_keys`` (overriding the parent's symmetric one).

        R^T[:, i] = sum_l W_R^T[:, l] P[i, l] with P[i, l] = 0 for l > i, so the matrix on the
        right is the upper triangle [l, i], l <= i, of exp(-|i - l| scale).
        """
        w = self._masked_w_r(n, key_mask)
        return w @ decay_matrix(n, self.cfg.decay_scale, dtype=w.dtype, device=w.device).triu()

    def _check_length(self, n: int) -> None:
        if self.cfg.use_astro and n > self.cfg.seq_len:  # W_R has seq_len rows
            raise ConfigError(
                f"{n} tokens but the causal astromorphic layer was built for seq_len={self.cfg.seq_len}; "
                "raise AttentionConfig.seq_len to at least the sequence (or generation) length")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        n = q.shape[2]
        self._check_length(n)
        acc = accumulation_dtype(q.dtype)
        # float32 or wider, autocast or not: S and z are sums over many tokens (as non-causal)
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k, v = feature_maps(q, k, v, key_mask)            # (B, H, N, d); padded keys out of S AND z
            phi_r = None
            if cfg.use_astro:
                phi_r = phi(self.positional_keys(n, key_mask).to(acc)).transpose(-1, -2)  # (B|., H, N, d)
            return causal_kernel(phi_q, phi_k, v, phi_r, alpha=cfg.alpha, m=cfg.m, eps=cfg.eps,
                                 chunk=self.chunk)

    # ------------------------------------------------------------------ RNN form

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> CausalState:
        """The state before the first token: S = 0, z = 0, r = 0, pos = 0.

        dtype defaults to the accumulation dtype of the layer's weights (at least float32).
        """
        dtype = dtype or accumulation_dtype(self.qkv.weight.dtype)
        device = device or self.qkv.weight.device
        hd = (self.n_heads, self.d_head)
        return CausalState(s=torch.zeros(batch, *hd, self.d_head, dtype=dtype, device=device),
                           z=torch.zeros(batch, *hd, dtype=dtype, device=device),
                           r=torch.zeros(*hd, dtype=dtype, device=device))

    def step(self, x_t: torch.Tensor, state: CausalState) -> tuple[torch.Tensor, CausalState]:
        """One token: x_t (B, D) -> (y_t (B, D), the state after it). Equals ``forward`` at that
        position (no padding mask: every token given is real). The state is not modified."""
        cfg = self.cfg
        b = x_t.shape[0]
        self._check_length(state.pos + 1)
        acc = state.s.dtype
        q, k, v = self.qkv(x_t).view(b, 3, self.n_heads, self.d_head).unbind(1)  # 3 × (B, H, d)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            phi_q, phi_k, v = phi(q.to(acc)), phi(k.to(acc)), v.to(acc)  # (B, H, d)
            key, r = phi_k, state.r
            if cfg.use_astro:
                # one step of the causal scan: r_t = e^-scale r_{t-1} + W_R[t]
                r = math.exp(-cfg.decay_scale) * r + self.w_r[:, :, state.pos].to(acc)  # (H, d)
                key = phi_k + phi(r)
            s = state.s + key.unsqueeze(-1) * v.unsqueeze(-2)             # (B, H, d, d)
            z = state.z + phi_k                                           # (B, H, d)
            num = torch.einsum("bhk,bhkv->bhv", phi_q, s) / cfg.m          # (B, H, d)
            den = (phi_q * _pos_pow(z, cfg.alpha)).sum(dim=-1, keepdim=True)  # (B, H, 1)
            y = num / (den + cfg.eps)                                     # (B, H, d)
        y = self.dropout(self.out(y.reshape(b, -1).to(q.dtype)))          # (B, D)
        return y, CausalState(s=s, z=z, r=r, pos=state.pos + 1)


class CausalLinearAttention(CausalAstromorphicAttention):
    """Causal Katharopoulos linear attention: the astromorphic layer with alpha = 1, m = 1 and
    no positional term (SPEC §3), whatever ``cfg`` says about those three."""

    def __init__(self, cfg: AttentionConfig, chunk: int = DEFAULT_CHUNK) -> None:
        super().__init__(dataclasses.replace(cfg, alpha=1.0, m_scale=1.0, use_astro=False,
                                             sigmoid_h=False), chunk)


class CausalSoftmaxAttention(MultiHeadProjections):
    """Causal multi-head softmax attention via SDPA, with a key padding mask."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, d)
        n = q.shape[2]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()  # (N, N) [i, j] = j <= i
        # a padded query may see no real key (left padding): let it see itself, so its softmax
        # is not over nothing (NaN); the caller zeroes its output. Real queries see themselves anyway.
        allowed = causal & (key_mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=q.device))  # (B, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # (B, H, N, d)


#: The causal layer class of each ``AttentionConfig.kind``.
CAUSAL_LAYERS: dict[str, type[nn.Module]] = {
    "astro": CausalAstromorphicAttention,
    "linear": CausalLinearAttention,
    "softmax": CausalSoftmaxAttention,
}


def build_causal_attention(cfg: AttentionConfig) -> nn.Module:
    """The causal attention module for ``cfg.kind``: x (B, N, D), key_mask (B, N) | None -> (B, N, D)."""
    return CAUSAL_LAYERS[cfg.kind](cfg)
