"""Experiment files: one YAML per experiment (``rmaat/configs/experiments/NAME.yaml``).

An experiment answers one question with a grid of training runs on one task::

    name: memory
    question: Does memory carry the fact across segments?
    task: babi_qa1
    metric: test_accuracy            # a key of the runs' summary.json
    seeds: 3
    paper: {rmaat: null}             # the paper's number per grid point, where it reports one
    scales:
      cpu:                           # small: the whole experiment in <= 30 min on 2 cores
        data: {length: 192, segment_length: 64, facts: 1, size: 8000}   # generator options
        config: demo/babi_qa1_short  # base run config (rmaat/configs/<config>.yaml)
        set: {data.seq_len: 192, model.segments: 3, train.max_steps: 600}
        tokens_per_s: 3.5e4          # measured per process here; only for --dry-run's estimate
      paper: {...}                   # the paper's sizes, for a GPU
    grid:                            # name -> run-config overrides (on top of the scale's `set`)
      rmaat: {}
      rmt: {model.preset: rmt}
      no_memory: {data.seq_len: "{segment_length}", model.segments: 1, data.truncate: left}

String values may name the scale's data options in braces (``"{segment_length}"``). A grid point
may instead be ``{stages: [{data: {...}, set: {...}}, ...]}``: a curriculum whose stage i starts
from stage i-1's best checkpoint (``train.init_from``) on its own data (the scale's ``data``
updated by the stage's); the last stage's summary is the run's result. A stage (or point) may
set ``task`` to train on another task than the experiment's (``lra_shapes`` spans five), and a
point whose keys are scale names (``{cpu: {...}, paper: {...}}``) has a body per scale.

A stage may have a ``name``: then every named stage is a row of the results (``point/name``),
so one curriculum gives the accuracy after each of its stages (``segments``: T = 2, 4, 8, 16).
A stage ``{name: T8, evaluate: {segments: 8}, data: {length: 512}}`` trains nothing: it
evaluates the best checkpoint of the last training stage before it on its own data at another
segment count (``length_generalisation``; ``pipeline evaluate --segments``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rmaat.errors import ConfigError

SCALES = ("cpu", "paper")
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")


@dataclass(frozen=True)
class Stage:
    """One stage of a grid point: its data options and run-config overrides; with
    ``evaluate_segments`` an evaluation of the previous training stage's best checkpoint at that
    many segments instead of training. A named stage is reported as its own result row."""

    data: dict[str, Any]
    overrides: dict[str, Any]
    name: str | None = None
    evaluate_segments: int | None = None

    @property
    def trains(self) -> bool:
        """Whether this stage trains (else it evaluates)."""
        return self.evaluate_segments is None


@dataclass(frozen=True)
class GridPoint:
    """A named setting of the experiment, trained in one or more stages."""

    name: str
    stages: tuple[Stage, ...]

    def result_stages(self) -> list[tuple[str, int]]:
        """``(row label, stage index)`` of each result row: every named stage as ``point/name``,
        or the last stage as ``point`` when no stage is named."""
        named = [(f"{self.name}/{st.name}", i) for i, st in enumerate(self.stages) if st.name]
        return named or [(self.name, len(self.stages) - 1)]


@dataclass
class Experiment:
    """A parsed experiment file at one scale."""

    name: str
    question: str
    task: str
    metric: str
    seeds: int
    scale: str
    base_config: str
    points: list[GridPoint]
    paper: dict[str, float | None] = field(default_factory=dict)
    tokens_per_s: float = 3.0e4
    source: str = ""

    @property
    def n_runs(self) -> int:
        """Grid points x seeds."""
        return len(self.points) * self.seeds

    def result_rows(self) -> list[tuple[str, GridPoint, int]]:
        """``(row label, point, stage index)`` of every result row, in grid order."""
        return [(label, point, i) for point in self.points for label, i in point.result_stages()]


def experiments_dir() -> Path:
    """Where the packaged experiment files live."""
    return Path(str(resources.files("rmaat") / "configs" / "experiments"))


def available_experiments() -> list[str]:
    """Names of the packaged experiments."""
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def experiment_path(name: str) -> Path:
    """The file of experiment ``name`` (a packaged name or a path to a YAML file)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    packaged = experiments_dir() / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    raise ConfigError(f"unknown experiment {name!r}; valid experiments: {', '.join(available_experiments())} "
                      "(or the path of an experiment YAML file)")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _fill(value: Any, data: dict[str, Any], where: str) -> Any:
    """Replace a ``"{option}"`` string by the data option's value."""
    if isinstance(value, str):
        match = _PLACEHOLDER.match(value)
        if match:
            if match[1] not in data:
                raise ConfigError(f"{where}: {value} names no data option of this scale "
                                  f"(have: {', '.join(sorted(data)) or 'none'})")
            return data[match[1]]
    return value


