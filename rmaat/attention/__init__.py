"""Attention layers of RMAAT: astromorphic (RMAAT), linear (Katharopoulos) and softmax.

Build one with ``build_attention(AttentionConfig(kind=...))`` (Contract 3 in
docs/architecture.md). Importing this package does not import torch: the names below are
loaded on first use.
"""

from __future__ import annotations

from rmaat.exports import lazy_exports

_EXPORTS = {
    "AttentionConfig": "rmaat.attention.config",
    "build_attention": "rmaat.attention.factory",
    "AstromorphicAttention": "rmaat.attention.astromorphic",
    "LinearAttention": "rmaat.attention.linear",
    "SoftmaxAttention": "rmaat.attention.softmax",
    "decay_apply": "rmaat.attention.positional",
    "decay_matrix": "rmaat.attention.positional",
    "CausalAstromorphicAttention": "rmaat.attention.causal",
    "CausalLinearAttention": "rmaat.attention.causal",
    "CausalSoftmaxAttention": "rmaat.attention.causal",
    "CausalState": "rmaat.attention.causal",
    "build_causal_attention": "rmaat.attention.causal",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
