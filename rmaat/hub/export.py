"""``pipeline export``: a training checkpoint as a hub-style folder, and :func:`load_pretrained`.

    export_checkpoint("R/checkpoints/best.pt", "D")   # D/{config.json, model.safetensors, README.md,
                                                      #    training_config.yaml}
    model, config = load_pretrained("D")              # the model in eval mode, its RunConfig

``config.json`` holds the run config (with its hash), the model config of its family, the
retention factors the model was trained with (and where the table row came from, looked up at
export time: the checkpoint records the table's path, not its contents), the source
checkpoint's step and tensor digest, and the SHA-256 of ``model.safetensors``. The folder is
written beside ``D`` and renamed into place, so an interrupted export leaves no half folder.

Loading uses json and safetensors only (:mod:`rmaat.hub.folder`): no pickle, no network, no
huggingface_hub (nothing to install or reach, and the folder layout is a plain one that the
hub's tooling can still upload). ``RMAATModel.from_pretrained``-style classmethods are not
added: the model families may not import the training code that rebuilds a run's model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmaat.errors import CheckpointError, ConfigError
from rmaat.hub.folder import CARD_NAME, CONFIG_NAME, FOLDER_FORMAT, WEIGHTS_NAME, file_sha256
from rmaat.train.checkpoint import DIGEST_KEY, load_checkpoint, load_model_weights, stored_config
from rmaat.train.config import RunConfig

#: Run-dir files copied into the folder (source name -> name in the folder), when present.
RUN_FILES = {"config.yaml": "training_config.yaml", "command": "command", "command.txt": "command"}
_TRAINING_KEYS = ("best_step", "best_val_accuracy", "best_val_score", "elapsed_s", "tokens_seen", "world_size")


# ================================================================================ rebuild
def _family(config: RunConfig) -> str:
    from rmaat.data.kjv_lm import is_lm_task

    return "lm" if is_lm_task(config.task) else "classifier"


def build_from_state(state: dict[str, Any], config: RunConfig, where: str | Path) -> tuple[torch.nn.Module, Any]:
    """(model with the state's weights, retention factors of its training T or None)."""
    if _family(config) == "lm":
        from rmaat.lm.model import CausalLM
        from rmaat.train.lm_trainer import lm_config_from_run, retention_loader

        table, factors = retention_loader(config), state.get("retention_factors")

        def load(total_segments: int, variant: str) -> np.ndarray:  # the stored factors where they apply
            if factors is not None and total_segments == config.model.segments and variant == model.cfg.retention:
                return np.asarray(factors, dtype=np.float64)
            return table(total_segments, variant)

        model = CausalLM(lm_config_from_run(config), load)
        if factors is None:
            rf = model.retention_factors(config.model.segments if model.cfg.recurrent else 1)
            factors = None if rf is None else [float(v) for v in rf]
    else:
        from rmaat.data import get_task
        from rmaat.train.batching import build_run_model

        model, factors = build_run_model(config, get_task(config.task), state.get("retention_factors"))
    load_model_weights(model, state["model"], where)
    return model.eval(), factors


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """(model in eval mode on ``device``, run config) of a folder of ``pipeline export``.

    The classifier is an ``RMAATModel``, the byte LM a ``CausalLM``; ``.double()`` for float64.
    Every check of :func:`rmaat.hub.folder.read_folder`, and the run config must rebuild the
    model config that config.json records (CheckpointError, one line, naming the first field)."""
    state = load_checkpoint(folder)
    if "exported" not in state:
        raise CheckpointError(f"{folder} is not a folder of `pipeline export` (give the exported folder)")
    config = stored_config(state, folder)
    model, _ = build_from_state(state, config, folder)
    recorded, rebuilt = state["exported"]["model_config"], dataclasses.asdict(model.cfg)
    for key in sorted(recorded.keys() | rebuilt.keys()):
        if recorded.get(key) != rebuilt.get(key):
            raise CheckpointError(f"{folder}/config.json: model_config.{key} is {recorded.get(key)!r} but the run "
                                  f"config builds {rebuilt.get(key)!r}; the file was altered")
    return model.to(device), config


# ================================================================================ export
def table_provenance(config: RunConfig, segments: int, uses_retention: bool) -> dict[str, Any]:
    """Where the retention factors' table row comes from, read now (the checkpoint keeps the path only)."""
    variant = config.model.retention_variant
    if not uses_retention:
        return {"note": "this model uses no retention factors"}
    if variant == "uniform":
        return {"note": "uniform ablation RF = 1/T: no table involved"}
    try:
        from retention.table import ROW_VARIABLES, packaged_table_path, read_table, user_table_path

        if config.model.retention_table:
            candidates = [Path(config.model.retention_table)]
        else:
            candidates = [p for p in (user_table_path(), packaged_table_path()) if p.exists()]
        for path in candidates:
            ds = read_table(path)
            if segments not in [int(v) for v in ds["total_segments"].values]:
                continue
            row = {v: ds[v].sel(total_segments=segments).values.item() for v in ROW_VARIABLES if v in ds}
            runs = json.loads(ds.attrs.get("runs", "{}"))
            run = runs.get(str(row.get("run_id")), {})
            return {"table": str(path), "table_sha256": file_sha256(path), "total_segments": segments,
                    "variant": variant, "row": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()},
                    "run": {k: v for k, v in run.items() if isinstance(v, (str, int, float, bool))}}
        return {"note": f"no table row for T = {segments} found at export time"}
    except Exception as error:  # provenance is a record, never a reason to refuse an export
        return {"note": f"the table could not be read at export time ({str(error).splitlines()[0][:160]})"}


