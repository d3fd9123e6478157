"""Checkpoint files: atomic writes, RNG capture/restore, and validated loading.

A checkpoint is one ``torch.save`` dict holding only tensors and plain Python values, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs when reading a file from
someone else). Keys::

    format, step, config (dict), config_hash, model, optimizer, scheduler,
    rng {torch, cuda, numpy, python}, data_position {epoch, index},
    best_val_accuracy, best_step, elapsed_s, tokens_seen, retention_factors

Writes go to a temporary file in the same directory and are moved into place with
``os.replace``, so an interrupted write never leaves a truncated ``last.pt``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmaat.errors import CheckpointError
from rmaat.train.metrics import default_file_mode

FORMAT = "rmaat-train-checkpoint/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temp file in the same directory + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_file_mode())
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and sanity-check a checkpoint; CheckpointError if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated/foreign files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line[:200]}); "
                              f"it may be truncated or not written by `pipeline train`") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an RMAAT training checkpoint (expected format {FORMAT})")
    missing = {"step", "config", "config_hash", "model"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}; it is incomplete")
    return state


# ----------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """All RNG states a training step can touch, as tensors/plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # current device only: get_rng_state_all() would create a context on every GPU of
        # the node from every torchrun process
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA state goes to the current device).

    All ranks of a DDP run are seeded alike and draw the same shapes, so rank 0's states
    are every rank's states.
    """
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
