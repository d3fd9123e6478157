"""RMAAT: Recurrent Memory Augmented Astromorphic Transformer, its baselines and AMRB training.

Importing the package is cheap (no torch); the public names load on first use:

    from rmaat import build_model, train_step
    model = build_model("rmaat", seq_len=4096, n_segments=8)     # RF read from the retention table
    logits = model(input_ids, attention_mask)                     # (B, n_classes)
    train_step(model, batch, optimizer, backprop="amrb")          # or "bptt"
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "rmaat.config",
    "PRESETS": "rmaat.config",
    "get_preset": "rmaat.config",
    "RMAATModel": "rmaat.model",
    "build_model": "rmaat.model",
    "train_step": "rmaat.amrb",
    "forward_backward": "rmaat.amrb",
    "replay_backward": "rmaat.amrb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rmaat' has no attribute {name!r}")
