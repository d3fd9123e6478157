"""The training figure: loss and accuracy of a training run directory (Contract 6).

:func:`read_metrics` checks and reads ``metrics.jsonl`` line by line;
:func:`plot_training_curves` draws it with the trainer's own
:func:`rmaat.train.metrics.plot_curves`, titled from the run's ``summary.json`` or
``config.yaml``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rmaat.errors import DataError


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` (Contract 6), one dict per line.

    Checked line by line so that a missing or corrupt file is reported in one line naming
    the file and the line, before anything is drawn.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: give a run directory written by `pipeline train --run-dir`")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}, line {number}: not valid JSON; the file is corrupt") from None
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise DataError(f"{path}, line {number}: expected an object with 'step' and 'split'")
            records.append(record)
    if not records:
        raise DataError(f"{path} holds no metrics yet: let the run log at least one step")
    return records


def plot_training_curves(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Draw the loss/accuracy curves of the run in ``run_dir`` and write them (PNG) to ``path``.

    The drawing is the trainer's own :func:`rmaat.train.metrics.plot_curves` (the
    ``curves.png`` of every run), so the two never disagree; here the run directory is
    validated first, and a finished run's title and majority-class accuracy (drawn as a
    baseline) come from its ``summary.json``. A byte-LM run (its records carry ``bpb``) is drawn
    in bits per byte against its unigram baseline.
    """
    from rmaat.train.metrics import plot_curves  # torch-free module; loads matplotlib only

    run = Path(run_dir)
    records = read_metrics(run)
    summary = _read_json(run / "summary.json")
    metric = "bpb" if any("bpb" in r for r in records) else "accuracy"
    baseline = summary.get("unigram_bpb" if metric == "bpb" else "majority_baseline")
    baseline = float(baseline) if isinstance(baseline, (int, float)) and not isinstance(baseline, bool) else None
    return Path(plot_curves(records, path, title=_run_title(run, summary), baseline=baseline, metric=metric))


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when the file is absent or unreadable (a run still going)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _run_title(run: Path, summary: dict) -> str:
    """``task: preset (backprop)`` as the trainer titles its curves, else from config.yaml."""
    if {"task_title", "preset", "backprop"} <= summary.keys():
        return f"{summary['task_title']}: {summary['preset']} ({summary['backprop']})"
    try:
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        return f"{config['task']}: {config['model']['preset']}"
    except Exception:  # a missing, partial or odd config only costs the nicer title
        return f"training run {run.resolve().name}"
