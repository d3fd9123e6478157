"""Plain linear attention (Katharopoulos et al. 2020) and the projections every kind shares.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j) + eps),   phi = elu + 1

Non-causal, cost O(N · d_k · d_v) per head. It is the RLT baseline and the test oracle of the
astromorphic layer (alpha = 1, no H_astro, m = 1 reduce that layer to exactly this).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmaat.attention.config import AttentionConfig


class _Phi(torch.autograd.Function):
    """phi(x) = elu(x) + 1 with a cheap backward: phi'(x) = min(phi(x), 1).

    For x > 0, phi = x + 1 > 1 and phi' = 1; for x <= 0, phi = exp(x) <= 1 and phi' = exp(x).
    Saving only the output and using this identity avoids ``elu_backward``, which on CPU
    recomputes the exponential and was the single most expensive op of the layer's step.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = F.elu(x).add_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return y.clamp(max=1.0).mul_(grad)


def phi(x: torch.Tensor) -> torch.Tensor:
    """The positive feature map phi(x) = elu(x) + 1 (> 0 wherever exp(x) does not underflow)."""
    return _Phi.apply(x)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: normalisers are summed in float32 even when activations are bf16/fp16."""
    return torch.promote_types(dtype, torch.float32)


def feature_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """phi(q), phi(k), v in the accumulation dtype, with padded keys zeroed in phi(k) AND v (so
    they leave every sum: numerator and normaliser). Call inside autocast(enabled=False).

    q, k, v: (B, H, N, d); key_mask: (B, N), True = real token, or None."""
    acc = accumulation_dtype(q.dtype)
    phi_q, phi_k, v = phi(q.to(acc)), phi(k.to(acc)), v.to(acc)  # (B, H, N, d)
    if key_mask is not None:
        keep = key_mask[:, None, :, None].to(acc)                 # (B, 1, N, 1)
        phi_k, v = phi_k * keep, v * keep
    return phi_q, phi_k, v


class MultiHeadProjections(nn.Module):
    """Q/K/V and output projections, head split/merge and padding handling shared by all kinds.

    Subclasses define ``attend(q, k, v, key_mask)`` on per-head tensors (B, H, N, d) returning
    (B, H, N, d); ``key_mask`` is (B, N) bool or None. ``forward`` projects, attends, merges
    heads, applies the output projection and dropout, and sets the output at padded query
    positions to exactly zero (so the block's residual leaves padded positions as they were).
    No residual is added. Pass ``key_mask=None`` when nothing is padded: a mask costs extra
    work (the astromorphic layer then scans W_R per batch row; softmax attention leaves the
    mask-free fused kernels), and the layers never inspect its values on the host.
    """

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        self.d_head = cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), key_mask (B, N) bool (True = real token) or None -> (B, N, D)."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"expected x of shape (B, N, {self.cfg.d_model}), got {tuple(x.shape)}")
        b, n, d = x.shape
        if key_mask is not None:
            if key_mask.shape != (b, n):
                raise ValueError(f"key_mask must have shape {(b, n)}, got {tuple(key_mask.shape)}")
            key_mask = key_mask.to(device=x.device, dtype=torch.bool)
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, dh)
        y = self.attend(q, k, v, key_mask)                                # (B, H, N, dh)
        y = y.transpose(1, 2).reshape(b, n, d)                            # (B, N, D)
        y = self.dropout(self.out(y.to(q.dtype)))
        if key_mask is not None:
            y = y * key_mask.unsqueeze(-1).to(y.dtype)
        return y


class LinearAttention(MultiHeadProjections):
    """Katharopoulos linear attention with phi = elu + 1; padded keys excluded everywhere."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        # the kernel in float32 (or wider), autocast or not: sums over N tokens overflow fp16
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k, v = feature_maps(q, k, v, key_mask)            # (B, H, N, dh)
            kv = torch.einsum("bhnk,bhnv->bhkv", phi_k, v)                # (B, H, dh, dh)
            k_sum = phi_k.sum(dim=2)                                      # (B, H, dh)
            den = torch.einsum("bhnk,bhk->bhn", phi_q, k_sum)             # (B, H, N)
            num = torch.einsum("bhnk,bhkv->bhnv", phi_q, kv)              # (B, H, N, dh)
            y = num * (1.0 / (den + self.cfg.eps)).unsqueeze(-1)          # (B, H, N, dh)
        return y
