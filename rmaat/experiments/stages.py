"""Running one job in this process: each stage that is not done, in order (what a worker runs).

A training stage is a :class:`rmaat.train.trainer.Trainer` (or the byte LM's
:class:`~rmaat.train.lm_trainer.LMTrainer`) in the stage's run directory, resumed from its
checkpoint when it has one, its output in ``<run dir>.log``; an evaluate stage scores the last
training stage's best checkpoint at another segment count (:func:`evaluate_stage`).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from rmaat.experiments.jobs import Job
from rmaat.experiments.states import run_state


class JobStopped(RuntimeError):
    """A job's trainer stopped early (a signal or ``train.stop_after``) with its checkpoint saved."""


def run_job(job: Job) -> dict[str, Any]:
    """Train every stage of ``job`` that is not done (in this process); return the final summary."""
    import torch

    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.train.config import RunConfig
    from rmaat.train.lm_trainer import LMTrainer
    from rmaat.train.trainer import Trainer

    torch.set_num_threads(1)
    start = time.perf_counter()
    for run_dir, raw in zip(job.run_dirs, job.configs):
        state = run_state(run_dir, raw)
        if state == "done":
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        if "evaluate" in raw:
            evaluate_stage(run_dir, raw["evaluate"])
            continue
        with open(run_dir.parent / f"{run_dir.name}.log", "a") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                  + ("resume from checkpoints/last.pt" if state == "partial" else "start"), file=log, flush=True)
            trainer_class = LMTrainer if is_lm_task(raw["task"]) else Trainer
            trainer = trainer_class(RunConfig.from_dict(raw), run_dir, resume=state == "partial",
                              force=state == "new", progress=False,
                              echo=lambda message, err=False: print(message, file=log, flush=True))
            if trainer.fit() is None:
                raise JobStopped(f"{run_dir} stopped early ({trainer.stop_reason}); run the experiment again")
    summary = json.loads((job.final_dir / "summary.json").read_text())
    summary["job_seconds"] = time.perf_counter() - start
    return summary


def evaluate_stage(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a checkpoint at another segment count and write ``run_dir/summary.json`` in the
    training summary's keys (``test_accuracy``, ``majority_baseline``, ``test_accuracy_by_depth``)."""
    import torch

    from rmaat.train.evaluation import evaluate_checkpoint
    from rmaat.train.metrics import atomic_write_text

    start = time.perf_counter()
    result = evaluate_checkpoint(spec["checkpoint"], split=spec["split"], data_dir=spec["data_dir"],
                                 device="cpu" if not torch.cuda.is_available() else "auto",
                                 segments=spec["segments"], by="depth" if _has_depth(spec["data_dir"]) else None)
    summary = {"evaluate": spec, "task": result["task"], "preset": result["preset"],
               "test_accuracy": result["accuracy"], "test_loss": result["loss"], "n_test": result["n"],
               "majority_baseline": result["majority_baseline"], "steps": result["step"],
               "segments": result["segments"], "seq_len": result["seq_len"],
               "wall_time_s": time.perf_counter() - start}
    if "by_depth_segment" in result:
        summary["test_accuracy_by_depth"] = result["by_depth_segment"]
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _has_depth(data_dir: str | None) -> bool:
    """Whether a generated data set records the depth of its facts (the memory tasks)."""
    if data_dir is None:
        return False
    record = Path(data_dir) / "done.json"
    return record.is_file() and json.loads(record.read_text()).get("task", "").startswith("babi_")
