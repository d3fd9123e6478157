"""One encoder block: attention + FFN, residuals, LayerNorm (post-norm by default)."""

from __future__ import annotations

import torch
import torch.nn as nn

from rmaat.config import ModelConfig


def attention_config_from(cfg: ModelConfig):
    """The `rmaat.attention.AttentionConfig` for a model configuration (N = segment + memory)."""
    from rmaat.attention import AttentionConfig

    n_mem = cfg.n_mem if cfg.recurrent else 0
    return AttentionConfig(
        kind=cfg.attention,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        seq_len=cfg.segment_len + n_mem,  # the largest N of one attention call
        dropout=0.0,  # the block drops the attention output itself; no second dropout inside
        alpha=cfg.astro_alpha,
        m_scale=cfg.astro_m_scale,
        decay_scale=cfg.astro_decay_scale,
        use_astro=cfg.astro_use_astro,
    )


class FeedForward(nn.Module):
    """Position-wise MLP D -> d_ff -> D with GELU."""

    def __init__(self, cfg: ModelConfig):
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
    The attention module returns its output without the residual (architecture Contract 3).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from rmaat.attention import build_attention

        self.pre_norm = cfg.norm == "pre"
        self.attn = build_attention(attention_config_from(cfg))
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
