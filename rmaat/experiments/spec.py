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

A scale may declare ``tune:`` (the candidates of ``optim.lr`` and other hyper-parameters, the
tuning seeds, a validation metric): every grid point is then trained at each candidate and run at
its own best, chosen on the validation split (:mod:`rmaat.experiments.tuning`).

The file is checked as a whole when it is read: every key must be one this format knows (a typo
such as ``sett:`` is an error naming the allowed keys, never silently ignored), a mapping may not
repeat a key, the experiment's and grid points' names become folders and must be safe path
components (:data:`NAME_RULE`), and ``metric`` must be a number the runs' summaries hold
(:data:`METRICS`). Run-config keys and values are checked against the base config by
:func:`rmaat.experiments.validate.validate_experiment`, before anything runs.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rmaat.errors import ConfigError

SCALES = ("cpu", "paper")
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")
#: Keys of the file, of one scale's body and of a stage.
TOP_KEYS = ("name", "question", "task", "metric", "seeds", "scales", "grid", "paper")
SCALE_KEYS = ("config", "data", "set", "tokens_per_s", "tune")
STAGE_KEYS = ("data", "set", "name", "evaluate")
#: An experiment's and a grid point's name: one safe folder name (no separator, not "." or "..").
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The numbers a run's summary.json holds that ``metric`` may name, per kind of result stage: a
#: classifier run (rmaat.train.summary.run_summary), a byte-LM run (rmaat.train.lm_trainer.
#: lm_run_summary) and an evaluate stage (rmaat.experiments.stages.evaluate_stage).
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("test_accuracy", "val_accuracy", "final_val_accuracy", "test_loss"),
    "language model": ("test_bpb", "val_bpb", "final_val_bpb", "test_loss", "test_accuracy"),
    "evaluate": ("test_accuracy", "test_loss"),
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a mapping that repeats a key is an error: the default keeps the
    last value silently, so a duplicated grid point would quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


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
    tuning: Any = None  # rmaat.experiments.tuning.Tuning: per-point optimiser settings, chosen on val
    source: str = ""
    given: str = ""  # the name or path the user gave (``load_experiment``'s argument)

    @property
    def argument(self) -> str:
        """The experiment as a command-line argument, as it was given (a file's path, not the
        name inside it, which ``pipeline experiment run`` would not find), shell-quoted."""
        return shlex.quote(self.given or self.name)

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


