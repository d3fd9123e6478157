"""Configuration of the causal byte LM (`rmaat.lm.model.CausalLM`): presets and `LMConfig`.

The four presets share every size and differ only in mechanism (see `rmaat.lm.model`):
rmaat (causal astromorphic attention + memory + retention factor), rmt (softmax + memory),
rlt (linear + memory), transformer (one causal softmax call, no memory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rmaat.errors import ConfigError
from rmaat.memory import resolve_memory_rule

#: preset -> (attention kind, recurrent, default retention variant)
LM_PRESETS: dict[str, tuple[str, bool, str]] = {
    "rmaat": ("astro", True, "paper"),
    "rmt": ("softmax", True, "none"),
    "rlt": ("linear", True, "none"),
    "transformer": ("softmax", False, "none"),
}
RETENTION_VARIANTS = ("paper", "streaming", "none")


@dataclass
class LMConfig:
    """Sizes and mechanism of a `CausalLM`.

    preset: "rmaat" | "rmt" | "rlt" | "transformer" (attention kind and recurrence, see `rmaat.lm.model`).
    retention: "paper" (RF(t, T), sums to 1 over the T segments of the input), "streaming"
        (EXTENSION: r_t = dp_t / dp_1, independent of T), "none", or None for the preset's
        default (paper for rmaat, none otherwise).
    memory_rule: how the carried memory is formed (`rmaat.memory`): "paper", "overwrite",
        "consolidate" (beyond the paper), or None for what `retention` means (paper with
        factors, overwrite with retention "none").
    segment_len: N_seg bytes per segment (recurrent presets). n_mem: M memory tokens.
    max_len: the longest input of the non-recurrent transformer (its position table).
    norm: "pre" (default) or "post" (rmaat.block.EncoderBlock's two orders).
    astro_*: options of the causal astromorphic attention (rmaat.attention.AttentionConfig).
    """

    preset: str = "rmaat"
    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    segment_len: int = 128
    n_mem: int = 4
    max_len: int = 1024
    dropout: float = 0.1
    retention: str | None = None
    memory_rule: str | None = None
    norm: str = "pre"
    astro_alpha: float = 0.25
    astro_m_scale: float | None = None
    astro_decay_scale: float = 2.0
    astro_use_astro: bool = True

    def __post_init__(self) -> None:
        if self.preset not in LM_PRESETS:
            raise ConfigError(f"unknown LM preset {self.preset!r}; choose one of {', '.join(LM_PRESETS)}")
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "segment_len", "n_mem", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.retention is not None and self.retention not in RETENTION_VARIANTS:
            raise ConfigError(f"retention={self.retention!r} is not one of {', '.join(RETENTION_VARIANTS)}")
        if not self.recurrent and self.retention not in (None, "none"):
            raise ConfigError("the transformer preset has no memory to retain; set retention=None")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"norm={self.norm!r} is not one of pre, post")
        if not self.recurrent and self.memory_rule is not None:
            raise ConfigError("the transformer preset has no memory to update; set memory_rule=None")
        self.carry_rule  # noqa: B018  (validates memory_rule against retention)

    @property
    def attention(self) -> str:
        return LM_PRESETS[self.preset][0]

    @property
    def recurrent(self) -> bool:
        return LM_PRESETS[self.preset][1]

    @property
    def retention_variant(self) -> str:
        """The variant in use: `retention`, or the preset's default when None."""
        return LM_PRESETS[self.preset][2] if self.retention is None else self.retention

    @property
    def carry_rule(self) -> str | None:
        """The memory-update rule in use (`memory_rule` resolved), None for the transformer."""
        if not self.recurrent:
            return None
        return resolve_memory_rule(self.memory_rule, self.retention_variant != "none",
                                   factor_option="retention='none'")

    @property
    def call_len(self) -> int:
        """The largest N of one attention call: N_seg + 2M, or max_len without recurrence."""
        return self.segment_len + 2 * self.n_mem if self.recurrent else self.max_len

    def replace(self, **overrides) -> "LMConfig":
        return dataclasses.replace(self, **overrides)


def lm_config(preset: str = "rmaat", **overrides) -> LMConfig:
    """The LMConfig of a preset with field overrides (sizes are shared by all presets)."""
    return LMConfig(preset=preset, **overrides)
