"""A run's inputs: the task's splits, the model built for them, and the batches fed to it.

Shared by the training loop (:mod:`rmaat.train.trainer`) and checkpoint evaluation
(:mod:`rmaat.train.evaluation`), so that both read data and build models the same way.
:class:`BatchStream` hands out training micro-batches from a resumable position, which is what
makes an interrupted run resume exactly (see the trainer's module docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rmaat.errors import ConfigError, DataError
from rmaat.train.config import RunConfig
from rmaat.train.distributed import ResumableSampler


# ============================================================================ model + data
def model_overrides(config: RunConfig, spec: Any) -> tuple[str, dict[str, Any]]:
    """(preset, ``build_model`` overrides) for a run config and a TaskSpec.

    The task fixes vocabulary, classes, embedding kind and the dual encoder; the run config
    fixes the length and segment count (1 for the non-recurrent presets ``transformer`` and
    ``at``, which read the whole input at once) and, if set, the backprop mode; the rest of
    ``model`` is passed through.
    """
    from rmaat.encoder.config import get_preset

    m = config.model
    for reserved, where in (("seq_len", "data.seq_len"), ("n_segments", "model.segments")):
        if reserved in m.overrides:
            raise ConfigError(f"set the model's {reserved} through {where}, not model.{reserved}")
    base = get_preset(m.preset)  # ConfigError listing presets when unknown
    recurrent = m.overrides.get("recurrent", base.recurrent)
    overrides: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "n_classes": spec.n_classes,
        "embedding": "pixel" if spec.tokenizer == "pixels" else "token",
        "dual_encoder": bool(spec.dual),
        "seq_len": config.data.seq_len,
        "n_segments": m.segments if recurrent else 1,
    }
    if m.backprop is not None:
        overrides["backprop"] = m.backprop
    overrides.update(m.overrides)
    return m.preset, overrides


def build_run_model(config: RunConfig, spec: Any, retention_factors: Any = None):
    """Build the model of a run: ``(model, retention factors used or None)``.

    Without ``retention_factors`` the run's table is read for T = segments (RetentionTableError
    naming the command that adds a missing T).
    """
    from rmaat.encoder.config import get_preset
    from rmaat.encoder.model import build_model

    preset, overrides = model_overrides(config, spec)
    model_cfg = get_preset(preset).replace(**overrides)
    if model_cfg.use_retention and retention_factors is None:
        if config.model.retention_variant == "uniform":  # the ablation RF = 1/T: no table involved
            retention_factors = np.full(model_cfg.n_segments, 1.0 / model_cfg.n_segments)
        else:
            from retention import load_retention_factors

            retention_factors = load_retention_factors(model_cfg.n_segments, path=config.model.retention_table,
                                                       variant=config.model.retention_variant)
    if not model_cfg.use_retention:
        retention_factors = None
    model = build_model(model_cfg, retention_factors=retention_factors)
    rf = None if retention_factors is None else [float(v) for v in np.asarray(retention_factors)]
    return model, rf


def load_splits(config: RunConfig, spec: Any, splits: tuple[str, ...],
                length_fix: Callable[[int], str] | None = None) -> dict[str, Dataset]:
    """The requested splits of the run's task, cut to ``data.seq_len`` from the side that
    ``data.truncate`` names (DataError from the data layer passes through).

    A memory task's examples all have the generated length and end with the question, so a run
    must use that length; a shorter one is refused unless it keeps the end (``truncate=left``).
    ``length_fix(example_length)`` says how to fix that in the caller's options (default:
    ``pipeline train``'s ``--seq-len``).
    """
    from rmaat.data import load_split

    data_dir = config.data.data_dir
    seq_len = config.data.seq_len if config.data.seq_len <= spec.seq_len else None
    out = {split: load_split(spec.name, data_dir, split, seq_len=seq_len) for split in splits}
    for split, dataset in out.items():
        if len(dataset) == 0:
            raise DataError(f"the {split} split of {spec.name} under {data_dir} is empty")
        dataset.truncate = config.data.truncate
        length = getattr(dataset, "example_length", None)
        if length is None or length == config.data.seq_len:
            continue
        if config.data.seq_len < length and config.data.truncate == "left":
            continue
        raise DataError(
            f"the {spec.name} data under {data_dir} has {length}-byte examples ending with the question, "
            f"but data.seq_len is {config.data.seq_len}: "
            + (length_fix(length) if length_fix is not None else f"use --seq-len {length}")
            + (" (or keep only the end with --set data.truncate=left)" if config.data.seq_len < length else ""))
    return out


def task_identity(spec: Any, dataset: Dataset) -> tuple[str, bool]:
    """(title, is_lra) of the data actually loaded: a generated set made with other rules than
    LRA's (its ``generation.json`` says so) is reported under its own name, never as the LRA task."""
    if spec.name == "listops":
        from rmaat.data.listops import read_generation_record

        record = read_generation_record(getattr(dataset, "source", ""))
        if record is not None and not record.get("lra_rules", True):
            return "short-ListOps demo set", False
    if getattr(dataset, "truncate", "right") == "left" and getattr(dataset, "example_length", None):
        return f"{spec.title}, last {dataset.seq_len} of {dataset.example_length} bytes only", bool(spec.is_lra)
    return spec.title, bool(spec.is_lra)


