"""One encoder block: attention + FFN, residuals, LayerNorm (post-norm by default).

Shared by both model families: the classifier (`rmaat.encoder`) gives each block its
bidirectional attention layer, the byte LM (`rmaat.lm`) a causal one; the block only needs the
sizes of `BlockSizes`, which both families' configs have.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn


class BlockSizes(Protocol):
    """What a block reads of a model config (`ModelConfig` and `LMConfig` both have it)."""

    d_model: int
    d_ff: int
    dropout: float
    norm: str  # "post" | "pre"


class FeedForward(nn.Module):
    """Position-wise MLP D -> d_ff -> D with GELU."""

    def __init__(self, cfg: BlockSizes):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Encoder block.

    post-norm (default, the predecessor's order; SPEC §3 "Block"):
        h = LN1(x + drop(attn(x)));  out = LN2(h + drop(FFN(h)))
    pre-norm (option; trains more easily when deep, needs a final LayerNorm in the model):
        h = x + drop(attn(LN1(x)));  out = h + drop(FFN(LN2(h)))
    The attention module ``attn`` (bidirectional or causal, built by the model) returns its
    output without the residual (architecture Contract 3): ``attn(x, key_mask) -> (B, N, D)``.
    """

    def __init__(self, cfg: BlockSizes, attn: nn.Module):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = attn
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), key_mask (B, N) bool (True = real) or None -> (B, N, D)."""
        if self.pre_norm:
            h = x + self.drop(self.attn(self.ln1(x), key_mask))
            return h + self.drop(self.ffn(self.ln2(h)))
        h = self.ln1(x + self.drop(self.attn(x, key_mask)))
        return self.ln2(h + self.drop(self.ffn(h)))
