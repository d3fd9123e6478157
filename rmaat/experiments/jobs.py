"""An experiment's jobs: every (grid point, seed) with the resolved run config of each stage.

A job's stages run in order in one run directory each (``<point>/seed<k>/``, or
``<point>/seed<k>/stage<i>/`` for a curriculum); a training stage's config is the scale's base
run config, the stage's overrides, the tuned values (:mod:`rmaat.experiments.tuning_plan`) and
the seed, validated; an evaluate stage re-reads the last training stage's best checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError, RMAATUserError
from rmaat.experiments.data import check_data_options, planned_data_dir, prepare_data, stage_task
from rmaat.experiments.spec import Experiment, GridPoint


DEFAULT_ROOT = Path("runs/experiments")


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


@contextlib.contextmanager
def about_point(exp: Experiment, point: GridPoint, stage: int) -> Iterator[None]:
    """Prefix a user error raised in the block with the grid point (and stage) it is about."""
    from retention.errors import RetentionTableError

    where = f"{exp.source}: grid.{point.name}" + (f".stages[{stage}]" if len(point.stages) > 1 else "")
    try:
        yield
    except (RMAATUserError, RetentionTableError) as error:
        if str(error).startswith(where):
            raise
        raise type(error)(f"{where}: {error}") from None  # the same class: the CLI's one line, the caller's type


def base_config(exp: Experiment) -> Any:
    """The scale's base run config (``rmaat/configs/<config>.yaml``) as a RunConfig."""
    from rmaat.train.config import load_config_file

    configs = Path(__file__).resolve().parent.parent / "configs"
    path = configs / f"{exp.base_config}.yaml"
    if not path.is_file():
        raise ConfigError(f"{exp.source}: scales.{exp.scale}.config {exp.base_config!r} names no run config "
                          f"({path} does not exist; e.g. demo/babi_qa1_short, listops)")
    return load_config_file(path)


#: The tuned values of each grid point's stages: ``{point: {stage index: {run-config key: value}}}``.
Choices = dict[str, dict[int, dict[str, Any]]]


def run_configs(exp: Experiment, root: Path, log: Callable[[str], None] = print, prepare: bool = True,
                choices: Choices | None = None) -> list[Job]:
    """Every job of the experiment with fully resolved run configs (data generated as needed;
    with ``prepare=False`` nothing is generated and ``data.data_dir`` names where the data would be).
    ``choices`` adds each point's tuned values to its stages (:mod:`rmaat.experiments.tuning`); a
    tuned experiment's points without a choice yet are left out. A user error names the grid point
    and stage it comes from."""
    base = base_config(exp)
    jobs = []
    for point in exp.points:
        if exp.tuning is not None and (choices is None or point.name not in choices):
            continue
        data_dirs = stage_data_dirs(exp, root, point, log, prepare)
        chosen = (choices or {}).get(point.name, {})
        for seed in range(exp.seeds):
            dirs = _job_dirs(root, point, seed)
            configs: list[dict[str, Any]] = []
            trained: Path | None = None  # the best checkpoint of the last training stage so far
            for i, (stage, data_dir) in enumerate(zip(point.stages, data_dirs)):
                if not stage.trains:
                    configs.append({"evaluate": {"checkpoint": str(trained), "segments": stage.evaluate_segments,
                                                 "data_dir": data_dir, "split": "test"}})
                    continue
                configs.append(stage_config(exp, base, point, i, seed=seed, data_dir=data_dir, init_from=trained,
                                            extra=chosen.get(i, {})))
                trained = (dirs[i] / "checkpoints" / "best.pt").resolve()
            jobs.append(Job(point.name, seed, tuple(dirs), tuple(configs)))
    return jobs


def stage_data_dirs(exp: Experiment, root: Path, point: GridPoint, log: Callable[[str], None],
                    prepare: bool) -> list[str | None]:
    """The data directory of each of a point's stages (generated on first use with ``prepare``)."""
    data_dirs = []
    for i, stage in enumerate(point.stages):
        with about_point(exp, point, i):
            check_data_options(stage_task(exp, stage), stage.data)
        data_dirs.append(prepare_data(exp, root, stage, log) if prepare else planned_data_dir(exp, root, stage))
    return data_dirs


def stage_config(exp: Experiment, base: Any, point: GridPoint, i: int, *, seed: int, data_dir: str | None,
                 init_from: Path | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The validated run config (a dict) of training stage ``i`` of ``point`` at ``seed``: the base
    config, the stage's overrides, then ``extra`` (tuned or candidate values)."""
    from rmaat.train.config import apply_overrides

    overrides = {"task": exp.task, **point.stages[i].overrides, **extra, "train.seed": seed}
    if data_dir is not None:
        overrides["data.data_dir"] = data_dir
    if init_from is not None:
        overrides["train.init_from"] = str(init_from)
    with about_point(exp, point, i):
        config = apply_overrides(base, overrides)
        config.validate()
    return config.to_dict()


def _job_dirs(root: Path, point: GridPoint, seed: int) -> list[Path]:
    base = root / point.name / f"seed{seed}"
    return [base] if len(point.stages) == 1 else [base / f"stage{i}" for i in range(len(point.stages))]
