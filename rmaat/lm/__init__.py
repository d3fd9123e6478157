"""The causal byte-LM family: segment recurrence with read and write memory (RMT's decoder layout).

    config.py    LMConfig and the four presets (rmaat, rmt, rlt, transformer)
    model.py     CausalLM: one causal call per segment over [read memory | bytes | write memory]
    amrb.py      AMRB with a loss on every segment (hand-written replay, or checkpointing)
    generate.py  streaming generation: one byte at a time, memory carried for as long as it runs
    stream.py    streaming evaluation: bits per byte by position over streams longer than training

Shared with the classifier (`rmaat.encoder`): `rmaat.attention` (its causal layers),
`rmaat.block`, `rmaat.embeddings`, `rmaat.memory` (the memory-update rules) and `rmaat.replay`.
Importing this package is cheap (no torch); the names below load on first use:

    from rmaat.lm import build_lm, lm_forward_backward
"""

from __future__ import annotations

from rmaat.exports import lazy_exports

_EXPORTS = {
    "LMConfig": "rmaat.lm.config",
    "lm_config": "rmaat.lm.config",
    "CausalLM": "rmaat.lm.model",
    "build_lm": "rmaat.lm.model",
    "bits_per_byte": "rmaat.lm.model",
    "lm_forward_backward": "rmaat.lm.amrb",
    "StreamingDecoder": "rmaat.lm.generate",
    "evaluate_stream": "rmaat.lm.stream",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
