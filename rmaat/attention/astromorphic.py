"""Astromorphic attention (RMAAT, SPEC §3): Hebbian write, astrocytic read, O(N) per segment.

Per head, with phi(x) = elu(x) + 1 and only real (unpadded) tokens t:

    Write:  H_neuron = (1/m) sum_t phi(k_t) v_t^T          (d_k × d_v, independent of N)
            H_astro  = (1/m) sum_t phi(r_t) v_t^T          astrocyte (STP) positional term
            g        = (sum_t phi(k_t)) ** alpha            presynaptic state (d_k,)
    Read:   C_i      = phi(q_i) . g                         one scalar per query
            out_i    = phi(q_i)^T (H_neuron + H_astro) / (C_i + eps)

The positional keys are R = P W_R with P_ij = exp(-|i - j| * scale) (N × N, data-independent)
and a learnable W_R of shape (seq_len, d_k) per head: SPEC leaves the projection of P to
N × d_k open, and a per-position table is the most direct learnable choice; an input of
N < seq_len uses the first N rows. W_R is stored transposed, as ``w_r`` of shape
(n_heads, d_k, seq_len), so that P @ W_R runs as O(N) exponential scans along contiguous
memory (``positional.decay_apply``) and phi(R)^T comes out in the layout the write product
wants. W_R rows at padded positions are zeroed before the scan, so padding never leaks
into the real tokens' R. The kernel (everything between the projections) runs in float32
or wider, also under autocast: H sums N tokens (fp16 overflows) and SPEC asks for g and C
in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rmaat.attention.config import AttentionConfig
from rmaat.attention.linear import MultiHeadProjections, accumulation_dtype, feature_maps, phi
from rmaat.attention.positional import decay_apply, decay_matrix
from rmaat.errors import ConfigError


class AstromorphicAttention(MultiHeadProjections):
    """Multi-head astromorphic attention; see the module docstring for the equations."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__(cfg)
        self.w_r: nn.Parameter | None = None
        if cfg.use_astro:
            self.w_r = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.seq_len))  # (H, dh, seq_len) = W_R^T
        self.reset_astro_parameters()

    @torch.no_grad()
    def reset_astro_parameters(self) -> None:
        """Initialise W_R so that R = P W_R has the variance of K at init (1/3 for unit inputs).

        nn.Linear's default init gives K entries of variance 1/3 for unit-variance inputs;
        R_i = sum_j P_ij w_j has variance var(w) * sum_j P_ij², so var(w) is divided by the
        squared row norm of P's middle row. This keeps phi(R) comparable to phi(K) for every
        decay scale (for scale = 0, P is all ones and R would otherwise grow like sqrt(N)).
        """
        if self.w_r is None:
            return
        n = self.cfg.seq_len
        lag = (torch.arange(n, dtype=torch.float64) - n // 2).abs()       # middle row of P
        row_sq = torch.exp(-2.0 * self.cfg.decay_scale * lag).sum().item()
        nn.init.normal_(self.w_r, std=math.sqrt(1.0 / (3.0 * row_sq)))

    def positional_keys(self, n: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """R = P (mask ⊙ W_R[:n]), returned transposed: (H, dh, n), or (B, H, dh, n) with a mask."""
        if self.w_r is None:
            raise ConfigError("this layer was built with use_astro=False: it has no positional keys")
        w = self.w_r[..., :n]                                             # (H, dh, n)
        if key_mask is not None:
            w = w * key_mask[:, None, None, :].to(w.dtype)                # (B, H, dh, n)
        # P is data-independent and the scan cheap: keep it out of autocast (float32 weights)
        with torch.autocast(device_type=w.device.type, enabled=False):
            return decay_apply(w, self.cfg.decay_scale, dim=-1)

    def dense_positional_keys(self, n: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The O(N²) reference of ``positional_keys``: (mask ⊙ W_R)^T times the dense P."""
        if self.w_r is None:
            raise ConfigError("this layer was built with use_astro=False: it has no positional keys")
        w = self.w_r[..., :n]
        if key_mask is not None:
            w = w * key_mask[:, None, None, :].to(w.dtype)
        return w @ decay_matrix(n, self.cfg.decay_scale, dtype=w.dtype, device=w.device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        n = q.shape[2]
        if cfg.use_astro and n > cfg.seq_len:  # W_R has seq_len rows
            raise ConfigError(
                f"input has {n} tokens but the astromorphic layer was built for seq_len={cfg.seq_len}; "
                "raise AttentionConfig.seq_len to at least segment length + memory tokens")
        acc = accumulation_dtype(q.dtype)
        # The whole kernel runs in float32 (or wider), autocast or not: its sums over N tokens
        # overflow fp16 and the normaliser must be float32. Only the projections use autocast.
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k, v = feature_maps(q, k, v, key_mask)            # (B, H, N, dh); padded keys out of H AND g
            # Write
            h = torch.einsum("bhnk,bhnv->bhkv", phi_k, v)                 # (B, H, dh, dh) m * H_neuron
            if cfg.use_astro:
                phi_r_t = phi(self.positional_keys(n, key_mask).to(acc))  # (H, dh, N) or (B, H, dh, N)
                spec = "hkn,bhnv->bhkv" if phi_r_t.dim() == 3 else "bhkn,bhnv->bhkv"
                h = h + torch.einsum(spec, phi_r_t, v)                    # + m * H_astro
            h = h / cfg.m
            if cfg.sigmoid_h:
                h = torch.sigmoid(h)
            # clamp: an all-padded row has sum phi(k) = 0, where x**alpha has an infinite slope
            g = phi_k.sum(dim=2).clamp_min(torch.finfo(acc).tiny) ** cfg.alpha  # (B, H, dh)
            # Read
            c = torch.einsum("bhnk,bhk->bhn", phi_q, g)                   # (B, H, N)  C = phi(Q) g^T
            num = torch.einsum("bhnk,bhkv->bhnv", phi_q, h)               # (B, H, N, dh)
            y = num * (1.0 / (c + cfg.eps)).unsqueeze(-1)                 # (B, H, N, dh)
        return y
