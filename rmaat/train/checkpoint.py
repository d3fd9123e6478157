"""Checkpoint files: atomic writes, RNG capture/restore, and validated loading.

A checkpoint is one ``torch.save`` dict holding only tensors and plain Python values, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs when reading a file from
someone else). Keys::

    format, step, config (dict), config_hash, model, optimizer, scheduler,
    rng {torch, cuda, numpy, python}, data_position {epoch, index},
    best_val_accuracy, best_step, elapsed_s, tokens_seen, retention_factors, tensor_sha256

Writes go to a temporary file in the same directory and are moved into place with
``os.replace``, so an interrupted write never leaves a truncated ``last.pt``.

``tensor_sha256`` (added by :func:`atomic_torch_save`) is a SHA-256 over every tensor of the
checkpoint: its place in the dict, dtype, shape and bytes (:func:`tensor_digest`). torch's zip
format checks no sums, so bytes damaged after the save (a bad disk, a copy cut short and
patched) would load silently as other weights; :func:`load_checkpoint` recomputes the digest
and refuses a file that no longer matches. Checkpoints written before the digest existed have
no such key and load as before.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmaat.errors import CheckpointError, ConfigError
from retention.atomic import atomic_write

FORMAT = "rmaat-train-checkpoint/1"
#: The key of the tensors' digest in a checkpoint dict (see the module docstring).
DIGEST_KEY = "tensor_sha256"


def _tensors(value: Any, where: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(path in the nested dict/list, tensor) of every tensor under ``value``, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        # keys are str or int (optimizer state): sort by repr, which tells 0 from "0"
        for key in sorted(value, key=repr):
            if not (where == "" and key == DIGEST_KEY):
                yield from _tensors(value[key], f"{where}/{key!r}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")


def tensor_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of every tensor of ``state``: its path, dtype, shape and values' bytes.

    The values are hashed as a contiguous CPU copy, so a view and the tensor it views alike
    hash as what they hold, wherever ``map_location`` put them."""
    digest = hashlib.sha256()
    for where, tensor in _tensors(state):
        digest.update(f"{where}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        # as raw bytes: numpy has no bfloat16, and a byte view copies nothing
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (``retention.atomic``: fsynced temp file, os.replace).

    A dict is written with its :func:`tensor_digest` under ``tensor_sha256`` (a copy: the
    caller's dict is left as it was)."""
    if isinstance(obj, dict):
        obj = {**obj, DIGEST_KEY: tensor_digest(obj)}
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
    """Read and sanity-check a checkpoint; CheckpointError if missing, corrupt or foreign.

    ``path`` may also be a folder written by ``pipeline export`` (read and checked by
    :func:`rmaat.hub.folder.read_folder`, into the same dict, without optimizer or RNG state)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():  # a folder of `pipeline export` (rmaat.hub)
        from rmaat.hub.folder import read_folder

        return {"format": FORMAT, **read_folder(path, map_location)}
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
    _check_digest(state, path)
    return state


def _check_digest(state: dict[str, Any], path: Path) -> None:
    """CheckpointError if the tensors no longer match the digest saved with them (none: an old file)."""
    stored = state.get(DIGEST_KEY)
    if stored is None:
        return
    if tensor_digest(state) != stored:
        raise CheckpointError(f"checkpoint {path} is damaged: its tensors no longer match the digest written "
                              f"with them (sha256 {str(stored)[:12]}...); use another copy or checkpoint, "
                              "or retrain")


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


def check_resumable(state: dict[str, Any], path: Path, config, world_size: int) -> None:
    """CheckpointError unless a run of ``config`` on ``world_size`` processes may resume from ``state``
    (read from ``path``): the same process count (the data order is dealt per rank) and config."""
    from rmaat.train.config import RunConfig, config_diff, config_hash

    if int(state.get("world_size", 1)) != world_size:
        raise CheckpointError(f"checkpoint {path} was written by {state.get('world_size', 1)} process(es) and "
                              f"this run has {world_size}; resume with the same number of processes")
    if state["config_hash"] == config_hash(config):
        return
    try:
        saved = RunConfig.from_dict(state["config"])
        diff = "; ".join(config_diff(saved, config)[:6])
    except ConfigError:
        diff = "the stored config is not readable"
    raise CheckpointError(f"checkpoint {path} was written by a different configuration ({diff}); "
                          f"rerun with the original options or use a new --run-dir")


def load_model_weights(model: torch.nn.Module, weights: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(weights)``; CheckpointError (one line) naming ``where`` (e.g.
    ``checkpoint R/best.pt``) when the weights do not fit the model the stored config describes."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{where} does not fit the model its config describes "
                              f"({str(error).splitlines()[0]})") from None


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
