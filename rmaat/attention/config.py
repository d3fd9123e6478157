"""Configuration of one multi-head attention layer.

This module imports no torch and no attention layer, so ``AttentionConfig`` can be created
and validated cheaply (e.g. by the CLI before any model is built), and every layer can
import it without a circle. ``rmaat.attention.factory.build_attention`` builds the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rmaat.errors import ConfigError

KINDS = ("astro", "linear", "softmax")


@dataclass
class AttentionConfig:
    """Hyper-parameters of one attention layer (SPEC §3).

    kind:         "astro" (astromorphic, RMAAT), "linear" (Katharopoulos) or "softmax" (full).
    d_model:      model width D; split into ``n_heads`` heads of size d_k = d_v = D / n_heads.
    n_heads:      number of heads.
    seq_len:      the largest N one call may see, memory tokens included. It sizes the
                  astrocyte projection W_R (seq_len rows per head) and the default ``m``.
    alpha:        exponent of the presynaptic state g = (sum_t phi(k_t)) ** alpha (astro only);
                  0.25 as in the predecessor paper.
    m_scale:      the Hebbian scaling constant m of H = (1/m) phi(K)^T V (astro only). ``None``
                  (default) picks m = seq_len ** (1 - alpha): the numerator phi(Q) H grows like
                  N |v| / m while the normaliser C = phi(Q) g^T grows like N ** alpha, so this m
                  gives an output of unit scale at N = seq_len. The predecessor's m = 100·d..500·d
                  shrinks the attention term far below the residual +X, and the layer silently
                  does nothing (SPEC §3); set ``m_scale`` only to reproduce such settings.
    decay_scale:  ``scale`` of the positional decay P_ij = exp(-|i-j| * scale); 2.0 was robust
                  across tasks in the paper's sweep over {1, 2, 5, 10}. Must be >= 0.
    use_astro:    include the astrocyte (STP) positional term H_astro = (1/m) phi(R)^T V.
    sigmoid_h:    [open] read through sigmoid(H_neuron + H_astro) instead of H. Default off: the
                  predecessor writes the sigmoid in one equation but not in its pseudo-code;
                  with it every read weight lies in (0, 1), so the sign and magnitude of the
                  values are lost, the output is no longer a normalised sum of values (C no
                  longer normalises it) and the exact linear-attention limit (alpha = 1,
                  no H_astro, m = 1) disappears.
    dropout:      dropout on the layer output (after the output projection), for every kind.
                  Softmax attention applies no extra dropout on its attention weights, so the
                  three kinds stay comparable.
    eps:          added to the normaliser C before dividing (no division by zero).
    """

    kind: str = "astro"
    d_model: int = 128
    n_heads: int = 4
    seq_len: int = 1024
    alpha: float = 0.25
    m_scale: float | None = None
    decay_scale: float = 2.0
    use_astro: bool = True
    sigmoid_h: bool = False
    dropout: float = 0.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown attention kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} must be a positive multiple of n_heads={self.n_heads}; "
                "change one of them")
        if self.seq_len <= 0:
            raise ConfigError(f"seq_len={self.seq_len} must be positive (segment length + memory tokens)")
        if not (0.0 < self.alpha <= 1.0):
            raise ConfigError(f"alpha={self.alpha} must lie in (0, 1]; the paper uses 0.25")
        if self.m_scale is not None and not (self.m_scale > 0 and math.isfinite(self.m_scale)):
            raise ConfigError(f"m_scale={self.m_scale} must be a positive finite number, or None for the default")
        if not (self.decay_scale >= 0 and math.isfinite(self.decay_scale)):
            raise ConfigError(f"decay_scale={self.decay_scale} must be a finite number >= 0")
        if not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout={self.dropout} must lie in [0, 1)")
        if not (self.eps > 0):
            raise ConfigError(f"eps={self.eps} must be positive (it keeps the division by C finite)")

    @property
    def d_head(self) -> int:
        """Per-head width d_k = d_v."""
        return self.d_model // self.n_heads

    @property
    def m(self) -> float:
        """The scaling constant m actually used (see ``m_scale``)."""
        if self.m_scale is not None:
            return float(self.m_scale)
        return float(self.seq_len) ** (1.0 - self.alpha)
