"""Where an experiment's tuning stands: its sweeps, their runs, and the choices made so far.

Read from the run directories (:func:`plan`): for each grid point, the tuning runs of every
tuned stage (the candidates of :mod:`rmaat.experiments.tuning` at each tuning seed), their
validation metrics once done, and the chosen values (:func:`rmaat.experiments.tuning.select`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmaat.experiments.jobs import Job, base_config, stage_config, stage_data_dirs
from rmaat.experiments.states import run_state
from rmaat.experiments.tuning import Sweep, Tuning, candidate_label, edges, select, tune_dir


def read_metric(run_dir: Path, metric: str, config: dict[str, Any]) -> float:
    """The selection metric of a finished tuning run of ``config`` (nan while not done or stale)."""
    if run_state(run_dir, config) != "done":
        return math.nan
    try:
        value = json.loads((run_dir / "summary.json").read_text()).get(metric)
    except (OSError, ValueError):
        return math.nan
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


@dataclass
class TuningPlan:
    """Where an experiment's tuning stands, read from its run directories.

    ``sweeps``: every tuned stage whose sweep can be built (a curriculum's stage i once stage i-1
    is decided); ``jobs``: their tuning runs; ``pending``: the runs of each point's first
    undecided stage (some may be done); ``choices``: the points whose every tuned stage is decided.
    """

    sweeps: list[Sweep]
    jobs: list[Any]
    pending: list[Any]
    choices: dict[str, dict[int, dict[str, Any]]]


def plan(exp: Any, root: Path, *, prepare: bool = False, log: Any = print) -> TuningPlan:
    """The tuning plan of ``exp`` under ``root`` (``exp.tuning`` must be set); with ``prepare`` the
    data of each stage is generated on first use, as for the final runs."""
    tuning: Tuning = exp.tuning
    base = base_config(exp)
    out = TuningPlan([], [], [], {})
    for point in exp.points:
        data_dirs = stage_data_dirs(exp, root, point, log, prepare)
        decided = _plan_point(exp, root, base, point, data_dirs, tuning, out)
        if decided is not None:
            out.choices[point.name] = decided
    return out


def _plan_point(exp: Any, root: Path, base: Any, point: Any, data_dirs: list[str | None], tuning: Tuning,
                out: TuningPlan) -> dict[int, dict[str, Any]] | None:
    """Add one point's sweeps and runs to ``out``; its choice per training stage, or None while undecided."""
    n = len(point.stages)
    tuned = tuning.tuned_stages(n, [stage.trains for stage in point.stages])
    previous: dict[int, Path | None] = {seed: None for seed in tuning.seeds}  # the chosen stage's best.pt
    chosen_by_stage: dict[int, dict[str, Any]] = {}
    for i in tuned:
        rows, jobs = [], []
        for candidate in tuning.candidates():
            values = []
            for seed in tuning.seeds:
                run_dir = tune_dir(root, point.name, i, n, candidate, seed)
                config = stage_config(exp, base, point, i, seed=seed, data_dir=data_dirs[i], init_from=previous[seed],
                                      extra={**candidate, "train.evaluate_test": False})
                label = f"{point.name}/tune" + (f"/stage{i}" if n > 1 else "") + f"/{candidate_label(candidate)}"
                jobs.append(Job(label, seed, (run_dir,), (config,)))
                values.append(read_metric(run_dir, tuning.metric, config))
            rows.append((candidate, values))
        chosen = select(tuning, rows)
        out.sweeps.append(Sweep(point.name, i, n, tuning.metric, rows, chosen, edges(tuning, chosen)))
        out.jobs.extend(jobs)
        if chosen is None:
            out.pending.extend(jobs)
            return None
        chosen_by_stage[i] = chosen
        previous = {seed: (tune_dir(root, point.name, i, n, chosen, seed) / "checkpoints" / "best.pt").resolve()
                    for seed in tuning.seeds}
    if not tuning.per_stage:  # stage 0's choice for every training stage
        first = chosen_by_stage[tuned[0]]
        chosen_by_stage = {i: first for i, stage in enumerate(point.stages) if stage.trains}
    return chosen_by_stage