def _stage(raw: Any, base_data: dict[str, Any], base_set: dict[str, Any], where: str) -> Stage:
    raw = _mapping(raw, where)
    unknown = set(raw) - {"data", "set", "name", "evaluate"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; a stage has 'data', 'set', 'name' "
                          "and 'evaluate'")
    data = {**base_data, **_mapping(raw.get("data"), f"{where}.data")}
    name = raw.get("name")
    if name is not None and (not isinstance(name, (str, int)) or not re.fullmatch(r"[\w.-]+", str(name))):
        raise ConfigError(f"{where}.name must be a short word (letters, digits, _ . -), got {name!r}")
    segments = None
    if "evaluate" in raw:
        evaluate = _mapping(raw["evaluate"], f"{where}.evaluate")
        segments = evaluate.get("segments")
        if set(evaluate) != {"segments"} or not isinstance(segments, int) or isinstance(segments, bool) \
                or segments < 1:
            raise ConfigError(f"{where}.evaluate must be {{segments: N}} with N >= 1, got {raw['evaluate']!r}")
        if "set" in raw:
            raise ConfigError(f"{where}: an evaluate stage trains nothing, so it takes no 'set'")
    overrides = {**base_set, **_mapping(raw.get("set"), f"{where}.set")}
    return Stage(data, {k: _fill(v, data, f"{where}.{k}") for k, v in overrides.items()},
                 None if name is None else str(name), segments)


def load_experiment(name: str, scale: str = "cpu", seeds: int | None = None) -> Experiment:
    """Parse experiment ``name`` at ``scale``; ConfigError (one line) on any malformed part."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    path = experiment_path(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({getattr(error, 'problem', error)})") from None
    raw = _mapping(raw, str(path))
    required = ("name", "question", "task", "metric", "seeds", "scales", "grid")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}")
    unknown = set(raw) - set(required) - {"paper"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
    scales = _mapping(raw["scales"], f"{path}: scales")
    if scale not in scales:
        raise ConfigError(f"{path}: no '{scale}' scale (has: {', '.join(scales)})")
    s = _mapping(scales[scale], f"{path}: scales.{scale}")
    if "config" not in s:
        raise ConfigError(f"{path}: scales.{scale} needs 'config' (a base run config)")
    base_data = _mapping(s.get("data"), f"{path}: scales.{scale}.data")
    base_set = _mapping(s.get("set"), f"{path}: scales.{scale}.set")
    points = []
    for point, body in _mapping(raw["grid"], f"{path}: grid").items():
        where = f"{path}: grid.{point}"
        body = _mapping(body, where)
        if body and set(body) <= set(SCALES):  # a body per scale
            if scale not in body:
                raise ConfigError(f"{where}: no '{scale}' body (has: {', '.join(body)})")
            body, where = _mapping(body[scale], f"{where}.{scale}"), f"{where}.{scale}"
        if "stages" in body:
            if set(body) != {"stages"} or not isinstance(body["stages"], list) or not body["stages"]:
                raise ConfigError(f"{where}: 'stages' must be a non-empty list and the point's only key")
            stages = tuple(_stage(st, base_data, base_set, f"{where}.stages[{i}]") for i, st in enumerate(body["stages"]))
            if not stages[0].trains:
                raise ConfigError(f"{where}.stages[0]: the first stage must train (an evaluate stage needs a "
                                  "checkpoint from a stage before it)")
        else:
            stages = (_stage({"set": body}, base_data, base_set, where),)
        points.append(GridPoint(str(point), stages))
    if not points:
        raise ConfigError(f"{path}: the grid is empty")
    n_seeds = raw["seeds"] if seeds is None else seeds
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {n_seeds!r}")
    return Experiment(
        name=str(raw["name"]), question=str(raw["question"]), task=str(raw["task"]), metric=str(raw["metric"]),
        seeds=n_seeds, scale=scale, base_config=str(s["config"]), points=points,
        paper=_mapping(raw.get("paper"), f"{path}: paper"), tokens_per_s=float(s.get("tokens_per_s", 3.0e4)),
        source=str(path))