def _run_dir(checkpoint: Path) -> Path | None:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the folder ``out`` for a ``pipeline train`` checkpoint (module docstring); returns ``out``.

    ConfigError for an existing non-empty ``out`` without ``force``; CheckpointError as load_checkpoint."""
    from safetensors.torch import save_file

    from rmaat.hub.card import model_card

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    state = load_checkpoint(checkpoint)
    config = stored_config(state, checkpoint)
    model, factors = build_from_state(state, config, checkpoint)
    family = _family(config)
    uses_retention = factors is not None
    run_dir = _run_dir(checkpoint)
    summary_path = run_dir / "summary.json" if run_dir else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else None
    meta = {
        "format": FOLDER_FORMAT, "family": family, "model_class": type(model).__name__,
        "task": config.task, "preset": config.model.preset, "step": int(state["step"]),
        "run_config": state["config"], "config_hash": state["config_hash"],
        "model_config": dataclasses.asdict(model.cfg),
        "retention": {"factors": factors, "variant": config.model.retention_variant,
                      "trained_segments": config.model.segments,
                      "provenance": table_provenance(config, len(factors) if factors else 0, uses_retention)},
        "training": {k: state[k] for k in _TRAINING_KEYS if k in state and isinstance(state[k], (int, float))},
        "source": {"checkpoint": str(checkpoint), DIGEST_KEY: state.get(DIGEST_KEY)},
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        meta["weights"] = {"file": WEIGHTS_NAME, "sha256": file_sha256(tmp / WEIGHTS_NAME),
                           "dtype": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
                           "parameters": int(sum(p.numel() for p in model.parameters()))}
        copied = {}
        for source, name in RUN_FILES.items():
            if run_dir and (run_dir / source).is_file() and name not in copied:
                shutil.copyfile(run_dir / source, tmp / name)
                copied[name] = (run_dir / source).read_text(encoding="utf-8", errors="replace")
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(model_card(meta, copied), encoding="utf-8")
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` (an old ``out`` set aside first and removed after)."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif force:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        else:  # appeared while exporting
            raise ConfigError(f"{out} exists and is not empty; pass --force to replace it")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