def _known_keys(raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """ConfigError naming the unknown keys and the allowed ones (a typo is never ignored)."""
    unknown = set(raw) - set(allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: {', '.join(allowed)}")


def safe_name(value: Any, where: str) -> str:
    """``value`` as a folder name (:data:`NAME_RULE`); ConfigError naming the bad name, since an
    experiment or grid point named ``../x``, ``""`` or ``null`` would write outside its folder."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not NAME_RULE.fullmatch(text):
        raise ConfigError(f"{where} must be a name of letters, digits, '_', '.' and '-' that starts with a letter "
                          f"or digit (at most 64 characters; it names a folder), got {value!r}")
    return text


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _positive_number(value: Any, where: str) -> float:
    """A finite number > 0; YAML 1.1 reads ``3.5e4`` (no exponent sign) as a string, so a
    numeric string counts too."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    return number


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
    _known_keys(raw, STAGE_KEYS, where)
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


def _point(name: Any, body: Any, scale: str, base_data: dict[str, Any], base_set: dict[str, Any],
           where: str) -> GridPoint:
    """One grid point at ``scale``: flat overrides, ``{stages: [...]}``, or a body per scale."""
    point = safe_name(name, f"{where}: grid point name")
    where = f"{where}: grid.{point}"
    body = _mapping(body, where)
    if set(body) & set(SCALES):  # a body per scale (no run-config key is called cpu or paper)
        _known_keys(body, SCALES, f"{where} (a body per scale)")
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
    return GridPoint(point, stages)


def _read(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; ConfigError (one line, with the line number) for a file
    that is unreadable, not UTF-8, not YAML or repeats a key."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the experiment file as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    return _mapping(raw, str(path))


def _check_metric(metric: str, exp_task: str, points: list[GridPoint], where: str) -> None:
    """``metric`` must be a number in the summary of every result stage: an unknown one would run
    the whole grid and report nothing."""
    from rmaat.data.kjv_lm import is_lm_task

    for point in points:
        for label, i in point.result_stages():
            stage = point.stages[i]
            kind = "evaluate" if not stage.trains else \
                "language model" if is_lm_task(str(stage.overrides.get("task", exp_task))) else "classification"
            if metric not in METRICS[kind]:
                raise ConfigError(f"{where}: metric {metric!r} is not in the summary of a {kind} "
                                  f"{'stage' if kind == 'evaluate' else 'run'} ({label}); choose one of "
                                  f"{', '.join(METRICS[kind])}")


def _paper(raw: Any, points: list[GridPoint], where: str) -> dict[str, float | None]:
    """The paper's number per result row; a key that names no row would never be shown."""
    paper = _mapping(raw, where)
    labels = [label for point in points for label, _ in point.result_stages()]
    _known_keys(paper, tuple(labels), where)
    for label, value in paper.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{label} must be a number or null, got {value!r}")
    return paper


@dataclass(frozen=True)
class _Scale:
    """One scale's part of the file, parsed."""

    base_config: str
    points: list[GridPoint]
    tokens_per_s: float
    tuning: Any = None


def _scale(raw: dict[str, Any], scales: dict[str, Any], scale: str, path: Path) -> _Scale:
    """Parse the file at ``scale``: its body's keys, base data and overrides, and every grid point."""
    where = f"{path}: scales.{scale}"
    s = _mapping(scales[scale], where)
    _known_keys(s, SCALE_KEYS, where)
    if "config" not in s:
        raise ConfigError(f"{where} needs 'config' (a base run config)")
    base_data = _mapping(s.get("data"), f"{where}.data")
    base_set = _mapping(s.get("set"), f"{where}.set")
    points = [_point(point, body, scale, base_data, base_set, str(path))
              for point, body in _mapping(raw["grid"], f"{path}: grid").items()]
    if not points:
        raise ConfigError(f"{path}: the grid is empty")
    task = _text(raw, "task", str(path))
    _check_metric(_text(raw, "metric", str(path)), task, points, str(path))
    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.experiments.tuning import parse_tuning

    tuning = parse_tuning(s.get("tune"), f"{where}.tune", is_lm_task(task))
    return _Scale(_text(s, "config", where), points,
                  _positive_number(s.get("tokens_per_s", 3.0e4), f"{where}.tokens_per_s"), tuning)


def load_experiment(name: str, scale: str = "cpu", seeds: int | None = None) -> Experiment:
    """Parse experiment ``name`` at ``scale``; ConfigError (one line) on any malformed part.

    Every scale the file has is parsed, not only ``scale``: a typo in the paper scale's body is
    found on the CPU too, before anyone books a GPU for it."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    path = experiment_path(name)
    raw = _read(path)
    required = TOP_KEYS[:-1]  # all but paper
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}")
    _known_keys(raw, TOP_KEYS, str(path))
    exp_name = safe_name(raw["name"], f"{path}: name")
    scales = _mapping(raw["scales"], f"{path}: scales")
    if scale not in scales:
        raise ConfigError(f"{path}: no '{scale}' scale (has: {', '.join(map(str, scales))})")
    _known_keys(scales, SCALES, f"{path}: scales")
    parsed = {other: _scale(raw, scales, other, path) for other in (scale, *(k for k in scales if k != scale))}
    n_seeds = raw["seeds"] if seeds is None else seeds
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {n_seeds!r}")
    this = parsed[scale]
    return Experiment(
        name=exp_name, question=_text(raw, "question", str(path)), task=_text(raw, "task", str(path)),
        metric=_text(raw, "metric", str(path)), seeds=n_seeds, scale=scale, base_config=this.base_config,
        points=this.points, paper=_paper(raw.get("paper"), this.points, f"{path}: paper"),
        tokens_per_s=this.tokens_per_s, tuning=this.tuning, source=str(path), given=str(name))
