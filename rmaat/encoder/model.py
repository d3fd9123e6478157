"""The RMAAT model: segment recurrence with retention-scaled memory tokens (SPEC §3), and its baselines.

A length-L input is cut into T contiguous segments of L/T tokens. M memory tokens, starting from a
learned state mem_1, are concatenated with every segment, so each attention call sees L/T + M
tokens. After segment t the encoder outputs at the memory positions are mem'_{t+1}; the memory
passed on is mem_{t+1} = RF(t, T) * mem'_{t+1} (RF from the retention table, registered as a
buffer so checkpoints carry the factors they were trained with), or another rule of
`rmaat.memory` (`memory_rule`). Non-recurrent presets
(`transformer`, `at`) read the whole input in one attention call.

Training modes (`backprop`): "bptt" keeps every segment's activations for the backward pass;
"amrb" runs each segment under non-reentrant `torch.utils.checkpoint` with the embedding lookup
inside, so that only token ids and memory states survive the forward pass and each segment is
replayed, with its saved RNG state, when the backward pass reaches it (SPEC §4; see rmaat.encoder.amrb).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from rmaat.attention import AttentionConfig, build_attention
from rmaat.block import EncoderBlock
from rmaat.embeddings import InputEmbedding
from rmaat.encoder.config import BACKPROP_MODES, ModelConfig, get_preset
from rmaat.errors import ConfigError, DataError
from rmaat.memory import carried_memory


def attention_config_from(cfg: ModelConfig) -> AttentionConfig:
    """The `rmaat.attention.AttentionConfig` for a model configuration (N = segment + memory)."""
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


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of h (B, n, D) over the real positions of mask (B, n) -> (B, D); zeros where none."""
    if mask is None:
        return h.mean(1)
    w = mask.to(h.dtype).unsqueeze(-1)  # (B, n, 1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class RMAATModel(nn.Module):
    """Encoder classifier; recurrent over segments with memory tokens when `cfg.recurrent`.

    Attributes useful outside:
        cfg: the validated `ModelConfig`.
        mem_init: learned initial memory mem_1, (M, D) (recurrent models only).
        retention_factors: buffer RF(1..T, T), (T,) (only when `cfg.use_retention`).
        last_memory_states: detached memory states [mem_1, ..., mem_{T+1}], each (B, M, D), of
            the last forward pass (first document for the dual encoder; the second document's
            are in `last_memory_states_2`). Empty for non-recurrent models.
    """

    def __init__(self, cfg: ModelConfig, retention_factors: Sequence[float] | np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg.validate()
        d = cfg.d_model
        self.embed = InputEmbedding(cfg, n_positions=cfg.segment_len)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, build_attention(attention_config_from(cfg)))
                                    for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d) if cfg.norm == "pre" else nn.Identity()
        if cfg.recurrent:
            # same scale as the LayerNorm-ed token embeddings it is concatenated with
            self.mem_init = nn.Parameter(torch.randn(cfg.n_mem, d))
        n_features = 4 * d if cfg.dual_encoder else d
        self.head = nn.Sequential(nn.Linear(n_features, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(d, cfg.n_classes))
        if cfg.use_retention:
            rf = _check_retention_factors(retention_factors, cfg.n_segments)
            self.register_buffer("retention_factors", torch.tensor(rf, dtype=torch.float32))
        elif retention_factors is not None:
            raise ConfigError("retention_factors were given but use_retention=False; drop them or "
                              "set use_retention=True")
        else:
            self.retention_factors = None
        self.memory_rule = cfg.carry_rule  # "paper" | "overwrite" | "consolidate" (None: no memory)
        self.last_memory_states: list[torch.Tensor] = []
        self.last_memory_states_2: list[torch.Tensor] = []

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check shapes/ids; right-pad to seq_len. -> ids (B, L) long, mask (B, L) bool or None."""
        cfg = self.cfg
        if input_ids.dim() != 2:
            raise DataError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise DataError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        b, length = input_ids.shape
        if length > cfg.seq_len:
            raise DataError(f"input length {length} exceeds seq_len={cfg.seq_len}; truncate the input or "
                            f"build the model with seq_len >= {length}")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise DataError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                                f"shape {tuple(input_ids.shape)}")
            attention_mask = attention_mask.bool()
        if cfg.embedding == "token" and input_ids.numel():
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync
            if lo < 0 or hi >= cfg.vocab_size:
                raise DataError(f"token id {hi if hi >= cfg.vocab_size else lo} is outside [0, "
                                f"vocab_size={cfg.vocab_size}); build the model with the data's vocab_size")
        input_ids = input_ids.long()
        if length < cfg.seq_len:
            pad = cfg.seq_len - length
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
            input_ids = nn.functional.pad(input_ids, (0, pad), value=0)
            attention_mask = nn.functional.pad(attention_mask, (0, pad), value=False)
        return input_ids, attention_mask

    def split_segments(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                       ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Prepared (B, L) inputs -> T pairs (ids_t (B, L/T), mask_t (B, L/T) or None)."""
        n = self.cfg.segment_len
        return [(input_ids[:, t * n:(t + 1) * n],
                 None if attention_mask is None else attention_mask[:, t * n:(t + 1) * n])
                for t in range(self.cfg.n_segments)]

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mem_1 expanded to (B, M, D), read-out carrier zeros (B, D))."""
        mem = self.mem_init.unsqueeze(0).expand(batch, -1, -1)  # (B, M, D), a view: grads reach mem_init
        return mem, self.mem_init.new_zeros(batch, self.cfg.d_model)

    # ------------------------------------------------------------------ segments
    def segment_outputs(self, ids_t: torch.Tensor, mask_t: torch.Tensor | None, mem: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment's encoder pass from memory mem_t, before any memory update.

        ids_t (B, n), mask_t (B, n) bool or None, mem (B, M, D) -> (the write mem'_{t+1}
        (B, M, D), the segment's read-out features (B, D)). A view of the encoder output: call
        `memory_update` (or `segment_step`) for the memory that is carried on.
        """
        cfg = self.cfg
        m = cfg.n_mem
        x = self.embed(ids_t)  # (B, n, D)
        b, n, _ = x.shape
        mem_in = mem.to(x.dtype)
        key_mask = None
        if mask_t is not None:
            mem_real = torch.ones(b, m, dtype=torch.bool, device=mask_t.device)  # memory is always real
        if cfg.mem_placement == "prepend":
            h = torch.cat([mem_in, x], dim=1)  # (B, M + n, D)
            if mask_t is not None:
                key_mask = torch.cat([mem_real, mask_t], dim=1)
        else:
            h = torch.cat([x, mem_in], dim=1)  # (B, n + M, D)
            if mask_t is not None:
                key_mask = torch.cat([mask_t, mem_real], dim=1)
        for block in self.blocks:
            h = block(h, key_mask)
        h = self.final_norm(h)
        if cfg.mem_placement == "prepend":
            mem_raw, tokens = h[:, :m], h[:, m:]  # mem'_{t+1} (B, M, D), (B, n, D)
        else:
            mem_raw, tokens = h[:, n:], h[:, :n]
        pooled = mem_raw.mean(1) if cfg.readout == "memory" else masked_mean(tokens, mask_t)  # (B, D)
        return mem_raw, pooled

    def memory_update(self, t: int, mem: torch.Tensor, write: torch.Tensor) -> torch.Tensor:
        """mem_{t+1} (B, M, D) from mem_t and the write mem'_{t+1} by the config's memory rule
        (`rmaat.memory`; RF(t, T) from the `retention_factors` buffer)."""
        rf = self.retention_factors
        if rf is None:
            return carried_memory(self.memory_rule, mem, write)
        earlier = rf[:t].sum() if self.memory_rule == "consolidate" else 0.0
        return carried_memory(self.memory_rule, mem, write, rf[t], earlier)

    def segment_step(self, t: int, ids_t: torch.Tensor, mask_t: torch.Tensor | None,
                     mem: torch.Tensor, read: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Process segment t (0-based) from memory mem_t.

        ids_t (B, n), mask_t (B, n) bool or None, mem (B, M, D), read (B, D): the read-out
        features carried from the last non-empty segment. Returns (mem_{t+1} (B, M, D),
        read (B, D)). Everything a segment computes happens here, embedding lookup included,
        so that a checkpoint of this function keeps only ids, mask and the two small states.
        """
        mem_raw, pooled = self.segment_outputs(ids_t, mask_t, mem)
        mem_next = self.memory_update(t, mem, mem_raw)
        if self.cfg.skip_empty_segments and mask_t is not None:
            has_tokens = mask_t.any(dim=1)  # (B,)
            mem_next = torch.where(has_tokens[:, None, None], mem_next, mem)
            pooled = torch.where(has_tokens[:, None], pooled, read)
        return mem_next, pooled

    # ------------------------------------------------------------------ encoders
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               backprop: str | None = None, replay_last: bool = False
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One document -> (features (B, D), detached memory states [mem_1..mem_{T+1}]).

        Under AMRB the last segment is not checkpointed unless `replay_last`: the backward pass
        starts there, so its activations would be rebuilt at once; keeping them saves one
        segment's recomputation and costs no peak memory. The dual encoder sets `replay_last`
        for its first document, whose last segment would otherwise stay alive while the second
        document is encoded."""
        mode = self.resolve_backprop(backprop)
        ids, mask = self.prepare_inputs(input_ids, attention_mask)
        if not self.cfg.recurrent:
            h = self.embed(ids)  # (B, L, D)
            for block in self.blocks:
                h = block(h, mask)
            return masked_mean(self.final_norm(h), mask), []
        mem, read = self.initial_state(ids.shape[0])
        states = [mem.detach()]
        replay = mode == "amrb" and torch.is_grad_enabled()
        last = self.cfg.n_segments - 1
        for t, (ids_t, mask_t) in enumerate(self.split_segments(ids, mask)):
            if replay and (t < last or replay_last):
                mem, read = checkpoint(self.segment_step, t, ids_t, mask_t, mem, read,
                                       use_reentrant=False, preserve_rng_state=True)
            else:
                mem, read = self.segment_step(t, ids_t, mask_t, mem, read)
            states.append(mem.detach())
        return read, states

    def classify(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, D) [and the second document's (B, D)] -> logits (B, C)."""
        if self.cfg.dual_encoder:
            if v is None:
                raise DataError("this is a dual-encoder model: pass the second document as input_ids_2")
            u = torch.cat([u, v, u * v, u - v], dim=-1)  # (B, 4D)
        return self.head(u)

    def resolve_backprop(self, backprop: str | None) -> str:
        """The training mode to use: `backprop`, or the config's default when None."""
        mode = self.cfg.backprop if backprop is None else backprop
        if mode not in BACKPROP_MODES:
            raise ConfigError(f"backprop={mode!r} is not one of {', '.join(BACKPROP_MODES)}")
        if mode == "amrb" and not self.cfg.recurrent:
            raise ConfigError("backprop='amrb' needs a recurrent model (rmt, rlt, rmaat); use 'bptt'")
        return mode

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                input_ids_2: torch.Tensor | None = None, attention_mask_2: torch.Tensor | None = None, *,
                backprop: str | None = None) -> torch.Tensor:
        """input_ids (B, L') with L' <= seq_len (right-padded to seq_len), attention_mask (B, L')
        True = real token or None -> logits (B, n_classes). `backprop` ("bptt" | "amrb", default
        the config's) only matters when gradients are recorded."""
        if input_ids_2 is not None and not self.cfg.dual_encoder:
            raise DataError("input_ids_2 was given but the model is not a dual encoder; build it with "
                            "dual_encoder=True")
        u, self.last_memory_states = self.encode(input_ids, attention_mask, backprop=backprop,
                                                 replay_last=self.cfg.dual_encoder)
        v = None
        if self.cfg.dual_encoder:
            if input_ids_2 is None:
                raise DataError("this is a dual-encoder model: pass the second document as input_ids_2")
            v, self.last_memory_states_2 = self.encode(input_ids_2, attention_mask_2, backprop=backprop)
        return self.classify(u, v)

    def num_parameters(self, exclude_positional: bool = False) -> int:
        """Trainable parameters. With `exclude_positional`, leave out the per-position tables whose
        size follows the attention span (L for non-recurrent models, L/T + M for recurrent ones):
        the learned position embedding and the astromorphic layers' W_R (`*.w_r`)."""
        def positional(name: str) -> bool:
            return name == "embed.pos.weight" or name.endswith(".w_r")

        return sum(p.numel() for name, p in self.named_parameters()
                   if p.requires_grad and not (exclude_positional and positional(name)))


def _check_retention_factors(factors, n_segments: int) -> np.ndarray:
    """Validate RF(1..T, T): shape (T,), finite, non-negative."""
    if factors is None:
        raise ConfigError("use_retention=True needs retention factors; pass retention_factors or build the "
                          "model with build_model(), which loads them from the retention table")
    rf = np.asarray(factors, dtype=np.float64)
    if rf.shape != (n_segments,):
        raise ConfigError(f"retention_factors has shape {rf.shape} but n_segments={n_segments}; load them with "
                          f"retention.load_retention_factors({n_segments})")
    if not np.all(np.isfinite(rf)) or np.any(rf < 0):
        raise ConfigError("retention_factors must be finite and non-negative; regenerate the table with "
                          "`pipeline simulate`")
    return rf


def build_model(preset: str | ModelConfig = "rmaat", retention_factors: Sequence[float] | np.ndarray | None = None,
                **overrides) -> RMAATModel:
    """Build a model from a preset name (`transformer`, `rmt`, `rlt`, `at`, `rmaat`) or a
    ModelConfig, with field overrides (e.g. `seq_len=4096, n_segments=8`). When the
    configuration uses retention and no factors are given, RF(·, T) is read from the retention
    table for T = n_segments (`retention.load_retention_factors`)."""
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    cfg = cfg.replace(**overrides)
    if cfg.use_retention and retention_factors is None:
        from retention import load_retention_factors

        retention_factors = load_retention_factors(cfg.n_segments)
    return RMAATModel(cfg, retention_factors)
