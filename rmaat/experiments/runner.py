"""Run an experiment's grid: data once per data setting, then every (grid point, seed) as a job
in its own process (one torch thread each), resumable.

Layout under ``<root>/<name>/`` (root ``runs/experiments`` by default)::

    data/<task>-<hash>/           one generated data set per distinct data setting
    <point>/seed<k>/              a run directory (``pipeline train``'s), or for a curriculum
    <point>/seed<k>/stage<i>/     one run directory per stage (an evaluate stage: summary.json only)
    results.csv, results.md, <name>.png      written by :mod:`rmaat.experiments.report`

A run whose ``summary.json`` exists (for the same config) is skipped; one with a checkpoint is
resumed; one with neither starts afresh. Killing ``pipeline experiment run`` and starting it
again therefore loses at most the steps since each run's last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmaat.experiments.spec import Experiment, GridPoint, Stage

DEFAULT_ROOT = Path("runs/experiments")
#: Data options understood per generated task (others are errors), and their generator mapping.
_BABI_KEYS = {"length", "segment_length", "n_facts", "n_people", "fact_segments"}
_LISTOPS_KEYS = {"min_length", "max_length"}


@dataclass(frozen=True)
class Job:
    """One grid point at one seed: its stages' run directories and configs, in order."""

    point: str
    seed: int
    run_dirs: tuple[Path, ...]
    configs: tuple[dict[str, Any], ...]  # RunConfig dicts; {"evaluate": {...}} for an evaluate stage

    @property
    def final_dir(self) -> Path:
        """The run directory whose summary is the job's result."""
        return self.run_dirs[-1]


def data_key(task: str, data: dict[str, Any]) -> str:
    """Folder name of one data setting: the task and a hash of its options."""
    text = json.dumps({"task": task, **data}, sort_keys=True)
    return f"{task}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def generator_options(task: str, data: dict[str, Any]) -> dict[str, Any]:
    """``generate_task`` keyword arguments for a data setting (ConfigError on unknown options)."""
    from rmaat.errors import ConfigError

    options = {k: v for k, v in data.items() if k not in ("size", "seed")}
    if task.startswith("babi_"):
        unknown = set(options) - _BABI_KEYS
        if not unknown:
            from rmaat.data.babi import BabiConfig

            segments = options.pop("fact_segments", None)
            return {"cfg": BabiConfig(task=task.removeprefix("babi_"), **options,
                                      fact_segments=None if segments is None else tuple(segments))}
    elif task == "listops":
        unknown = set(options) - _LISTOPS_KEYS
        if not unknown:
            from rmaat.data.listops import ListOpsConfig

            return {"cfg": ListOpsConfig(**options)} if options else {}
    else:
        unknown = set(options)
        if not unknown:
            return {}
    raise ConfigError(f"data option(s) {', '.join(sorted(unknown))} do not apply to task {task}")


def prepare_data(exp: Experiment, root: Path, stage: Stage, log: Callable[[str], None] = print) -> str | None:
    """The data directory of a stage, generated on first use; None when the task has a default
    location and no data options (Fashion-MNIST's Debian package)."""
    from rmaat.data import get_task
    from rmaat.data.generate import generate_task

    task = stage_task(exp, stage)
    if not stage.data:
        return None
    out = root / "data" / data_key(task, stage.data)
    if (out / "done.json").is_file():
        return str(out.resolve())
    spec = get_task(task)
    options = generator_options(task, stage.data)
    start = time.perf_counter()
    sizes = generate_task(spec.name, out, size=int(stage.data.get("size", 20_000)),
                          seed=int(stage.data.get("seed", 0)), progress=False, **options)
    (out / "done.json").write_text(json.dumps({"task": task, "data": stage.data, "sizes": sizes}) + "\n")
    log(f"generated {task} data {out.name} ({', '.join(f'{k} {v}' for k, v in sizes.items())}; "
        f"{time.perf_counter() - start:.1f} s)")
    return str(out.resolve())


def stage_task(exp: Experiment, stage: Stage) -> str:
    """The task a stage trains on: the experiment's, unless the stage sets ``task``."""
    return str(stage.overrides.get("task", exp.task))


