"""Model configuration and the five presets (RMAAT and its baselines as settings of one code base).

`ModelConfig` is a plain dataclass; `validate()` turns impossible or contradictory settings into a
one-line `ConfigError` that says how to fix them. `PRESETS` maps the names used on the command line
(`transformer`, `rmt`, `rlt`, `at`, `rmaat`) to configurations that differ only in the mechanism,
never in the sizes, so that parameter counts stay comparable (SPEC §3, "Baselines").

This module imports no torch: the CLI can list presets and validate options cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rmaat.errors import ConfigError

ATTENTION_KINDS = ("astro", "linear", "softmax")
MEM_PLACEMENTS = ("prepend", "append")
READOUTS = ("memory", "mean")
POSITIONS = ("learned", "sinusoidal")
EMBEDDINGS = ("token", "pixel")
NORMS = ("post", "pre")
BACKPROP_MODES = ("bptt", "amrb")


@dataclass
class ModelConfig:
    """Sizes and switches of an `RMAATModel`.

    Sizes
        vocab_size: number of token ids (bytes: 256 plus the data stage's special ids).
        n_classes: classifier outputs.
        d_model, n_heads, n_layers, d_ff: encoder sizes (d_ff is the FFN hidden width).
        dropout: dropout probability (embeddings, attention output, FFN, inside attention).
        seq_len: total input length L (per document for the dual encoder). Shorter inputs are
            right-padded to L; L is cut into `n_segments` contiguous segments of L / n_segments.
        n_segments: T; must be 1 for non-recurrent models, which read the whole input at once.
        n_mem: M memory tokens. Default 1, the official RMAAT code's default
            (`num_memory_tokens: 1`).

    Mechanism
        attention: "astro" (astromorphic, SPEC §3), "linear" (Katharopoulos), "softmax".
        astro_alpha, astro_m_scale, astro_decay_scale, astro_use_astro: options of the
            astromorphic attention, passed through to `rmaat.attention.AttentionConfig`
            (alpha = exponent of g, m_scale = the scaling constant m or None for the attention
            module's own unit-scale default, decay_scale = positional decay scale, 2.0 as in the
            paper's sensitivity study, use_astro = whether the H_astro STP term is used).
        recurrent: segment recurrence with memory tokens (RMT/RLT/RMAAT) or one attention call
            over the whole input (Transformer/AT).
        use_retention: load the retention factors RF(t, T) (RMAAT only); with the default
            `memory_rule` the stored memory is scaled by them.
        memory_rule: how the memory carried into the next segment is formed (`rmaat.memory`):
            "paper" (RF(t, T) * mem'), "overwrite" (mem', RMT's rule), "consolidate" (an
            RF-weighted running mean of the writes; beyond the paper), or None for what
            `use_retention` has always meant: "paper" with factors, "overwrite" without.
        mem_placement [open]: "prepend" (default) puts the memory tokens before the segment's
            tokens, as RMT's encoder does; the memory then sits at the same positions 0..M-1 of
            every attention call whatever the padding, which keeps the astromorphic positional
            term P_ij stable for the memory. "append" puts them after the segment.
        readout [open]: "memory" (default for recurrent models) classifies from the memory-token
            outputs of the last segment (mem'_{T+1}, before RF scaling, averaged over the M
            tokens): the memory is what carries the context of the whole input, and RF only
            concerns what is passed on to a next segment. "mean" averages the outputs of the real
            tokens (of the last segment that has any, for recurrent models; of the whole input for
            non-recurrent ones, which have no memory).
        skip_empty_segments [open]: a sample whose segment t holds only padding keeps its memory
            unchanged (mem_{t+1} = mem_t) instead of re-writing and RF-scaling it. Default True:
            LRA inputs are right-padded to a fixed L, and without the skip a short review's
            prediction would depend on how much padding follows it. (Under `consolidate` the
            skipped segment's factor still counts in rho's running sum: the sum follows the
            segment index, as RF(t, T) does.)
        positions: "learned" or "sinusoidal" absolute positions, counted inside each segment for
            recurrent models (every segment is processed alike), over the whole input otherwise.
            Memory tokens get no position: they are learned states.
        embedding: "token" (nn.Embedding; bytes are tokens) or "pixel" (the id is an 8-bit
            intensity, embedded by a linear map of id / pixel_max).
        norm [open]: "post" (default, as in the predecessor: h = LN(x + attn(x)),
            out = LN(h + FFN(h))) or "pre" (x + attn(LN(x)), with a final LayerNorm).
        dual_encoder: Retrieval; both documents are encoded with shared weights and the
            classifier sees [u, v, u*v, u-v].
        backprop: default training mode of `forward` ("bptt" or "amrb"; AMRB needs recurrence).
    """

    vocab_size: int = 256
    n_classes: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    seq_len: int = 1024
    n_segments: int = 4
    n_mem: int = 1
    attention: str = "astro"
    astro_alpha: float = 0.25
    astro_m_scale: float | None = None
    astro_decay_scale: float = 2.0
    astro_use_astro: bool = True
    recurrent: bool = True
    use_retention: bool = True
    memory_rule: str | None = None
    mem_placement: str = "prepend"
    readout: str = "memory"
    skip_empty_segments: bool = True
    positions: str = "learned"
    embedding: str = "token"
    pixel_max: float = 255.0
    norm: str = "post"
    dual_encoder: bool = False
    backprop: str = "amrb"

    @property
    def segment_len(self) -> int:
        """Tokens per segment, L / T (the whole input for non-recurrent models)."""
        return self.seq_len // self.n_segments

    @property
    def carry_rule(self) -> str | None:
        """The memory-update rule in use (`memory_rule` resolved), None without recurrence."""
        if not self.recurrent:
            return None
        from rmaat.memory import resolve_memory_rule

        return resolve_memory_rule(self.memory_rule, self.use_retention, factor_option="use_retention")

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A validated copy with some fields changed; unknown names raise ConfigError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **overrides).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and logs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys raise ConfigError."""
        return cls().replace(**data)

    def validate(self) -> "ModelConfig":
        """Raise ConfigError for impossible or contradictory settings; return self."""
        for name in ("vocab_size", "n_classes", "d_model", "n_heads", "n_layers", "d_ff", "seq_len",
                     "n_segments", "n_mem"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        choices = {"attention": ATTENTION_KINDS, "mem_placement": MEM_PLACEMENTS, "readout": READOUTS,
                   "positions": POSITIONS, "embedding": EMBEDDINGS, "norm": NORMS,
                   "backprop": BACKPROP_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]
            raise ConfigError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                              f"choose n_heads among {divisors}")
        if self.seq_len % self.n_segments:
            raise ConfigError(
                f"seq_len={self.seq_len} is not divisible into n_segments={self.n_segments} "
                f"(segment length would be {self.seq_len / self.n_segments:.2f}); use a seq_len that "
                f"is a multiple of {self.n_segments}, e.g. {-(-self.seq_len // self.n_segments) * self.n_segments}"
            )
        if not self.recurrent:
            if self.n_segments != 1:
                raise ConfigError(f"n_segments={self.n_segments} needs recurrent=True (a non-recurrent model "
                                  f"reads the whole input in one attention call); set n_segments=1")
            if self.use_retention:
                raise ConfigError("use_retention=True needs recurrent=True (RF scales the memory passed "
                                  "between segments); set use_retention=False")
            if self.readout == "memory":
                raise ConfigError("readout='memory' needs recurrent=True (a non-recurrent model has no "
                                  "memory tokens); set readout='mean'")
            if self.backprop == "amrb":
                raise ConfigError("backprop='amrb' needs recurrent=True (AMRB replays segments); "
                                  "set backprop='bptt'")
            if self.memory_rule is not None:
                raise ConfigError(f"memory_rule={self.memory_rule!r} needs recurrent=True (a non-recurrent "
                                  "model carries no memory); drop memory_rule")
        self.carry_rule  # noqa: B018  (validates memory_rule against use_retention)
        if self.astro_alpha <= 0:
            raise ConfigError(f"astro_alpha must be positive, got {self.astro_alpha}")
        if self.astro_m_scale is not None and self.astro_m_scale <= 0:
            raise ConfigError(f"astro_m_scale must be positive or None, got {self.astro_m_scale}")
        if self.astro_decay_scale <= 0:
            raise ConfigError(f"astro_decay_scale must be positive, got {self.astro_decay_scale}")
        if self.pixel_max <= 0:
            raise ConfigError(f"pixel_max must be positive, got {self.pixel_max}")
        return self


_BASE = ModelConfig()

#: The five models of the paper's comparison, same sizes, different mechanisms.
PRESETS: dict[str, ModelConfig] = {
    # full softmax attention over the whole input, no memory
    "transformer": dataclasses.replace(_BASE, attention="softmax", recurrent=False, n_segments=1,
                                       use_retention=False, readout="mean", backprop="bptt"),
    # RMT: segments + memory tokens + softmax attention, trained with full BPTT
    "rmt": dataclasses.replace(_BASE, attention="softmax", recurrent=True, use_retention=False,
                               backprop="bptt"),
    # RLT: segments + memory + plain linear attention; no RF, no AMRB, no H_astro
    "rlt": dataclasses.replace(_BASE, attention="linear", recurrent=True, use_retention=False,
                               astro_use_astro=False, backprop="bptt"),
    # AT: astromorphic attention over the whole input, no recurrence
    "at": dataclasses.replace(_BASE, attention="astro", recurrent=False, n_segments=1,
                              use_retention=False, readout="mean", backprop="bptt"),
    # RMAAT: astromorphic attention + memory + retention factor + AMRB
    "rmaat": dataclasses.replace(_BASE, attention="astro", recurrent=True, use_retention=True,
                                 backprop="amrb"),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset; unknown names raise ConfigError."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
