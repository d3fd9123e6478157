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

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmaat.errors import CheckpointError
from retention.atomic import atomic_write

FORMAT = "rmaat-train-checkpoint/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (``retention.atomic``: fsynced temp file, os.replace)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _load_failure(error: Exception) -> str:
    """torch's reason in a few words, without its advice to load with ``weights_only=False``
    (which would run code from an untrusted file: never suggest it)."""
    text = str(error).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data"
    first_line = text.splitlines()[0] if text else type(error).__name__
    return first_line[:200]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and sanity-check a checkpoint; CheckpointError if missing, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(str(p) for p in path.glob("**/checkpoints/*.pt"))[:2] or sorted(map(str, path.glob("*.pt")))[:2]
        raise CheckpointError(f"checkpoint {path} is a directory; give a checkpoint file"
                              + (f", e.g. {' or '.join(inside)}" if inside else " (RUN_DIR/checkpoints/best.pt)"))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated/foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({_load_failure(error)}); "
                              f"it may be truncated or not written by `pipeline train`") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an RMAAT training checkpoint (expected format {FORMAT})")
    missing = {"step", "config", "config_hash", "model"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}; it is incomplete")
    return state


# ----------------------------------------------------------------------------- RNG
def stored_config(state: dict[str, Any], path: str | Path):
    """The RunConfig a checkpoint was written with; CheckpointError if it no longer matches its hash."""
    from rmaat.train.config import RunConfig, config_hash

    config = RunConfig.from_dict(state["config"], f"{path} (stored config)")
    if config_hash(config) != state["config_hash"]:
        raise CheckpointError(f"checkpoint {path}: stored config does not match its hash; the file was altered")
    return config


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


def init_weights(model: torch.nn.Module, path: Path) -> None:
    """Load every parameter of ``model`` from the checkpoint at ``path`` (a curriculum stage).

    The retention factors are buffers of the run's own T and are kept. CheckpointError when the
    checkpoint's model has other parameters or shapes (another width, segment length or preset)."""
    state = load_checkpoint(path)
    weights = {k: v for k, v in state["model"].items() if k != "retention_factors"}
    own = {k: v for k, v in model.state_dict().items() if k != "retention_factors"}
    mismatched = sorted(k for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape)
    missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    if mismatched or missing or extra:
        what = "; ".join(f"{label} {', '.join(keys[:3])}" for label, keys in
                         (("other shapes:", mismatched), ("missing:", missing), ("unexpected:", extra)) if keys)
        raise CheckpointError(f"--init-from {path}: its model does not fit this run's ({what}); the "
                              "model width, layers, preset and segment length must match")
    model.load_state_dict(weights, strict=False)
