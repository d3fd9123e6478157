"""A slow, literal reference of astromorphic attention, for tests only.

It follows the paper's per-token Write and Read equations with Python loops over batch rows,
heads and tokens, in float64, using the parameters of an ``AstromorphicAttention`` module
(so gradients with respect to those parameters can be compared with the fast layer). The
positional keys are summed term by term, r_t = sum_j exp(-|t - j| scale) W_R[j], over real
tokens j (``w_r`` holds W_R transposed, (H, d_k, seq_len)). Dropout is not applied:
compare with the module in eval mode or with dropout = 0.
"""

from __future__ import annotations

import math

import torch

from rmaat.attention.astromorphic import AstromorphicAttention


def _phi(x: torch.Tensor) -> torch.Tensor:
    # elu(x) + 1 written out: x + 1 for x > 0, exp(x) otherwise
    return torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0)))


def reference_astromorphic(layer: AstromorphicAttention, x: torch.Tensor,
                           key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-by-token astromorphic attention: x (B, N, D) -> (B, N, D) in float64, no residual.

    Padded query positions give zero output, as in the fast layer (so a row with no real
    token gives zeros).
    """
    cfg = layer.cfg
    x = x.to(torch.float64)
    b_size, n, d = x.shape
    real = [[True] * n for _ in range(b_size)] if key_mask is None else key_mask.tolist()
    w_qkv = layer.qkv.weight.to(torch.float64)                            # (3D, D)
    b_qkv = layer.qkv.bias.to(torch.float64)                              # (3D,)
    w_o = layer.out.weight.to(torch.float64)
    b_o = layer.out.bias.to(torch.float64)
    dh, m = cfg.d_head, cfg.m
    rows = []
    for b in range(b_size):
        tokens: list[list[torch.Tensor]] = [[] for _ in range(n)]   # per query: one output per head
        for h in range(cfg.n_heads):
            q_rows = slice(h * dh, (h + 1) * dh)
            k_rows = slice(d + h * dh, d + (h + 1) * dh)
            v_rows = slice(2 * d + h * dh, 2 * d + (h + 1) * dh)
            # Write mode: one token at a time
            h_neuron = torch.zeros(dh, dh, dtype=torch.float64)
            h_astro = torch.zeros(dh, dh, dtype=torch.float64)
            k_total = torch.zeros(dh, dtype=torch.float64)
            for t in range(n):
                if not real[b][t]:
                    continue
                k_t = w_qkv[k_rows] @ x[b, t] + b_qkv[k_rows]
                v_t = w_qkv[v_rows] @ x[b, t] + b_qkv[v_rows]
                h_neuron = h_neuron + torch.outer(_phi(k_t), v_t) / m
                k_total = k_total + _phi(k_t)
                if cfg.use_astro:
                    r_t = torch.zeros(dh, dtype=torch.float64)
                    for j in range(n):
                        if real[b][j]:
                            w_j = layer.w_r[h, :, j].to(torch.float64)     # row j of W_R
                            r_t = r_t + math.exp(-abs(t - j) * cfg.decay_scale) * w_j
                    h_astro = h_astro + torch.outer(_phi(r_t), v_t) / m
            g = k_total ** cfg.alpha
            h_read = h_neuron + h_astro
            if cfg.sigmoid_h:
                h_read = torch.sigmoid(h_read)
            # Read mode: one query at a time
            for i in range(n):
                if not real[b][i]:
                    tokens[i].append(torch.zeros(dh, dtype=torch.float64))
                    continue
                q_i = w_qkv[q_rows] @ x[b, i] + b_qkv[q_rows]
                c_i = torch.dot(_phi(q_i), g)
                tokens[i].append((_phi(q_i) @ h_read) / (c_i + cfg.eps))
        out_rows = []
        for i in range(n):
            y_i = w_o @ torch.cat(tokens[i]) + b_o
            out_rows.append(y_i if real[b][i] else torch.zeros_like(y_i))
        rows.append(torch.stack(out_rows))
    return torch.stack(rows)
