"""Run an experiment's grid: data once per data setting, then every (grid point, seed) as a job
in its own process (one torch thread each), resumable.

Layout under ``<root>/<name>/`` (root ``runs/experiments`` by default)::

    data/<task>-<hash>/           one generated data set per distinct data setting (:mod:`.data`)
    <point>/seed<k>/              a run directory (``pipeline train``'s), or for a curriculum
    <point>/seed<k>/stage<i>/     one run directory per stage (an evaluate stage: summary.json only)
    results.csv, results.md, <name>.png      written by :mod:`rmaat.experiments.report`

The pieces, in the order a run uses them: :mod:`.validate` checks every grid point's configs
before anything runs; :mod:`.jobs` resolves each (point, seed) into its stages' run configs;
:mod:`.tuning_plan` adds the tuning sweeps and their choices; :mod:`.states` tells which runs are
done, partial, new or stale; :mod:`.workers` runs each job in a process of its own, which runs
its stages (:mod:`.stages`). This module drives them: :func:`check_stale`, :func:`run_experiment`
(tuning waves, then the final runs) and :func:`estimate_seconds`.

A run whose ``summary.json`` exists (for the same config) is skipped; one with a checkpoint is
resumed; one with neither starts afresh. Killing ``pipeline experiment run`` and starting it
again therefore loses at most the steps since each run's last checkpoint. A run of another
config (the experiment file was edited after it ran) is *stale*
(:func:`rmaat.experiments.states.run_state`): the run is refused up front (:func:`check_stale`)
unless told to replace those runs, and the report marks them and leaves them out of its means.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError, RMAATUserError
from rmaat.experiments.jobs import Choices, Job, base_config, run_configs
from rmaat.experiments.spec import Experiment
from rmaat.experiments.states import job_states, run_state, stale_reason, stale_runs


def current_jobs(exp: Experiment, root: Path) -> list[Job]:
    """Every job the file now describes whose config is known: for a tuned experiment its tuning
    runs so far and the final runs of the points already decided."""
    if exp.tuning is None:
        return run_configs(exp, root, log=lambda _: None, prepare=False)
    from rmaat.experiments.tuning_plan import plan

    tuning = plan(exp, root)
    return tuning.jobs + run_configs(exp, root, log=lambda _: None, prepare=False, choices=tuning.choices)


def check_stale(exp: Experiment, root: Path, force: bool = False, log: Callable[[str], None] = print) -> list[Job]:
    """Refuse, in one line, to run an experiment whose run directories hold runs (finished or
    interrupted) of another configuration than the file now gives: resuming them fails in every
    worker and reporting them shows the old numbers. With ``force`` their stale stages, and every
    stage after those, are cleared (``rundir.clear_run_dir``: the run's own artefacts only) so
    that they start afresh. Returns the jobs so cleared.

    Only the jobs whose configs are known now are checked; a tuned experiment learns the rest wave
    by wave, and :func:`run_experiment` applies :func:`replace_stale` to each wave before it runs."""
    return replace_stale(exp, root, current_jobs(exp, root), force, log)


def replace_stale(exp: Experiment, root: Path, jobs: list[Job], force: bool,
                  log: Callable[[str], None] = print) -> list[Job]:
    """:func:`check_stale` for the given jobs: ConfigError naming --force when some are stale,
    or, with ``force``, clear their stale stages and every stage after those."""
    from rmaat.train.rundir import clear_run_dir

    stale = stale_runs(jobs)
    if not stale:
        return []
    names = ", ".join(f"{job.point} seed {job.seed}" for job, _ in stale[:3]) + (", ..." if len(stale) > 3 else "")
    if not force:
        job, first = stale[0]
        reason = stale_reason(job.run_dirs[first], job.configs[first])
        raise ConfigError(f"{len(stale)} of {len(jobs)} runs under {root} ({names}) were run with another "
                          f"configuration than {exp.source} now gives" + (f" ({reason})" if reason else "")
                          + "; rerun with --force to replace them, or give a new --root to keep them")
    from rmaat.train.distributed import DistInfo
    from rmaat.train.rundir import lock_run_dir

    for job, first in stale:
        for run_dir in job.run_dirs[first:]:
            lock = lock_run_dir(run_dir, DistInfo())  # never under a trainer that still runs there
            try:
                clear_run_dir(run_dir)
            finally:
                if lock is not None:
                    lock.release()
    log(f"replacing {len(stale)} run(s) of an older configuration: {names}")
    return [job for job, _ in stale]


def run_experiment(exp: Experiment, root: Path, jobs: int = 1, log: Callable[[str], None] = print,
                   progress: bool = False, force: bool = False) -> list[Job]:
    """Run every unfinished job, ``jobs`` worker processes at a time; return the final jobs (for the
    report). A tuned experiment first runs its tuning sweeps, wave by wave (a curriculum's stage i
    once stage i-1 is chosen), then the final runs at each point's chosen values.

    SIGINT/SIGTERM stop it (see :mod:`rmaat.experiments.workers`): raises :class:`ExperimentStopped`
    once every worker has saved its checkpoint and exited.

    A wave's runs made with another configuration than the file now gives (a final run whose
    choice a widened sweep changed) are refused, or replaced with ``force`` (:func:`replace_stale`).
    """
    choices = None
    if exp.tuning is not None:
        choices = _run_tuning(exp, root, jobs, log, progress, force)
    plan = run_configs(exp, root, log, choices=choices)
    replace_stale(exp, root, plan, force, log)
    run_wave(exp, plan, jobs, log, progress, what=f"{exp.name} ({exp.scale})", metric=exp.metric)
    return plan


def _run_tuning(exp: Experiment, root: Path, jobs: int, log: Callable[[str], None], progress: bool,
                force: bool = False) -> Choices:
    """Run the tuning sweeps until every point has its choice; return the choices."""
    from rmaat.experiments.tuning import candidate_label
    from rmaat.experiments.tuning_plan import plan

    wave = 0
    while True:
        tuning = plan(exp, root, prepare=True, log=log)
        if not tuning.pending:
            for sweep in tuning.sweeps:
                stage = f" stage {sweep.stage}" if sweep.n_stages > 1 else ""
                edge = [k for k, flag in sweep.at_edge.items() if flag]
                log(f"tuned {sweep.point}{stage}: {candidate_label(sweep.chosen)}"
                    + (f" (at the edge of the sweep in {', '.join(edge)}: widen it)" if edge else ""))
            return tuning.choices
        todo = [job for job in tuning.pending if job_states(job) != ["done"]]
        if not todo:  # every run of the wave finished, and still no choice: no metric to select by
            raise ConfigError(f"{exp.source}: the tuning runs finished but their summaries lack "
                              f"{exp.tuning.metric}; choose a tune.metric the runs report")
        wave += 1
        replace_stale(exp, root, tuning.pending, force, log)
        run_wave(exp, tuning.pending, jobs, log, progress, what=f"{exp.name} tuning wave {wave}",
                 metric=exp.tuning.metric)


def run_wave(exp: Experiment, plan: list[Job], jobs: int, log: Callable[[str], None], progress: bool, *,
             what: str, metric: str) -> None:
    """Run the jobs of ``plan`` that are not done, ``jobs`` at a time, logging one line per job."""
    from rmaat.experiments.workers import StopRequests, run_jobs

    todo = [job for job in plan if any(run_state(d, c) != "done" for d, c in zip(job.run_dirs, job.configs))]
    log(f"{what}: {len(plan)} runs, {len(plan) - len(todo)} already done, "
        f"{len(todo)} to run with {jobs} process(es)")
    if not todo:
        return
    counter = {"done": len(plan) - len(todo)}
    failures: list[str] = []
    bar = _progress_bar(len(plan), counter["done"], exp.name) if progress else None
    say = bar.write if bar is not None else log

    def report(outcome: Any) -> None:
        job = outcome.job
        if outcome.status == "stopped":
            say(f"{job.point} seed {job.seed}: stopped, checkpoint saved")
            return
        counter["done"] += 1
        if bar is not None:
            bar.update(1)
        prefix = f"[{counter['done']}/{len(plan)}] {job.point} seed {job.seed}"
        if outcome.status == "failed":  # one failed run must not lose the others
            failures.append(f"{job.point} seed {job.seed}: {outcome.error}")
            say(f"{prefix}: FAILED ({failures[-1]})")
            return
        summary = json.loads((job.final_dir / "summary.json").read_text())
        say(f"{prefix}: {metric} {summary.get(metric, float('nan')):.4f} ({outcome.seconds:.0f} s)")

    try:
        with StopRequests() as stop:
            run_jobs(todo, jobs, stop, report)
    finally:
        if bar is not None:
            bar.close()
    if stop.count:
        raise ExperimentStopped(stop.exit_code, f"{exp.name} stopped: every running run saved its checkpoint; "
                                                "run the same command again to resume")
    if failures:
        raise RMAATUserError(f"{len(failures)} run(s) failed (logs beside their run directories), e.g. {failures[0]}; "
                             "run the experiment again to retry them")


class ExperimentStopped(Exception):
    """``pipeline experiment run`` was told to stop (SIGINT/SIGTERM); ``exit_code`` = 128 + signal."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


def _progress_bar(total: int, initial: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="run", dynamic_ncols=True)


def estimate_seconds(exp: Experiment, jobs: int, part: str = "all") -> float:
    """Rough wall time: tokens trained and evaluated over the scale's measured tokens/s; ``part``:
    ``all``, ``tuning`` (the tuning runs alone) or ``final``."""
    from rmaat.train.config import apply_overrides

    base = base_config(exp)
    total = 0.0
    for point in exp.points:
        for i, stage in enumerate(point.stages):
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
            seconds = (train_tokens + eval_tokens) / exp.tokens_per_s
            if part != "tuning":
                total += seconds * exp.seeds
            if part != "final" and exp.tuning is not None and \
                    i in exp.tuning.tuned_stages(len(point.stages), [st.trains for st in point.stages]):
                total += seconds * len(exp.tuning.candidates()) * len(exp.tuning.seeds)
    return total / max(1, jobs)
