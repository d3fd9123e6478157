"""The state of an experiment's run directories against the configs the file now gives.

A run whose ``summary.json`` exists for the same config is ``done`` (skipped); one with a
checkpoint of the same config is ``partial`` (resumed); one with neither is ``new``; a run of
another config (the experiment file was edited after it ran) is ``stale``: refused up front
(:func:`rmaat.experiments.runner.check_stale`) unless replaced, and marked in the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rmaat.errors import RMAATUserError
from rmaat.experiments.jobs import Job


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _started_config(run_dir: Path) -> Any:
    """The RunConfig a run directory was started with (its ``config.yaml``), or None."""
    from rmaat.train.config import load_config_file

    try:
        return load_config_file(run_dir / "config.yaml")
    except RMAATUserError:
        return None


def _same_data(started: Any, config: dict[str, Any]) -> bool:
    """Whether a run trained on the data setting ``config`` names. ``data.data_dir`` is left out
    of the config hash (where, not what), so an edited data option (e.g. ``size``) would
    otherwise pass unseen; two folders of the experiment's ``data/`` are two settings (each
    folder's name is the hash of its options), any other folder is the user's to move."""
    planned = config.get("data", {}).get("data_dir")
    if started is None or planned is None or started.data.data_dir is None:
        return True
    before, now = Path(started.data.data_dir), Path(planned)
    return before.parent != now.parent or before.name == now.name


def run_state(run_dir: Path, config: dict[str, Any]) -> str:
    """The state of one run directory for the config the experiment file now gives:

    ``done``     a summary of this config (skipped);
    ``stale``    a summary, or a checkpoint, of another config: the file was edited after the run
                 started (refused by :func:`check_stale` unless replaced with --force);
    ``partial``  a checkpoint of this config (resumed);
    ``new``      nothing yet (started afresh).
    """
    from rmaat.train.config import RunConfig, config_hash

    summary = _read_json(run_dir / "summary.json")  # an unreadable one is no result: redo the run
    if "evaluate" in config:
        if summary is None:
            return "new"
        return "done" if summary.get("evaluate") == config["evaluate"] else "stale"
    expected = config_hash(RunConfig.from_dict(config))
    started = _started_config(run_dir)
    if summary is not None:
        return "done" if summary.get("config_hash") == expected and _same_data(started, config) else "stale"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        if started is not None and (config_hash(started) != expected or not _same_data(started, config)):
            return "stale"
        return "partial"
    return "new"


def job_states(job: Job) -> list[str]:
    """:func:`run_state` of each stage of a job; every stage after a stale one is stale too (it
    started from, or evaluated, the stale stage's weights)."""
    states: list[str] = []
    for run_dir, config in zip(job.run_dirs, job.configs):
        state = run_state(run_dir, config)
        states.append("stale" if state in ("done", "partial") and "stale" in states else state)
    return states


def stale_reason(run_dir: Path, config: dict[str, Any]) -> str:
    """What differs between a stale run and the file's config, for the message (may be empty)."""
    from rmaat.train.config import RunConfig, config_diff

    if "evaluate" in config:
        done = _read_json(run_dir / "summary.json") or {}
        before = done.get("evaluate") or {}
        keys = sorted(set(before) | set(config["evaluate"]))
        return "; ".join(f"evaluate.{k}: {before.get(k)!r} != {config['evaluate'].get(k)!r}" for k in keys
                         if before.get(k) != config["evaluate"].get(k))
    started = _started_config(run_dir)
    if started is None:
        return ""
    planned = RunConfig.from_dict(config)
    diff = config_diff(started, planned)
    if not _same_data(started, config):
        diff.append(f"data: {Path(started.data.data_dir).name} != {Path(planned.data.data_dir).name}")
    return "; ".join(diff[:3])


def stale_runs(jobs: list[Job]) -> list[tuple[Job, int]]:
    """``(job, index of its first stale stage)`` of every job that has one."""
    out = []
    for job in jobs:
        states = job_states(job)
        if "stale" in states:
            out.append((job, states.index("stale")))
    return out
