"""RMAAT: Recurrent Memory Augmented Astromorphic Transformer, its baselines and AMRB training.

Two model families over shared parts:

    encoder/     the classifier (LRA tasks): ModelConfig + presets, RMAATModel, AMRB
    lm/          the causal byte LM: LMConfig + presets, CausalLM, AMRB with a loss per
                 segment, streaming generation, streaming evaluation
    shared       attention/ (astromorphic, linear, softmax; causal variants), block.py (the
                 encoder block), embeddings.py, memory.py (the memory-update rules),
                 replay.py (RNG state for AMRB's replay), compile.py, errors.py
    around them  data/, train/, experiments/, probe/, benchmarks/, configs/

Importing the package is cheap (no torch). The classifier's entry points (those of
`rmaat.encoder`) load on first use:

    from rmaat import build_model, train_step
    model = build_model("rmaat", seq_len=4096, n_segments=8)     # RF read from the retention table
    logits = model(input_ids, attention_mask)                     # (B, n_classes)
    train_step(model, batch, optimizer, backprop="amrb")          # or "bptt"
"""

from __future__ import annotations

import importlib


def __getattr__(name: str) -> object:
    encoder = importlib.import_module("rmaat.encoder")
    if name in encoder.__all__:
        return getattr(encoder, name)
    raise AttributeError(f"module 'rmaat' has no attribute {name!r}")

