"""An experiment's data: one generated data set per distinct data setting (``data:`` of a stage).

A stage's data options (the generator's, e.g. ``length``, ``n_facts``, ``size``, ``seed``) are
checked before anything is generated (:func:`check_data_options`), named by a hash of the task
and options (:func:`data_key`), and generated once under ``<root>/data/<task>-<hash>/``
(:func:`prepare_data`; ``done.json`` marks a finished set), shared by every run that asks for it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError
from rmaat.experiments.spec import Experiment, Stage


#: Data options understood per generated task (others are errors), and their generator mapping.
_BABI_KEYS = {"length", "segment_length", "n_facts", "n_people", "fact_segments"}


_LISTOPS_KEYS = {"min_length", "max_length"}


#: Data options every generated task takes: the set's size (examples) and its generator seed.
_COMMON_KEYS = {"size": 1, "seed": 0}  # name -> smallest value


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
