"""Input embeddings: token/byte or pixel values plus learned or sinusoidal absolute positions.

Shared by both model families (the classifier's `ModelConfig` has every field of
`EmbeddingSizes`; the byte LM passes its own: bytes as tokens, learned positions).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn


class EmbeddingSizes(Protocol):
    """What `InputEmbedding` reads of a model config."""

    embedding: str  # "token" | "pixel"
    vocab_size: int
    pixel_max: float
    positions: str  # "learned" | "sinusoidal"
    d_model: int
    dropout: float


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of Vaswani et al., (n_positions, d_model), float32."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])  # odd d_model: one cos column fewer
    return table.float()


class InputEmbedding(nn.Module):
    """Maps ids (B, n) to vectors (B, n, D): value embedding + position, LayerNorm, dropout.

    Positions count from `offset` inside the call; recurrent models embed each segment with
    offset 0 (every segment is processed alike, as in RMT), non-recurrent ones the whole input.
    The LayerNorm after the sum keeps the input at unit scale whichever value/position scheme is
    chosen (as BERT does), so token and position signals start on an equal footing and the
    memory tokens, which enter next to these vectors, are compared against a known scale.
    """

    def __init__(self, cfg: EmbeddingSizes, n_positions: int):
        super().__init__()
        self.kind = cfg.embedding
        self.pixel_max = float(cfg.pixel_max)
        if cfg.embedding == "token":
            self.value = nn.Embedding(cfg.vocab_size, cfg.d_model)
        else:  # "pixel": one intensity per position, a linear map of id / pixel_max
            self.value = nn.Linear(1, cfg.d_model)
        self.positions = cfg.positions
        if cfg.positions == "learned":
            self.pos = nn.Embedding(n_positions, cfg.d_model)
        else:
            self.register_buffer("pos_table", sinusoidal_table(n_positions, cfg.d_model), persistent=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, n) long -> (B, n, D)."""
        n = ids.shape[1]
        if self.kind == "token":
            x = self.value(ids)  # (B, n, D)
        else:
            w = self.value.weight
            x = self.value((ids.to(w.dtype) / self.pixel_max).unsqueeze(-1))  # (B, n, D)
        if self.positions == "learned":
            x = x + self.pos.weight[:n]
        else:
            x = x + self.pos_table[:n].to(x.dtype)
        return self.drop(self.norm(x))
