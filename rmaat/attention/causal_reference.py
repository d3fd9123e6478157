"""A slow, literal float64 reference of causal astromorphic attention (SPEC §8), for tests only.

For every batch row, head and query i it forms the prefix sums over keys j <= i afresh (the
slice ``[:i + 1]``), exactly as written:

    r_j   = sum_{l <= j, l real} exp(-(j - l) scale) W_R[l]
    S_i   = (1/m) sum_{j <= i, j real} (phi(k_j) + phi(r_j)) v_j^T
    z_i   = sum_{j <= i, j real} phi(k_j)
    out_i = phi(q_i)^T S_i / (phi(q_i) . z_i ** alpha + eps)

with the parameters of a ``CausalAstromorphicAttention`` (or ``CausalLinearAttention``) module,
so gradients with respect to them can be compared with the fast layer. O(N²) per head; no
chunks, no carried state. Dropout is not applied: compare in eval mode or with dropout = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmaat.attention.causal import CausalAstromorphicAttention
from rmaat.attention.reference import _phi


def reference_causal_astromorphic(layer: CausalAstromorphicAttention, x: torch.Tensor,
                                  key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-by-token causal astromorphic attention: x (B, N, D) -> (B, N, D) in float64, no residual.

    Padded query positions give zero output, as in the fast layer.
    """
    cfg = layer.cfg
    x = x.to(torch.float64)
    b_size, n, d = x.shape
    n_heads, dh = cfg.n_heads, cfg.d_head
    real = (torch.ones(b_size, n) if key_mask is None else key_mask).to(torch.float64)  # (B, N) 1 = real
    # the projections act on each token alone, so computing them for all tokens at once is causal
    qkv = F.linear(x, layer.qkv.weight.to(torch.float64), layer.qkv.bias.to(torch.float64))
    q, k, v = qkv.view(b_size, n, 3, n_heads, dh).unbind(2)              # 3 × (B, N, H, dh)
    pos = torch.arange(n, dtype=torch.float64)
    rows = []
    for b in range(b_size):
        heads = []
        for h in range(n_heads):
            phi_r = torch.zeros(n, dh, dtype=torch.float64)              # (N, dh) phi(r_j)
            if cfg.use_astro:
                w_r = layer.w_r[h, :, :n].T.to(torch.float64) * real[b, :, None]  # (N, dh) rows W_R[l], real l
                # r_j = sum over rows l <= j (the slice :j+1) of exp(-(j - l) scale) W_R[l]
                phi_r = torch.stack([_phi(torch.exp(-(j - pos[:j + 1]) * cfg.decay_scale) @ w_r[:j + 1])
                                     for j in range(n)])
            phi_k = _phi(k[b, :, h]) * real[b, :, None]                  # (N, dh) phi(k_j), 0 if padded
            v_bh = v[b, :, h] * real[b, :, None]                         # (N, dh) v_j, 0 if padded
            key = phi_k + phi_r if cfg.use_astro else phi_k              # (N, dh) keys of S
            out = []
            for i in range(n):
                if real[b, i] == 0:                                      # padded query: output 0
                    out.append(torch.zeros(dh, dtype=torch.float64))
                    continue
                # keys j <= i: the slice :i+1
                s_i = key[:i + 1].T @ v_bh[:i + 1] / cfg.m               # (dh, dh) sum_j key_j v_j^T
                z_i = phi_k[:i + 1].sum(dim=0)                           # (dh,)
                phi_q = _phi(q[b, i, h])
                c_i = torch.dot(phi_q, z_i ** cfg.alpha)
                out.append((phi_q @ s_i) / (c_i + cfg.eps))
            heads.append(torch.stack(out))                               # (N, dh)
        y = torch.cat(heads, dim=-1)                                     # (N, D) heads merged
        y = F.linear(y, layer.out.weight.to(torch.float64), layer.out.bias.to(torch.float64))
        rows.append(y * real[b, :, None])
    return torch.stack(rows)                                             # (B, N, D)
