"""Checks before an experiment runs: every grid point's stages as its workers will run them.

Nothing is generated and no model is built, but the task, data options, run-config keys and
values, model presets and options, retention factors and evaluate stages are all checked, so
that ``--dry-run`` accepts only what runs and a real run fails before its first job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError, RMAATUserError
from rmaat.experiments.jobs import DEFAULT_ROOT, Job, about_point, run_configs
from rmaat.experiments.spec import Experiment
from rmaat.experiments.tuning import every_candidate_choices


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
    from rmaat.encoder.config import get_preset
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
    from rmaat.encoder.config import get_preset
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
        jobs = [job for choices in every_candidate_choices(exp)
                for job in run_configs(exp, root, log=lambda _: None, prepare=False, choices=choices)]
    points = {point.name: point for point in exp.points}
    for job in jobs:
        if job.seed != 0:  # the seeds of a point differ in train.seed only
            continue
        point, trained = points[job.point], None
        for i, raw in enumerate(job.configs):
            with about_point(exp, point, i):
                if "evaluate" in raw:
                    _check_evaluate(trained, raw["evaluate"]["segments"])
                    continue
                trained = raw
                check_model(RunConfig.from_dict(raw))
    return jobs
