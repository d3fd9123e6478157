"""Evaluation of a model on a split (:func:`evaluate_split`, also used for the trainer's
validation and test passes) and of a stored checkpoint (:func:`evaluate_checkpoint`, behind
``pipeline evaluate``).

Evaluation draws no random numbers (the model is in eval mode), so a validation pass between
two training steps leaves the global RNG, and hence exact resume, untouched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rmaat.errors import ConfigError, DataError
from rmaat.train.batching import Collate, build_run_model, load_splits, model_inputs, task_identity
from rmaat.train.checkpoint import load_checkpoint, load_model_weights, stored_config
from rmaat.train.config import RunConfig
from rmaat.train.distributed import DistInfo, ShardSampler, all_reduce_sum, distributed_session


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (``precision`` bf16, or auto on CUDA) or a no-op."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, dataset: Dataset, *, batch_size: int, collate: Collate,
                   device: torch.device, precision: str, n_classes: int, info: DistInfo = DistInfo(),
                   max_batches: int | None = None, by: str | None = None) -> dict[str, Any]:
    """Loss, accuracy and label counts on (the first ``max_batches`` batches of) a split.

    Each rank evaluates a disjoint shard; sums are all-reduced, so every example counts once.
    ``majority_baseline`` is the accuracy of always predicting the most frequent label.
    ``by`` names a per-example array of ``dataset.metadata`` (``depth_segment`` on the memory
    tasks); the result then adds ``by_<name>``: ``{value: {"accuracy", "n"}}`` per group.
    """
    was_training = model.training
    model.eval()
    limit = None if max_batches is None else max_batches * batch_size * info.world_size
    sampler = ShardSampler(len(dataset), info.rank, info.world_size, limit)
    # its own generator: a DataLoader without one draws its base seed from the global torch RNG
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                        generator=torch.Generator())
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    label_counts = torch.zeros(n_classes, dtype=torch.float64, device=device)
    groups = group_ids(dataset, by)
    group_totals = torch.zeros(2, int(groups.max()) + 2 if groups is not None else 0,
                               dtype=torch.float64, device=device)  # (correct, count) per group
    order, seen = sampler.indices, 0
    for batch in loader:
        labels = batch["label"].to(device)
        with autocast_context(device, precision):
            logits = model(**model_inputs(batch, device))
        logits = logits.float()
        correct = logits.argmax(-1) == labels  # (B,)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum")
        totals[1] += correct.sum()
        totals[2] += labels.numel()
        label_counts += torch.bincount(labels, minlength=n_classes)[:n_classes].to(label_counts.dtype)
        if groups is not None:  # batches follow the sampler's order, so its indices name the examples
            g = torch.as_tensor(groups[order[seen:seen + len(labels)]] + 1, device=device)  # -1 (none) -> 0
            group_totals[0].index_add_(0, g, correct.to(group_totals.dtype))
            group_totals[1].index_add_(0, g, torch.ones_like(g, dtype=group_totals.dtype))
        seen += len(labels)
    all_reduce_sum(totals, info)
    all_reduce_sum(label_counts, info)
    model.train(was_training)
    n = max(1.0, totals[2].item())
    result = {"loss": totals[0].item() / n, "accuracy": totals[1].item() / n, "n": int(totals[2].item()),
              "majority_baseline": label_counts.max().item() / n,
              "label_counts": [int(c) for c in label_counts.tolist()]}
    if groups is not None:
        all_reduce_sum(group_totals, info)
        result[f"by_{by}"] = {str(value - 1): {"accuracy": hit / count, "n": int(count)}
                              for value, (hit, count) in enumerate(zip(*group_totals.tolist())) if count}
    return result


def group_ids(dataset: Dataset, by: str | None) -> np.ndarray | None:
    """The per-example array ``dataset.metadata[by]`` (ints >= -1), or None when ``by`` is None.

    ConfigError when the split has no such array (e.g. ``--by depth`` on a task without depths)."""
    if by is None:
        return None
    metadata = getattr(dataset, "metadata", {})
    if by not in metadata:
        known = ", ".join(metadata) or "none"
        raise ConfigError(f"this split has no per-example {by!r} to group by (available: {known}); "
                          "--by depth needs a memory task (babi_qa1, babi_qa2)")
    return np.asarray(metadata[by], dtype=np.int64)


#: ``--by`` names -> the dataset metadata they group by.
GROUPINGS = {"depth": "depth_segment"}


def _length_fix(config: Any, segments: int | None, length: int) -> str:
    """How ``pipeline evaluate`` reaches examples of ``length`` bytes (it has no --seq-len)."""
    segment_len = config.data.seq_len // config.model.segments
    asked = f"--segments {segments} reads" if segments is not None else "the checkpoint reads"
    fix = f"{asked} {config.data.seq_len}-byte inputs: pass --data-dir with {config.data.seq_len}-byte examples"
    if length % segment_len == 0:
        fix += f", or --segments {length // segment_len} for these ({length // segment_len} x {segment_len} bytes)"
    return fix


def evaluate_checkpoint(path: str | Path, *, split: str = "test", data_dir: str | None = None,
                        device: str = "auto", batch_size: int | None = None, by: str | None = None,
                        segments: int | None = None) -> dict[str, Any]:
    """Accuracy of a checkpoint (``last.pt`` or ``best.pt``) on a split of its task's data.

    ``by="depth"`` adds accuracy per segment of the supporting fact (memory tasks).
    ``segments`` evaluates a recurrent model on inputs of another number of segments of the
    same length (length generalisation): ``data.seq_len`` becomes ``segments`` times the
    trained segment length, and the retention factors are those of the new T for the run's
    variant (RF(., T_eval) from the table, the T-free streaming r_t, or 1/T_eval)."""
    from rmaat.data import get_task
    from rmaat.data.tasks import check_split

    check_split(split)
    if by is not None and by not in GROUPINGS:
        raise ConfigError(f"--by {by!r} is not one of {', '.join(GROUPINGS)}")
    state = load_checkpoint(path)
    config = stored_config(state, path)
    if data_dir is not None:
        config.data.data_dir = data_dir
    elif config.data.data_dir is not None and not Path(config.data.data_dir).expanduser().exists():
        raise DataError(f"the data directory {config.data.data_dir} recorded by the run in {path} does not exist; "
                        "pass --data-dir with the data's current location")
    config.train.device = device
    retention_factors = state.get("retention_factors")
    if segments is not None and segments != config.model.segments:
        retention_factors = None  # those of the trained T: read the new T's below
        resegment(config, segments)
    config.validate()
    spec = get_task(config.task)
    dataset = load_splits(config, spec, (split,), length_fix=lambda length: _length_fix(config, segments, length))[split]
    model, retention_factors = build_run_model(config, spec, retention_factors)
    weights = dict(state["model"])
    if segments is not None and "retention_factors" in weights:  # the trained T's: keep the new T's
        weights["retention_factors"] = model.retention_factors
    load_model_weights(model, weights, f"checkpoint {path}")
    with distributed_session(device) as (info, torch_device):
        model.to(torch_device)
        bs = batch_size or config.train.batch_size // config.train.grad_accum
        result = evaluate_split(model, dataset, batch_size=bs, collate=Collate(config.data.seq_len, spec.pad_id),
                                device=torch_device, precision=config.train.precision, n_classes=spec.n_classes,
                                info=info, by=None if by is None else GROUPINGS[by])
    title, is_lra = task_identity(spec, dataset)
    result.update({"split": split, "task": config.task, "task_title": title, "is_lra": is_lra,
                   "preset": config.model.preset, "step": int(state["step"]), "checkpoint": str(path),
                   "segments": config.model.segments, "seq_len": config.data.seq_len,
                   "retention_factors": retention_factors})
    return result


def resegment(config: RunConfig, segments: int) -> None:
    """Set ``config`` to ``segments`` segments of its current segment length (in place).

    ConfigError for a model without segment recurrence, whose positions span the whole input."""
    from rmaat.encoder.config import get_preset

    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    if not get_preset(config.model.preset).recurrent:
        raise ConfigError(f"--segments needs a recurrent model (rmaat, rmt, rlt); this checkpoint is a "
                          f"{config.model.preset}, whose positions cover the trained length only")
    segment_length = config.data.seq_len // config.model.segments
    config.model.segments = segments
    config.data.seq_len = segments * segment_length
