"""Run a task's generator atomically: into a temporary folder beside the output, renamed into
place when complete, so an interrupted generation never leaves a half-written data set.

Used by ``pipeline data generate`` and by the experiment runner, which generates each data set
its grid needs once.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rmaat.data.tasks import get_task
from rmaat.errors import ConfigError


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing what is there (already confirmed)."""
    backup = None
    if out.exists():
        if any(out.iterdir()):
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, backup)
        else:
            out.rmdir()
    os.rename(tmp, out)
    if backup is not None:
        shutil.rmtree(backup)


def write_generation_record(folder: Path, record: dict[str, Any], name: str = "generation.json") -> None:
    """Write a generated set's ``generation.json`` (its rules, seed and sizes) atomically."""
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / name)


def generate_task(task: str, out: Path, *, size: int, seed: int, progress: bool = True,
                  **options: Any) -> dict[str, int]:
    """Generate ``task`` into ``out`` (replacing it) with the task's generator; return split sizes."""
    spec = get_task(task)
    if spec.generator is None:
        raise ConfigError(f"task {task!r} is not generated; to get it, {spec.obtain}")
    module_name, function = spec.generator.split(":")
    generator = getattr(importlib.import_module(module_name), function)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        sizes = generator(tmp, size=size, seed=seed, progress=progress, **options)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sizes


def check_out_dir(out: Path, force: bool) -> Path:
    """``--out`` of a data command, expanded: refuse a file, or a non-empty directory without ``force``
    (checked before any work, so a long generation or download never ends in this error)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty; pass --force to replace it "
                          "or choose another directory")
    return out