def run_configs(exp: Experiment, root: Path, log: Callable[[str], None] = print, prepare: bool = True) -> list[Job]:
    """Every job of the experiment with fully resolved run configs (data generated as needed;
    with ``prepare=False`` nothing is generated and ``data.data_dir`` stays unset)."""
    from rmaat.train.config import apply_overrides, load_config_file

    base_path = Path(__file__).resolve().parent.parent / "configs" / f"{exp.base_config}.yaml"
    base = load_config_file(base_path)
    jobs = []
    for point in exp.points:
        data_dirs = [prepare_data(exp, root, stage, log) if prepare else None for stage in point.stages]
        for seed in range(exp.seeds):
            dirs = _job_dirs(root, point, seed)
            configs: list[dict[str, Any]] = []
            trained: Path | None = None  # the best checkpoint of the last training stage so far
            for i, (stage, data_dir) in enumerate(zip(point.stages, data_dirs)):
                if not stage.trains:
                    configs.append({"evaluate": {"checkpoint": str(trained), "segments": stage.evaluate_segments,
                                                 "data_dir": data_dir, "split": "test"}})
                    continue
                overrides = {"task": exp.task, **stage.overrides, "train.seed": seed}
                if data_dir is not None:
                    overrides["data.data_dir"] = data_dir
                if trained is not None:
                    overrides["train.init_from"] = str(trained)
                trained = (dirs[i] / "checkpoints" / "best.pt").resolve()
                config = apply_overrides(base, overrides)
                config.validate()
                configs.append(config.to_dict())
            jobs.append(Job(point.name, seed, tuple(dirs), tuple(configs)))
    return jobs


def _job_dirs(root: Path, point: GridPoint, seed: int) -> list[Path]:
    base = root / point.name / f"seed{seed}"
    return [base] if len(point.stages) == 1 else [base / f"stage{i}" for i in range(len(point.stages))]


def run_state(run_dir: Path, config: dict[str, Any]) -> str:
    """``done`` (summary for this config), ``partial`` (a checkpoint to resume) or ``new``."""
    from rmaat.train.config import RunConfig, config_hash

    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            done = json.loads(summary.read_text())
        except ValueError:
            done = {}
        if "evaluate" in config:
            return "done" if done.get("evaluate") == config["evaluate"] else "new"
        if done.get("config_hash") == config_hash(RunConfig.from_dict(config)):
            return "done"
    if "evaluate" in config:
        return "new"
    return "partial" if (run_dir / "checkpoints" / "last.pt").is_file() else "new"


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
                raise RuntimeError(f"{run_dir} stopped early ({trainer.stop_reason}); run the experiment again")
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


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_experiment(exp: Experiment, root: Path, jobs: int = 1, log: Callable[[str], None] = print) -> list[Job]:
    """Run every unfinished job, ``jobs`` processes at a time; return all jobs (for the report)."""
    import multiprocessing

    plan = run_configs(exp, root, log)
    todo = [job for job in plan if any(run_state(d, c) != "done" for d, c in zip(job.run_dirs, job.configs))]
    log(f"{exp.name} ({exp.scale}): {len(plan)} runs, {len(plan) - len(todo)} already done, "
        f"{len(todo)} to run with {jobs} process(es)")
    if not todo:
        return plan
    context = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no inherited torch threads
    done = len(plan) - len(todo)
    failures = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            done += 1
            try:
                summary = future.result()
            except Exception as error:  # one failed run must not lose the others
                failures.append(f"{job.point} seed {job.seed}: {str(error).splitlines()[0] if str(error) else error!r}")
                log(f"[{done}/{len(plan)}] {job.point} seed {job.seed}: FAILED ({failures[-1]})")
                continue
            log(f"[{done}/{len(plan)}] {job.point} seed {job.seed}: {exp.metric} "
                f"{summary.get(exp.metric, float('nan')):.4f} ({summary['job_seconds']:.0f} s)")
    if failures:
        from rmaat.errors import RMAATUserError

        raise RMAATUserError(f"{len(failures)} run(s) failed (logs beside their run directories), e.g. {failures[0]}; "
                             "run the experiment again to retry them")
    return plan


def estimate_seconds(exp: Experiment, jobs: int) -> float:
    """Rough wall time: tokens trained and evaluated over the scale's measured tokens/s."""
    from rmaat.train.config import apply_overrides, load_config_file

    base_path = Path(__file__).resolve().parent.parent / "configs" / f"{exp.base_config}.yaml"
    base = load_config_file(base_path)
    total = 0.0
    for point in exp.points:
        for stage in point.stages:
            cfg = apply_overrides(base, {"task": exp.task, **stage.overrides})
            docs = 2 if cfg.task in ("retrieval", "kjv_match") else 1
            size = int(stage.data.get("size", 20_000))
            if stage.trains:
                train_tokens = cfg.train.max_steps * cfg.train.batch_size * cfg.data.seq_len * docs
                eval_share = 0.2
            else:  # the test split at the new length, forward only
                train_tokens = 0
                eval_share = 0.1
                cfg.data.seq_len = cfg.data.seq_len // cfg.model.segments * stage.evaluate_segments
            examples = eval_share * size
            if cfg.train.final_eval_batches is not None and stage.trains:  # val + test, capped
                examples = min(examples, 2 * cfg.train.final_eval_batches * cfg.train.batch_size)
            eval_tokens = examples * cfg.data.seq_len * docs / 3  # forward only (~1/3 of a step)
            total += (train_tokens + eval_tokens) / exp.tokens_per_s
    return total * exp.seeds / max(1, jobs)
