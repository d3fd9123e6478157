"""Streaming generation for `rmaat.lm.model.CausalLM`: one byte at a time, memory carried for as long as it runs.

`CausalLM.forward` processes segment t with ONE causal attention call per layer over

    [ read memory mem_t (M) | segment bytes (n <= N_seg) | write memory mem_t (M) ]

and carries mem_{t+1} = factor_t * final_norm(write outputs) (the paper's memory rule; the model's
`memory_rule` decides, see rmaat.memory). Every layer is causal over the
whole call, so the output of call position i at any layer depends only on positions j <= i of
the layer below. Hence the call can be run position by position, all layers at once, with a
per-layer recurrent state holding what positions j < i left behind:

  * astromorphic / linear layers: their RNN form ``init_state`` / ``step`` (S, z, positional
    scan), which equals their ``forward`` at every position;
  * softmax layers: a KV cache of the keys and values of the call so far (`KVCache`); the step
    attends the new query to the cached keys j <= i with SDPA's default scale 1/sqrt(d), which
    is what ``F.scaled_dot_product_attention(is_causal=True)`` computes at row i.

Around the attention the blocks are mirrored from `rmaat.block.EncoderBlock.forward` (pre- or
post-norm); LayerNorm, the FFN and the head act on each position alone, so they need no state.

`StreamingDecoder` runs the calls of consecutive segments this way:

  1. segment start: fresh layer states; the M read-memory tokens (mem_t, no position embedding)
     go through the layers; their outputs are not used (they only fill the states);
  2. each byte i of the segment (embedded with position i) goes through the layers; its
     final-normed output through the head gives the logits of the next byte;
  3. after N_seg bytes (or on `end_segment()` for a partial one) the M write-memory tokens
     (mem_t again) go through the layers; their final-normed outputs are mem'_{t+1} and
     mem_{t+1} = factor(t) * mem'_{t+1}; then step 1 for segment t+1.

Step 3 runs as soon as the N_seg-th byte has been fed, so after feeding L bytes
`memory_states` equals `model.last_memory_states` of ``model(idx[:, :L])`` when N_seg divides
L, and after one more `end_segment()` when it does not (the forward closes a partial last
segment too). The logits equal ``model(idx)[0]`` in eval mode (tests/test_lm_generate.py, float64,
~1e-15): the decoder never applies dropout, whatever ``model.training`` says, and never changes
the model's mode.

factor(t), t the 0-based segment index: the paper's RF(t, T) depends on the total number of
segments T, unknown while streaming, so for ``retention_variant != "none"`` the caller passes a
T-free factor (e.g. the streaming r_t, or the RF of a chosen T). ``factor=None`` means 1.0, and
is only accepted where the model itself uses no factor (rmt, rlt, or retention="none").

The non-recurrent ``transformer`` has no memory and learned positions 0..max_len-1. It runs as
one growing call; when max_len bytes are in the context and another byte comes, the decoder
makes a SLIDING RESTART: it keeps the newest max_len // 2 bytes, re-feeds them from position 0
into fresh KV caches and then feeds the new byte. The logits then equal the forward of that
window (the model has never seen a longer context). Amortised cost: about one extra step per
byte.

Sampling (`generate`, `stream`) uses its own ``torch.Generator`` seeded by ``seed``, never the
global RNG. Shapes: B batch, H heads, d head width, D model width, M memory tokens, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rmaat.attention.causal import CausalAstromorphicAttention, CausalSoftmaxAttention
from rmaat.errors import ConfigError, DataError
from rmaat.lm.model import CausalBlock, CausalLM
from rmaat.memory import carried_memory

Factor = Callable[[int], float]


@dataclass
class KVCache:
    """Keys and values of the current call of one softmax layer (filled in place).

    k, v: (B, H, capacity, d); the first ``pos`` positions are valid.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0


