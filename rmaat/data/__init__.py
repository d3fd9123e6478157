"""Long Range Arena data: task registry, loaders for the official formats, generators.

``get_task(name)`` -> :class:`TaskSpec`; ``load_split(task, data_dir, split)`` -> a torch
Dataset whose items are dicts (``input_ids`` (L,) long, ``attention_mask`` (L,) bool,
``label`` () long; Retrieval adds ``input_ids_2``, ``attention_mask_2``): Contract 5 in
docs/architecture.md.

Import-light: only the torch-free registry is imported here; each loader module (and torch)
is imported when its task is loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rmaat.data.tasks import SPLITS, TASKS, TaskSpec, check_split, find_task_root, get_task
from rmaat.errors import ConfigError

__all__ = ["SPLITS", "TASKS", "TaskSpec", "get_task", "load_split", "find_task_root"]


def load_split(task: str | TaskSpec, data_dir: str | Path | None, split: str, *,
               seq_len: int | None = None):
    """Load one split of ``task`` from ``data_dir`` (official layout; see ``TaskSpec.layout``).

    ``data_dir`` may be the task's directory, its parent or the unpacked LRA release; None
    uses the task's default location (Fashion-MNIST's Debian package). ``seq_len`` shortens
    items below the paper's length (quick CPU runs); it cannot exceed ``spec.seq_len``.
    Raises ConfigError for an unknown task, split or length and DataError for missing or
    malformed data.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    check_split(split)
    if seq_len is not None and not 1 <= seq_len <= spec.seq_len:
        raise ConfigError(f"seq_len {seq_len} is outside 1..{spec.seq_len} for task {spec.name!r}")
    root = find_task_root(spec, data_dir)
    module_name, function = spec.loader.split(":")
    loader = getattr(importlib.import_module(module_name), function)
    dataset = loader(spec, root, split)
    if seq_len is not None:
        dataset.seq_len = seq_len
    return dataset
