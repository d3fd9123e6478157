"""Reading an exported model folder (``pipeline export``) back, with every check done on load.

:func:`read_folder` turns a folder into the same in-memory dict ``load_checkpoint`` returns for
a ``.pt`` file (step, config, config_hash, model, retention_factors, ...), after checking that

* ``config.json`` parses, has this format and names a known family (classifier or lm);
* ``model.safetensors`` opens (a truncated file does not) and its bytes have the SHA-256 that
  ``config.json`` records (a flipped byte, a copy patched up);
* its tensor names and shapes are those of the model ``config.json`` describes, rebuilt from
  its ``model_config``: a config that does not fit the weights.

Each failure is one ``CheckpointError`` line. Only json and safetensors read the files: no
pickle, no network, no huggingface_hub. This module imports nothing of ``rmaat.train`` (its
``load_checkpoint`` imports this one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rmaat.errors import CheckpointError

#: ``format`` of an exported folder's config.json.
FOLDER_FORMAT = "rmaat-pretrained/1"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FAMILIES = ("classifier", "lm")


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an exported model's config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported folder, checked for format and family (CheckpointError)."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} cannot be read as JSON ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise CheckpointError(f"{path} is not an exported RMAAT model (expected format {FOLDER_FORMAT})")
    if config.get("family") not in FAMILIES:
        raise CheckpointError(f"{path} names the model family {config.get('family')!r}; known: {', '.join(FAMILIES)}")
    missing = sorted({"run_config", "config_hash", "model_config", "weights", "step"} - set(config))
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is incomplete")
    return config


def skeleton(config: dict[str, Any]) -> torch.nn.Module:
    """The model ``config.json`` describes, freshly initialised (its names and shapes are what count)."""
    model_config, family = config["model_config"], config["family"]
    try:
        if family == "lm":
            from rmaat.lm.config import LMConfig
            from rmaat.lm.model import CausalLM

            return CausalLM(LMConfig(**model_config))
        from rmaat.encoder.config import ModelConfig
        from rmaat.encoder.model import build_model

        cfg = ModelConfig(**model_config)
        factors = (config.get("retention") or {}).get("factors")
        if cfg.use_retention and factors is None:
            raise CheckpointError("config.json: the model uses retention factors and records none")
        return build_model(cfg, retention_factors=factors if cfg.use_retention else None)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config.json: model_config describes no buildable {family} model "
                              f"({str(error).splitlines()[0][:160]})") from None


def check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Size], where: str) -> None:
    """CheckpointError naming the first key (sorted) whose presence or shape differs."""
    for key in sorted(expected.keys() | found.keys()):
        want = tuple(expected[key].shape) if key in expected else None
        got = tuple(found[key]) if key in found else None
        if want != got:
            detail = (f"missing from {WEIGHTS_NAME}" if got is None else
                      f"not in the model config.json describes" if want is None else
                      f"shape {list(got)} in {WEIGHTS_NAME}, {list(want)} in the model config.json describes")
            raise CheckpointError(f"{where}: config.json does not fit the weights: {key} is {detail}")


def read_folder(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint-like dict of an exported folder (see the module docstring); CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(weights_path, device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{weights_path} cannot be read ({str(error).splitlines()[0][:120]}); "
                              "it may be truncated: export it again") from None
    stored = (config["weights"] or {}).get("sha256")
    if file_sha256(weights_path) != stored:
        raise CheckpointError(f"{weights_path} is damaged: its bytes no longer match the SHA-256 in config.json "
                              f"({str(stored)[:12]}...); use another copy or export it again")
    check_shapes(skeleton(config).state_dict(), {k: v.shape for k, v in tensors.items()}, str(folder))
    retention = config.get("retention") or {}
    state = {"step": int(config["step"]), "config": config["run_config"], "config_hash": config["config_hash"],
             "model": tensors, "retention_factors": retention.get("factors"), "exported": config}
    for key in ("best_step", "best_val_accuracy", "best_val_score", "world_size"):
        if key in config.get("training", {}):
            state[key] = config["training"][key]
    return state
