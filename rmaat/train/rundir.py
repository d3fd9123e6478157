"""A run directory: its default name, what a run writes there, the rules for reusing one
(``--resume`` continues it, ``--force`` replaces its artefacts and nothing else), and its lock:
one process at a time trains in a run directory (``R/.lock``, :mod:`retention.lock`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from retention.errors import OutputPathError
from retention.lock import FileLock, LockBusyError
from rmaat.errors import CheckpointError, ConfigError
from rmaat.train.config import RunConfig

if TYPE_CHECKING:  # rmaat.train.distributed imports torch; this module stays torch-free
    from rmaat.train.distributed import DistInfo

#: Files and folders a run writes; ``--force`` removes exactly these, nothing else.
RUN_ARTEFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "tensorboard", "checkpoints")
#: The lock file of a run directory: not an artefact (``--force`` never removes a live owner's
#: lock), and not content (a directory holding only it counts as empty).
LOCK_NAME = ".lock"


class RunDirInUseError(ConfigError):
    """Another live process trains in this run directory."""


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<task>-<preset>-<timestamp>``."""
    return Path("runs") / f"{config.task}-{config.model.preset}-{datetime.now():%Y%m%d-%H%M%S}"


def lock_run_dir(run_dir: Path, info: DistInfo) -> FileLock | None:
    """Take ``run_dir``'s lock for this run (main process only; None elsewhere) before anything
    in it is read, written or deleted; RunDirInUseError, on every rank, while another process
    holds it. Release with ``FileLock.release`` when the run ends (a killed holder's lock is
    dropped by the kernel)."""
    from rmaat.train.distributed import gather_objects

    _require_directory(run_dir)  # every rank: the same answer everywhere, no rank left waiting
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = FileLock(run_dir / LOCK_NAME).acquire(timeout=0)
        except LockBusyError as busy:
            who = busy.owner.describe() if busy.owner else "another process"
            refusal = ("busy", f"run directory {run_dir} is in use by {who}; wait for it or choose another --run-dir")
        except OutputPathError as error:  # no lock file can be made there (read-only, no locks)
            refusal = ("unusable", f"--run-dir {run_dir} cannot be used: {error}")
    refusal = gather_objects(refusal, info)[0]  # rank 0's answer, so that all ranks stop together
    if refusal is not None:
        raise (RunDirInUseError if refusal[0] == "busy" else ConfigError)(refusal[1])
    return lock


def _require_directory(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} exists and is not a directory")


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a previous run unless asked; require a checkpoint to resume."""
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: {last} does not exist "
                                  f"(start a new run without --resume)")
        return
    _require_directory(run_dir)
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()) and not force:
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
