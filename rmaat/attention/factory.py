"""The attention factory (architecture Contract 3): ``build_attention(AttentionConfig) -> nn.Module``.

It sits above the layers it builds: every layer module imports ``config``, ``config``
imports no layer, and only this module imports all of them, so the imports run one way.
"""

from __future__ import annotations

from torch import nn

from rmaat.attention.astromorphic import AstromorphicAttention
from rmaat.attention.config import AttentionConfig
from rmaat.attention.linear import LinearAttention
from rmaat.attention.softmax import SoftmaxAttention

#: The layer class of each ``AttentionConfig.kind`` (``config.KINDS``).
LAYERS: dict[str, type[nn.Module]] = {
    "astro": AstromorphicAttention,
    "linear": LinearAttention,
    "softmax": SoftmaxAttention,
}


def build_attention(cfg: AttentionConfig) -> nn.Module:
    """Build the attention module for ``cfg.kind`` (Contract 3).

    The module maps ``x`` (B, N, D) and ``key_mask`` (B, N) bool (True = real token) or None
    to (B, N, D): the projected attention output, without the residual. Padded query
    positions get an exact zero output.
    """
    return LAYERS[cfg.kind](cfg)