# ============================================================================== batching
class Collate:
    """Stack dataset items into a batch, truncated to ``seq_len`` and right-padded to the
    longest item (the model pads further to its ``seq_len``). Picklable for DataLoader workers."""

    def __init__(self, seq_len: int, pad_id: int = 0):
        self.seq_len, self.pad_id = seq_len, pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {"label": torch.stack([torch.as_tensor(i["label"]) for i in items]).long()}
        for ids_key, mask_key in (("input_ids", "attention_mask"), ("input_ids_2", "attention_mask_2")):
            if ids_key not in items[0]:
                continue
            ids = [torch.as_tensor(i[ids_key])[: self.seq_len] for i in items]
            masks = [torch.as_tensor(i[mask_key])[: self.seq_len].bool() if mask_key in i
                     else torch.ones(len(x), dtype=torch.bool) for i, x in zip(items, ids)]
            width = max(len(x) for x in ids)
            batch[ids_key] = torch.stack([F.pad(x.long(), (0, width - len(x)), value=self.pad_id) for x in ids])
            batch[mask_key] = torch.stack([F.pad(m, (0, width - len(m)), value=False) for m in masks])
        return batch


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Token positions the model processes for a batch (both documents for Retrieval)."""
    return sum(batch[k].numel() for k in ("input_ids", "input_ids_2") if k in batch)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The forward-pass keyword arguments of a batch, on ``device``."""
    keys = ("input_ids", "attention_mask", "input_ids_2", "attention_mask_2")
    return {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}


class BatchStream:
    """Endless micro-batches over epochs with a resumable position ``(epoch, index)``.

    ``index`` counts this rank's examples consumed in the current epoch; only batches handed
    out count, so DataLoader prefetching does not move it.
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, batch_size: int, collate: Collate,
                 num_workers: int, seed: int):
        if sampler.per_rank < batch_size:
            raise ConfigError(f"the training split has {sampler.per_rank} examples per process, fewer than "
                              f"one micro-batch of {batch_size}; lower train.batch_size or add data")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.collate, self.num_workers, self.seed = collate, num_workers, seed
        self.epoch, self.index = 0, 0
        self._it: Iterator | None = None

    def position(self) -> dict[str, int]:
        """The data position to store in a checkpoint."""
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, position: dict[str, int]) -> None:
        """Continue from a stored position."""
        self.epoch, self.index, self._it = int(position["epoch"]), int(position["index"]), None

    def next(self) -> dict[str, torch.Tensor]:
        """The next micro-batch."""
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.index)
                # own generator: creating an iterator must not draw from the global RNG
                generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch + self.index)
                loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                    collate_fn=self.collate, drop_last=True, num_workers=self.num_workers,
                                    generator=generator)
                self._it = iter(loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.index, self._it = self.epoch + 1, 0, None
                continue
            self.index += self.batch_size
            return batch
