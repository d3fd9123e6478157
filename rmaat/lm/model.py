"""Causal byte-level language model with segment recurrence (SPEC §8, the paper's open question 1).

A byte sequence idx (B, L) is cut into T = ceil(L / N_seg) contiguous segments; the last one may
be shorter. Segment t is processed by ONE causal attention call per layer over

    [ read memory (M) | the segment's tokens (n <= N_seg) | write memory (M) ]     N = n + 2M

as in RMT's decoder (Bulatov et al. 2022): both memory blocks get the same input, mem_t; the
outputs at the write positions are mem'_{t+1}, and the memory passed on is

    mem_{t+1} = RF(t, T) * mem'_{t+1}     (paper variant; RF from the retention table), or
    mem_{t+1} = r_t * mem'_{t+1}          (streaming EXTENSION, r_t = dp_t / dp_1, needs no T), or
    mem_{t+1} = mem'_{t+1}                (rmt, rlt: no retention).

Causality. Every layer is causal over the whole call (j <= i), so with this order
  * read-memory tokens see only read memory (among themselves causally, as in RMT);
  * segment token i sees the read memory and the segment's tokens j <= i: its prediction of
    byte i+1 depends on bytes <= i of this segment and, through mem_t, on earlier segments only;
  * write-memory tokens see everything of the segment (read memory, all tokens, earlier write
    tokens). No segment token sees them (they come last), and their output feeds only segment
    t+1, whose bytes all lie after every byte they saw. No prediction ever sees its own future;
    tests/test_lm.py checks it by perturbing one byte and comparing all logits before it.
Partial last segment: its write memory simply follows its n < N_seg tokens (no padding; every
row of a batch has the same length, so no key mask is ever needed).

Positions: bytes carry learned positions 0..n-1 inside their segment (every segment is embedded
alike, as in RMT; rmaat.embeddings.InputEmbedding, with its LayerNorm so that the unit-scale memory
tokens enter next to unit-scale bytes). Memory tokens get no position embedding; the causal
astromorphic layer still gives each call position its own positional key (W_R row), so a partial
segment's write memory uses rows n+M.. rather than N_seg+M.. (it only matters when that memory
is carried on, which training never does: the last write memory has no next segment).

Presets (same sizes; they differ only in mechanism):
  rmaat        causal astromorphic attention + memory + retention factor (paper RF by default)
  rmt          causal softmax attention + memory, no RF
  rlt          causal linear (Katharopoulos) attention + memory, no RF
  transformer  causal softmax attention over the whole input in one call, no memory, no
               recurrence; needs L <= max_len (learned positions 0..max_len-1).

Blocks are pre-norm (nanoGPT style, SPEC §3 allows it when documented) with a final LayerNorm;
the output head is a separate Linear (not tied to the byte embedding, whose LayerNorm-ed sum with
the position table makes tying awkward). The loss is next-byte cross-entropy averaged over every
predicted byte of the whole input (all segments); bits per byte = loss / ln 2.

Training: ``model(idx, targets)`` builds the full graph (BPTT). rmaat.lm.amrb holds AMRB with a
loss on every segment (hand-written replay and per-segment checkpointing).

Shapes: B batch, L input length, T segments, n tokens of a segment, M memory tokens, D width,
V vocabulary (256 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rmaat.attention.causal import build_causal_attention
from rmaat.attention.config import AttentionConfig
from rmaat.block import EncoderBlock
from rmaat.embeddings import InputEmbedding
from rmaat.errors import ConfigError, DataError
from rmaat.lm.config import LMConfig, lm_config
from rmaat.memory import carried_memory

IGNORE_INDEX = -100


class CausalBlock(EncoderBlock):
    """rmaat.block.EncoderBlock (same forward, pre/post-norm) with a causal attention layer."""

    def __init__(self, cfg: LMConfig):
        super().__init__(cfg, build_causal_attention(AttentionConfig(
            kind=cfg.attention, d_model=cfg.d_model, n_heads=cfg.n_heads, seq_len=cfg.call_len,
            dropout=0.0,  # the block drops the attention output itself
            alpha=cfg.astro_alpha, m_scale=cfg.astro_m_scale, decay_scale=cfg.astro_decay_scale,
            use_astro=cfg.astro_use_astro)))


RetentionLoader = Callable[[int, str], "np.ndarray"]


def table_retention(total_segments: int, variant: str) -> np.ndarray:
    """Factors for T segments from the retention table (retention.load_retention_factors)."""
    from retention import load_retention_factors

    return load_retention_factors(total_segments, variant=variant)


class CausalLM(nn.Module):
    """Byte LM; see the module docstring. ``forward(idx, targets=None) -> (logits, loss)``.

    retention_loader(T, variant) -> (T,) factors; default: the packaged/user retention table.
    Factors are cached per T. `last_memory_states` holds the detached [mem_1..mem_{T+1}] of the
    last pass (empty for the transformer).
    """

    def __init__(self, cfg: LMConfig, retention_loader: RetentionLoader | None = None):
        super().__init__()
        self.cfg = cfg
        n_positions = cfg.segment_len if cfg.recurrent else cfg.max_len
        emb_cfg = SimpleNamespace(embedding="token", vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                                  positions="learned", pixel_max=255.0, dropout=cfg.dropout)
        self.embed = InputEmbedding(emb_cfg, n_positions=n_positions)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.recurrent:
            self.mem_init = nn.Parameter(torch.randn(cfg.n_mem, cfg.d_model))  # mem_1, unit scale like bytes
        self.retention_loader = retention_loader or table_retention
        self._rf_cache: dict[int, torch.Tensor] = {}
        self.last_memory_states: list[torch.Tensor] = []

    # ------------------------------------------------------------------ pieces
    def check_inputs(self, idx: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Validate idx (B, L) ints in [0, V) and targets (B, L) or None -> idx as long."""
        if idx.dim() != 2 or idx.shape[1] < 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise DataError(f"idx must be integer byte ids of shape (batch, length >= 1), got "
                            f"{tuple(idx.shape)} {idx.dtype}")
        lo, hi = torch.stack(torch.aminmax(idx)).tolist() if idx.numel() else (0, 0)  # one device sync
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise DataError(f"byte ids must lie in [0, {self.cfg.vocab_size})")
        if targets is not None and targets.shape != idx.shape:
            raise DataError(f"targets shape {tuple(targets.shape)} differs from idx shape {tuple(idx.shape)}")
        if not self.cfg.recurrent and idx.shape[1] > self.cfg.max_len:
            raise DataError(f"input length {idx.shape[1]} exceeds max_len={self.cfg.max_len} of the "
                            "transformer; build it with a larger max_len or use a recurrent preset")
        return idx.long()

    def n_segments(self, length: int) -> int:
        """T = ceil(L / N_seg) (1 for the transformer)."""
        return -(-length // self.cfg.segment_len) if self.cfg.recurrent else 1

    def segment_bounds(self, length: int) -> list[tuple[int, int]]:
        """[(start, end)) of each segment; the last one may be partial."""
        if not self.cfg.recurrent:
            return [(0, length)]
        n = self.cfg.segment_len
        return [(s, min(s + n, length)) for s in range(0, length, n)]

    def retention_factors(self, total_segments: int) -> torch.Tensor | None:
        """(T,) float64 CPU tensor of the factors for an input of T segments, or None (no RF)."""
        variant = self.cfg.retention_variant
        if not self.cfg.recurrent or variant == "none":
            return None
        if total_segments not in self._rf_cache:
            rf = np.asarray(self.retention_loader(total_segments, variant), dtype=np.float64)
            if rf.shape != (total_segments,) or not np.all(np.isfinite(rf)) or np.any(rf < 0):
                raise ConfigError(f"retention factors for T={total_segments} must be {total_segments} finite "
                                  f"non-negative numbers, got shape {rf.shape}")
            self._rf_cache[total_segments] = torch.from_numpy(rf)
        return self._rf_cache[total_segments]

    def initial_memory(self, batch: int) -> torch.Tensor:
        """mem_1 (B, M, D): a broadcast view, so gradients reach mem_init."""
        return self.mem_init.unsqueeze(0).expand(batch, -1, -1)

    def segment_logits(self, idx_t: torch.Tensor, mem: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx_t (B, n), mem (B, M, D) or None -> (logits (B, n, V), raw write output mem' (B, M, D) or None)."""
        x = self.embed(idx_t)                                            # (B, n, D)
        n = x.shape[1]
        if mem is not None:
            mem = mem.to(x.dtype)
            x = torch.cat([mem, x, mem], dim=1)                          # (B, M + n + M, D) read | bytes | write
        for block in self.blocks:
            x = block(x)                                                 # causal over the whole call
        x = self.final_norm(x)
        if mem is None:
            return self.head(x), None
        m = mem.shape[1]
        return self.head(x[:, m:m + n]), x[:, m + n:]                    # (B, n, V), (B, M, D)

    def segment_step(self, t: int, idx_t: torch.Tensor, targets_t: torch.Tensor | None,
                     mem: torch.Tensor | None, rf: torch.Tensor | None, n_predicted: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Segment t (0-based) from memory mem_t -> (logits_t (B, n, V), loss_t, mem_{t+1}).

        loss_t = (sum of the segment's next-byte cross-entropies) / n_predicted, so the loss of
        the whole input is sum_t loss_t; None without targets. mem_{t+1} is formed by the config's
        memory rule (`rmaat.memory`: RF[t] * mem'_{t+1} for the paper's), None for the transformer.
        ``rf`` None (no factors) carries every write at weight 1.
        """
        logits, mem_raw = self.segment_logits(idx_t, mem)
        loss = None
        if targets_t is not None:
            lg = logits.to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(lg.flatten(0, 1), targets_t.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum") / max(n_predicted, 1)
        if mem_raw is None:
            return logits, loss, None
        return logits, loss, self.memory_update(t, mem, mem_raw, rf)

    def memory_update(self, t: int, mem: torch.Tensor, write: torch.Tensor, rf: torch.Tensor | None
                      ) -> torch.Tensor:
        """mem_{t+1} (B, M, D) from mem_t and the write mem'_{t+1} under the config's rule;
        ``rf`` (T,) float64 CPU factors, or None: factor 1 for every segment."""
        rule = self.cfg.carry_rule
        if rf is None:
            return carried_memory("overwrite" if rule == "paper" else rule, mem, write, 1.0, float(t))
        earlier = rf[:t].sum().item() if rule == "consolidate" else 0.0
        return carried_memory(rule, mem, write, rf[t].item(), earlier)

    def count_predicted(self, targets: torch.Tensor | None) -> int:
        return 0 if targets is None else int((targets != IGNORE_INDEX).sum())

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, L) bytes, targets (B, L) next bytes (IGNORE_INDEX = skip) or None ->
        (logits (B, L, V), mean cross-entropy over predicted bytes or None). Full graph (BPTT)."""
        idx = self.check_inputs(idx, targets)
        b, length = idx.shape
        bounds = self.segment_bounds(length)
        rf = self.retention_factors(len(bounds))
        n_pred = self.count_predicted(targets)
        mem = self.initial_memory(b) if self.cfg.recurrent else None
        states = [mem.detach()] if mem is not None else []
        logits, losses = [], []
        for t, (s, e) in enumerate(bounds):
            tgt = None if targets is None else targets[:, s:e]
            lg, loss_t, mem = self.segment_step(t, idx[:, s:e], tgt, mem, rf, n_pred)
            logits.append(lg)
            losses.append(loss_t)
            if mem is not None:
                states.append(mem.detach())
        self.last_memory_states = states
        loss = None if targets is None else torch.stack(losses).sum()
        return torch.cat(logits, dim=1), loss

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_lm(preset: str | LMConfig = "rmaat", retention_loader: RetentionLoader | None = None,
             **overrides) -> CausalLM:
    """A CausalLM from a preset name (or an LMConfig) with LMConfig field overrides."""
    cfg = preset.replace(**overrides) if isinstance(preset, LMConfig) else lm_config(preset, **overrides)
    return CausalLM(cfg, retention_loader)


def bits_per_byte(loss: torch.Tensor | float) -> float:
    """Mean next-byte cross-entropy (nats) -> bits per byte."""
    return float(loss) / math.log(2.0)