def softmax_step(attn: CausalSoftmaxAttention, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token through a causal softmax layer: x_t (B, D) -> y_t (B, D); appends to ``cache``.

    Projections and head layout as `MultiHeadProjections.forward` (qkv viewed as (3, H, d)),
    attention of the new query over cached keys 0..pos (itself included), output projection.
    Dropout is left out (eval mode; the layer is built with dropout 0 anyway).
    """
    b = x_t.shape[0]
    if cache.pos >= cache.k.shape[2]:
        raise DataError(f"the softmax layer's call is full ({cache.pos} tokens); this is a bug of the caller")
    q, k, v = attn.qkv(x_t).view(b, 3, attn.n_heads, attn.d_head).unbind(1)  # 3 × (B, H, d)
    cache.k[:, :, cache.pos] = k
    cache.v[:, :, cache.pos] = v
    cache.pos += 1
    keys, values = cache.k[:, :, :cache.pos], cache.v[:, :, :cache.pos]      # (B, H, n, d)
    scores = torch.einsum("bhd,bhnd->bhn", q, keys) / math.sqrt(attn.d_head)  # (B, H, n)
    y = torch.einsum("bhn,bhnd->bhd", scores.softmax(dim=-1), values)        # (B, H, d)
    return attn.out(y.reshape(b, -1))                                        # (B, D)


class StreamingDecoder:
    """Feeds a CausalLM one byte at a time; see the module docstring.

    ``feed(byte) -> logits (B, V)`` of the next byte. ``byte``: an int (every row) or a (B,)
    integer tensor. ``memory`` is mem_t of the current segment (B, M, D) (None for the
    transformer); ``memory_states`` lists [mem_1, ..., mem_{t+1}] as `model.last_memory_states`.
    """

    def __init__(self, model: CausalLM, factor: Factor | None = None, batch: int = 1) -> None:
        cfg = model.cfg
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be a positive integer, got {batch!r}")
        if not cfg.recurrent and factor is not None:
            raise ConfigError("the transformer preset has no memory; pass factor=None")
        if cfg.recurrent and factor is None and cfg.retention_variant != "none":
            raise ConfigError(f"retention={cfg.retention_variant!r} needs factor=t -> float (a T-free "
                              "retention factor); the paper RF depends on the unknown total length")
        self.model = model
        self.cfg = cfg
        self.batch = batch
        self.factor: Factor = factor if factor is not None else (lambda t: 1.0)
        p = model.head.weight
        self.dtype, self.device = p.dtype, p.device
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Back to the start: segment 0, memory mem_1 = mem_init, empty context."""
        self.segment = 0                      # t, the 0-based index of the current segment
        self.factor_sum = 0.0                 # factor(0) + ... + factor(t - 1), for memory_rule consolidate
        self.n_bytes = 0                      # bytes fed into the current call (segment or window)
        self.window: list[torch.Tensor] = []  # transformer: the bytes (B,) of the current call
        self.memory: torch.Tensor | None = None
        self.memory_states: list[torch.Tensor] = []
        with torch.no_grad():
            if self.cfg.recurrent:
                self.memory = self.model.initial_memory(self.batch).detach().to(self.dtype).clone()  # (B, M, D)
                self.memory_states.append(self.memory)
            self._start_call()

    def _start_call(self) -> None:
        """Fresh layer states; for a recurrent model, the read-memory tokens go through them."""
        self.n_bytes = 0
        self.states: list = []
        for block in self.model.blocks:
            attn = block.attn
            if isinstance(attn, CausalAstromorphicAttention):  # linear attention included
                self.states.append(attn.init_state(self.batch, device=self.device))
            elif isinstance(attn, CausalSoftmaxAttention):
                shape = (self.batch, attn.n_heads, self.cfg.call_len, attn.d_head)  # (B, H, N, d)
                self.states.append(KVCache(torch.empty(shape, dtype=self.dtype, device=self.device),
                                           torch.empty(shape, dtype=self.dtype, device=self.device)))
            else:
                raise ConfigError(f"no streaming step for attention layer {type(attn).__name__}")
        if self.memory is not None:
            for j in range(self.memory.shape[1]):
                self._through_layers(self.memory[:, j])                  # read memory: outputs unused

    def _attend(self, i: int, block: CausalBlock, x: torch.Tensor) -> torch.Tensor:
        """The attention of layer i at the next position: x (B, D) -> (B, D); advances its state."""
        if isinstance(self.states[i], KVCache):
            return softmax_step(block.attn, x, self.states[i])
        y, self.states[i] = block.attn.step(x, self.states[i])
        return y

    def _through_layers(self, x: torch.Tensor) -> torch.Tensor:
        """One call position through every block (EncoderBlock.forward without dropout) and the
        final norm: x (B, D) -> (B, D)."""
        for i, block in enumerate(self.model.blocks):
            ffn = block.ffn
            if block.pre_norm:
                h = x + self._attend(i, block, block.ln1(x))
                x = h + ffn.fc2(ffn.act(ffn.fc1(block.ln2(h))))
            else:
                h = block.ln1(x + self._attend(i, block, x))
                x = block.ln2(h + ffn.fc2(ffn.act(ffn.fc1(h))))
        return self.model.final_norm(x)

    def _embed(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """ids (B,) -> (B, D): InputEmbedding.forward at one position, without dropout."""
        emb = self.model.embed
        return emb.norm(emb.value(ids) + emb.pos.weight[position])

    def _as_ids(self, byte: int | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(byte, device=self.device)
        if ids.dim() == 0:
            ids = ids.expand(self.batch)
        if ids.shape != (self.batch,) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise DataError(f"feed takes an int or a ({self.batch},) integer tensor, "
                            f"got {tuple(ids.shape)} {ids.dtype}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size:
            raise DataError(f"byte ids must lie in [0, {self.cfg.vocab_size})")
        return ids.long()

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def feed(self, byte: int | torch.Tensor) -> torch.Tensor:
        """Consume one byte per row -> logits (B, V) of the byte that follows it."""
        ids = self._as_ids(byte)                                         # (B,)
        if not self.cfg.recurrent and self.n_bytes == self.cfg.max_len:
            self._slide()
        h = self._through_layers(self._embed(ids, self.n_bytes))         # (B, D)
        self.n_bytes += 1
        if not self.cfg.recurrent:
            self.window.append(ids)
        logits = self.model.head(h)                                      # (B, V)
        if self.cfg.recurrent and self.n_bytes == self.cfg.segment_len:
            self.end_segment()
        return logits

    @torch.no_grad()
    def end_segment(self) -> torch.Tensor | None:
        """Close the current segment now (write pass; also for a partial one) and start the next.

        Returns mem_{t+1} (B, M, D). A no-op returning the current memory when the segment has
        no byte yet (the forward never closes an empty segment), and None for the transformer.
        Bytes fed after closing a partial segment start segment t+1, so from there on the
        decoder no longer matches a forward over the whole byte string (which would have put
        them into segment t); use it to read the final memory, as the forward does.
        """
        if self.memory is None or self.n_bytes == 0:
            return self.memory
        mem = self.memory
        written = torch.stack([self._through_layers(mem[:, j]) for j in range(mem.shape[1])], dim=1)  # (B, M, D)
        f = float(self.factor(self.segment))
        if not math.isfinite(f) or f < 0:
            raise ConfigError(f"factor({self.segment}) = {f!r} must be finite and non-negative")
        self.memory = carried_memory(self.cfg.carry_rule, mem, written, f, self.factor_sum)  # mem_{t+1}
        self.factor_sum += f
        self.memory_states.append(self.memory)
        self.segment += 1
        self._start_call()
        return self.memory

    def _slide(self) -> None:
        """Transformer: keep the newest max_len // 2 bytes and re-feed them from position 0."""
        keep = self.window[len(self.window) - self.cfg.max_len // 2:] if self.cfg.max_len // 2 else []
        self.window = []
        self._start_call()
        for ids in keep:
            self._through_layers(self._embed(ids, self.n_bytes))
            self.n_bytes += 1
            self.window.append(ids)


# ---------------------------------------------------------------------- sampling
def _check_args(model: CausalLM, prompt: bytes, max_bytes: int, temperature: float, top_k: int | None) -> None:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if model.cfg.vocab_size > 256:
        raise ConfigError(f"generation yields bytes; vocab_size={model.cfg.vocab_size} exceeds 256")
    if not isinstance(prompt, (bytes, bytearray)) or len(prompt) == 0:
        raise DataError("prompt must be non-empty bytes (the model predicts only bytes that follow a byte)")
    if max(prompt) >= model.cfg.vocab_size:
        raise DataError(f"prompt byte {max(prompt)} is outside the vocabulary [0, {model.cfg.vocab_size})")


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): argmax for temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k largest logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    lg = logits.double() / temperature                                   # (B, V)
    if top_k is not None and top_k < lg.shape[-1]:
        kth = lg.topk(top_k, dim=-1).values[:, -1:]                      # (B, 1)
        lg = lg.masked_fill(lg < kth, -math.inf)
    return torch.multinomial(lg.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def stream(model: CausalLM, prompt: bytes, max_bytes: int, *, temperature: float = 1.0,
           top_k: int | None = None, seed: int = 0, factor: Factor | None = None) -> Iterator[bytes]:
    """Feed ``prompt``, then yield ``max_bytes`` sampled bytes one at a time (each a length-1
    ``bytes``), carrying memory across segments. Arguments as `generate`; they are checked
    at the call, not at the first ``next``."""
    _check_args(model, prompt, max_bytes, temperature, top_k)
    decoder = StreamingDecoder(model, factor)
    return _stream(decoder, prompt, max_bytes, float(temperature), top_k, seed)


def _stream(decoder: StreamingDecoder, prompt: bytes, max_bytes: int, temperature: float,
            top_k: int | None, seed: int) -> Iterator[bytes]:
    generator = torch.Generator(device=decoder.device).manual_seed(seed)
    for byte in prompt:
        logits = decoder.feed(byte)                                      # (1, V)
    for i in range(max_bytes):
        nxt = int(sample_next(logits, temperature, top_k, generator)[0])
        yield bytes([nxt])
        if i + 1 < max_bytes:
            logits = decoder.feed(nxt)


def generate(model: CausalLM, prompt: bytes, max_bytes: int, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, factor: Factor | None = None) -> bytes:
    """``prompt`` (non-empty) continued by ``max_bytes`` sampled bytes (only the new bytes are returned).

    temperature: 0 = greedy (argmax), else softmax(logits / temperature). top_k: sample among
    the k most likely bytes only (None = all). seed: of the sampler's own torch.Generator.
    factor: t -> memory factor of segment t (see the module docstring; None = 1.0, refused
    when the model's retention variant is not "none").
    """
    return b"".join(stream(model, prompt, max_bytes, temperature=temperature, top_k=top_k,
                           seed=seed, factor=factor))
