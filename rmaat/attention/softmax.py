"""Full softmax attention (the Transformer and RMT baselines) via ``F.scaled_dot_product_attention``.

O(N²) time; PyTorch picks a fused kernel (flash attention on CPU and CUDA where it applies),
so memory stays O(N) without an explicit N × N matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmaat.attention.linear import MultiHeadProjections


class SoftmaxAttention(MultiHeadProjections):
    """Multi-head softmax attention, non-causal, with a key padding mask."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = None
        if key_mask is not None:
            # a row with no real key would be a softmax over nothing; let it attend everywhere
            # (its queries are padded too, and the caller zeroes their outputs)
            has_real = key_mask.any(dim=1, keepdim=True)                   # (B, 1)
            attn_mask = (key_mask | ~has_real)[:, None, None, :]          # (B, 1, 1, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, dh)
