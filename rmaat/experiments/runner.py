"""Run an experiment's grid: data once per data setting, then every (grid point, seed) as a job
in its own process (one torch thread each), resumable.

Layout under ``<root>/<name>/`` (root ``runs/experiments`` by default)::

    data/<task>-<hash>/           one generated data set per distinct data setting
    <point>/seed<k>/              a run directory (``pipeline train``'s), or for a curriculum
    <point>/seed<k>/stage<i>/     one run directory per stage (an evaluate stage: summary.json only)
    results.csv, results.md, <name>.png      written by :mod:`rmaat.experiments.report`

A run whose ``summary.json`` exists (for the same config) is skipped; one with a checkpoint is
resumed; one with neither starts afresh. Killing ``pipeline experiment run`` and starting it
again therefore loses at most the steps since each run's last checkpoint. A run of another
config (the experiment file was edited after it ran) is *stale* (:func:`run_state`): the run is
refused up front (:func:`check_stale`) unless told to replace those runs, and the report marks
them and leaves them out of its means. :func:`validate_experiment` checks every grid point's
configs before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError, RMAATUserError
from rmaat.experiments.spec import Experiment, GridPoint, Stage

DEFAULT_ROOT = Path("runs/experiments")
#: Data options understood per generated task (others are errors), and their generator mapping.
_BABI_KEYS = {"length", "segment_length", "n_facts", "n_people", "fact_segments"}
_LISTOPS_KEYS = {"min_length", "max_length"}
#: Data options every generated task takes: the set's size (examples) and its generator seed.
_COMMON_KEYS = {"size": 1, "seed": 0}  # name -> smallest value


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


def _integer(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"data option {key} must be an integer >= {low}, got {value!r}")
    return value


def check_data_options(task: str, data: dict[str, Any]) -> None:
    """ConfigError (one line) unless ``data`` is a data setting ``task``'s generator takes, with
    values of the right types: checked before any generation, so that ``size: abc`` is not a
    traceback from inside a generator."""
    from rmaat.data import get_task
    from rmaat.data.kjv_lm import is_lm_task

    if not data:
        return
    if is_lm_task(task) or get_task(task).generator is None:
        raise ConfigError(f"task {task} is not generated, so it takes no data options (got "
                          f"{', '.join(sorted(map(str, data)))}); leave 'data' out for it")
    for key, low in _COMMON_KEYS.items():
        if key in data:
            _integer(data[key], key, low)
    generator_options(task, data)


def generator_options(task: str, data: dict[str, Any]) -> dict[str, Any]:
    """``generate_task`` keyword arguments for a data setting (ConfigError on unknown options or
    values of the wrong type)."""
    options = {k: v for k, v in data.items() if k not in _COMMON_KEYS}
    if task.startswith("babi_"):
        unknown = set(options) - _BABI_KEYS
        if not unknown:
            from rmaat.data.babi import FLAG_NAMES, BabiConfig

            segments = options.pop("fact_segments", None)
            if segments is not None and (not isinstance(segments, list)
                                         or any(isinstance(s, bool) or not isinstance(s, int) for s in segments)):
                raise ConfigError(f"data option fact_segments must be a list of segment indices, got {segments!r}")
            for key, value in options.items():
                _integer(value, key, 1)
            return {"cfg": BabiConfig(task=task.removeprefix("babi_"), **options,
                                      fact_segments=None if segments is None else tuple(segments),
                                      names={key: f"data.{key}" for key in FLAG_NAMES})}
    elif task == "listops":
        unknown = set(options) - _LISTOPS_KEYS
        if not unknown:
            from rmaat.data.listops import ListOpsConfig

            for key, value in options.items():
                _integer(value, key, 0)
            return {"cfg": ListOpsConfig(**options)} if options else {}
    else:
        unknown = set(options)
        if not unknown:
            return {}
    raise ConfigError(f"data option(s) {', '.join(sorted(map(str, unknown)))} do not apply to task {task}")


def planned_data_dir(exp: Experiment, root: Path, stage: Stage) -> str | None:
    """Where a stage's generated data lives (generated or not yet); None when the stage has no data
    options (the task's default location, e.g. Fashion-MNIST's Debian package)."""
    if not stage.data:
        return None
    return str((root / "data" / data_key(stage_task(exp, stage), stage.data)).resolve())


def prepare_data(exp: Experiment, root: Path, stage: Stage, log: Callable[[str], None] = print) -> str | None:
    """The data directory of a stage, generated on first use; None when the task has a default
    location and no data options (Fashion-MNIST's Debian package)."""
    from rmaat.data import get_task
    from rmaat.data.generate import generate_task
    from rmaat.train.metrics import atomic_write_text

    task = stage_task(exp, stage)
    where = planned_data_dir(exp, root, stage)
    if where is None:
        return None
    out = Path(where)
    if (out / "done.json").is_file():
        return where
    check_data_options(task, stage.data)
    spec = get_task(task)
    options = generator_options(task, stage.data)
    start = time.perf_counter()
    sizes = generate_task(spec.name, out, size=int(stage.data.get("size", 20_000)),
                          seed=int(stage.data.get("seed", 0)), progress=False, **options)
    atomic_write_text(out / "done.json", json.dumps({"task": task, "data": stage.data, "sizes": sizes}) + "\n")
    log(f"generated {task} data {out.name} ({', '.join(f'{k} {v}' for k, v in sizes.items())}; "
        f"{time.perf_counter() - start:.1f} s)")
    return where


def stage_task(exp: Experiment, stage: Stage) -> str:
    """The task a stage trains on: the experiment's, unless the stage sets ``task``."""
    return str(stage.overrides.get("task", exp.task))


@contextlib.contextmanager
def _at(exp: Experiment, point: GridPoint, stage: int) -> Iterator[None]:
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
        with _at(exp, point, i):
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
    with _at(exp, point, i):
        config = apply_overrides(base, overrides)
        config.validate()
    return config.to_dict()


def _job_dirs(root: Path, point: GridPoint, seed: int) -> list[Path]:
    base = root / point.name / f"seed{seed}"
    return [base] if len(point.stages) == 1 else [base / f"stage{i}" for i in range(len(point.stages))]


# ------------------------------------------------------------------- checks before running
def check_model(config: Any) -> None:
    """Build nothing, but check everything the worker's model build checks: the preset, every
    ``model.*`` option's name and value, and the retention factors of the run's T (a missing row
    of the table). ConfigError / RetentionTableError, one line."""
    from rmaat.data.kjv_lm import is_lm_task

    from retention.errors import RetentionTableError

    try:
        if is_lm_task(config.task):
            _check_lm_model(config)
        else:
            _check_classifier_model(config)
    except (RMAATUserError, RetentionTableError):
        raise
    except (TypeError, ValueError) as error:  # a value of the wrong type deep in a range check
        raise ConfigError(f"a model option has a value of the wrong type ({error})") from None


def _check_classifier_model(config: Any) -> None:
    from retention import load_retention_factors
    from rmaat.config import get_preset
    from rmaat.data import get_task
    from rmaat.train.batching import model_overrides

    preset, overrides = model_overrides(config, get_task(config.task))
    model = get_preset(preset).replace(**overrides)
    if model.use_retention and config.model.retention_variant != "uniform":
        load_retention_factors(model.n_segments, path=config.model.retention_table,
                               variant=config.model.retention_variant)


def _check_lm_model(config: Any) -> None:
    from retention import load_retention_factors
    from rmaat.train.lm_trainer import lm_backprop, lm_config_from_run

    model = lm_config_from_run(config)
    lm_backprop(config)
    if model.recurrent and model.retention_variant != "none" and config.model.retention_variant != "uniform":
        load_retention_factors(config.model.segments, path=config.model.retention_table,
                               variant=model.retention_variant)


def _check_evaluate(trained: dict[str, Any] | None, segments: int) -> None:
    """An evaluate stage re-reads the last trained stage's checkpoint at ``segments`` segments of
    the trained segment length: that model must exist there too."""
    from rmaat.config import get_preset
    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.train.config import RunConfig

    config = RunConfig.from_dict(trained)
    if is_lm_task(config.task):
        raise ConfigError(f"an evaluate stage scores a classifier's checkpoint; {config.task} is a language model")
    if not get_preset(config.model.preset).recurrent:
        raise ConfigError(f"an evaluate stage needs a recurrent model (rmaat, rmt, rlt) to read more segments; "
                          f"the stage before it trains a {config.model.preset}")
    config.data.seq_len = config.data.seq_len // config.model.segments * segments
    config.model.segments = segments
    config.validate()
    check_model(config)


def validate_experiment(exp: Experiment, root: Path = DEFAULT_ROOT) -> list[Job]:
    """Check every grid point's stages as its workers will run them, generating no data and
    building no model: tasks, data options, run-config keys and values, model presets and
    options, retention factors, evaluate stages. One line naming the point on the first problem,
    so that ``--dry-run`` accepts only what runs, and a real run fails before its first job
    rather than in every worker. Returns the jobs (:func:`run_configs` with ``prepare=False``)."""
    from rmaat.data import get_task
    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.train.config import RunConfig

    if not is_lm_task(exp.task):
        try:
            get_task(exp.task)
        except ConfigError as error:
            raise ConfigError(f"{exp.source}: task: {error}") from None
    if exp.tuning is None:
        jobs = run_configs(exp, root, log=lambda _: None, prepare=False)
    else:  # each candidate's configs (the final runs will use one of them)
        from rmaat.experiments.tuning import every_candidate_choices

        jobs = [job for choices in every_candidate_choices(exp)
                for job in run_configs(exp, root, log=lambda _: None, prepare=False, choices=choices)]
    points = {point.name: point for point in exp.points}
    for job in jobs:
        if job.seed != 0:  # the seeds of a point differ in train.seed only
            continue
        point, trained = points[job.point], None
        for i, raw in enumerate(job.configs):
            with _at(exp, point, i):
                if "evaluate" in raw:
                    _check_evaluate(trained, raw["evaluate"]["segments"])
                    continue
                trained = raw
                check_model(RunConfig.from_dict(raw))
    return jobs


# ------------------------------------------------------------------------------ run states
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


def current_jobs(exp: Experiment, root: Path) -> list[Job]:
    """Every job the file now describes whose config is known: for a tuned experiment its tuning
    runs so far and the final runs of the points already decided."""
    if exp.tuning is None:
        return run_configs(exp, root, log=lambda _: None, prepare=False)
    from rmaat.experiments.tuning import plan

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


def run_job(job: Job) -> dict[str, Any]:
    """Train every stage of ``job`` that is not done (in this process); return the final summary."""
    import torch

    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.experiments.workers import JobStopped
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
    from rmaat.experiments.tuning import candidate_label, plan

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
