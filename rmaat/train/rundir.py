"""A run directory: its default name, what a run writes there, and the rules for reusing one
(``--resume`` continues it, ``--force`` replaces its artefacts and nothing else)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rmaat.errors import CheckpointError, ConfigError
from rmaat.train.config import RunConfig

#: Files and folders a run writes; ``--force`` removes exactly these, nothing else.
RUN_ARTEFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "tensorboard", "checkpoints")


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<task>-<preset>-<timestamp>``."""
    return Path("runs") / f"{config.task}-{config.model.preset}-{datetime.now():%Y%m%d-%H%M%S}"


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a previous run unless asked; require a checkpoint to resume."""
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: {last} does not exist "
                                  f"(start a new run without --resume)")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise ConfigError(f"run directory {run_dir} is not empty; continue it with --resume, overwrite it "
                          f"with --force, or choose another --run-dir")


def clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's artefacts (``--force``); other files are left alone."""
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def start_mode(run_dir: Path, *, resume: bool, force: bool, echo: Callable[..., None]) -> tuple[bool, bool]:
    """``(resume, force)`` for a run directory: a ``--resume`` of a run killed before its first
    checkpoint (a config, no ``last.pt``) has nothing to continue, so it begins again in place."""
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "config.yaml").is_file():
        echo(f"{run_dir} has no checkpoint yet (the run stopped before its first save): starting it from step 0",
             err=True)
        return False, True
    return resume, force
