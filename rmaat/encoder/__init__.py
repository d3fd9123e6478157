"""The classifier family: an encoder over segments with memory tokens, and its baselines.

    config.py  ModelConfig and the five presets (rmaat, rmt, rlt, at, transformer); no torch
    model.py   RMAATModel: segment recurrence, memory read-out, build_model
    amrb.py    training steps with BPTT or AMRB (checkpointed or hand-written replay)

Shared with the byte LM (`rmaat.lm`): `rmaat.attention`, `rmaat.block`, `rmaat.embeddings`,
`rmaat.memory` (the memory-update rules) and `rmaat.replay`. Importing this package is cheap
(no torch); the names below load on first use:

    from rmaat.encoder import build_model, train_step
"""

from __future__ import annotations

from rmaat.exports import lazy_exports

_EXPORTS = {
    "ModelConfig": "rmaat.encoder.config",
    "PRESETS": "rmaat.encoder.config",
    "get_preset": "rmaat.encoder.config",
    "RMAATModel": "rmaat.encoder.model",
    "build_model": "rmaat.encoder.model",
    "train_step": "rmaat.encoder.amrb",
    "forward_backward": "rmaat.encoder.amrb",
    "replay_backward": "rmaat.encoder.amrb",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
