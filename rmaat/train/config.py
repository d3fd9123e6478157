"""Run configuration: dataclasses, per-task YAML files, CLI overrides and the config hash.

A run config has four sections plus the task name::

    task: listops
    model:   {preset, backprop, segments, <any build_model override: d_model, n_layers, ...>}
    data:    {seq_len, data_dir, num_workers, truncate}
    optim:   {lr, weight_decay, betas, warmup, schedule, grad_clip}
    train:   {max_steps, batch_size, grad_accum, eval_every, seed, device, precision, ...}

One YAML file per task ships in ``rmaat/configs/`` (paper lengths, 512-token segments).
Every field can be overridden from the command line (``--set section.field=value``); keys
under ``model`` that are not listed in :class:`ModelSection` are passed to
``rmaat.encoder.model.build_model`` unchanged, which rejects unknown names.

The *config hash* covers every field that changes what is trained (model, data length,
optimiser, schedule, seed, ...) and leaves out the ones that only say where and how often
(``RUNTIME_KEYS``: data directory, device, evaluation/saving cadence). ``--resume`` refuses a
checkpoint whose hash differs from the run's, listing the fields that differ.

This module imports no torch, so the CLI can validate a config before loading the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rmaat.errors import ConfigError

#: Keys that say where/how often, not what: excluded from the config hash, so a resumed run
#: may change them (e.g. move to another GPU, point at a copy of the data).
RUNTIME_KEYS: frozenset[str] = frozenset({
    "data.data_dir",
    "data.num_workers",
    "train.device",
    "train.eval_every",
    "train.eval_batches",
    "train.final_eval_batches",
    "train.save_every",
    "train.log_every",
    "train.stop_after",
    "train.compile",
})

BACKPROP_MODES = ("amrb", "bptt")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
TRUNCATE_SIDES = ("right", "left")
RETENTION_VARIANTS = ("paper", "streaming", "uniform")


@dataclass
class ModelSection:
    """Which model to build and how to back-propagate through its segments.

    ``segments`` is T, the number of segments a length-``data.seq_len`` input is cut into
    (tokens per segment = seq_len / T); it also selects the retention factors RF(t, T).
    For Retrieval, ``seq_len`` and ``segments`` are per document (dual encoder).
    It is ignored (1) for the non-recurrent presets ``transformer`` and ``at``, which read the
    whole input in one attention call, so ``--preset transformer`` works with any task config.
    ``backprop`` None means the preset's own mode (AMRB for rmaat, BPTT for the baselines,
    as in the paper's comparison); ``amrb`` or ``bptt`` forces one.
    ``retention_variant`` picks RF(t, T) (``paper``), the T-free ``streaming`` extension, or
    ``uniform`` (RF = 1/T for every segment: an ablation, no table);
    ``retention_table`` a table file (None: the user table if present, else the packaged one).
    ``overrides`` go to ``build_model(preset, retention_factors, **overrides)``; in YAML and
    ``--set`` they are written flat (``model.d_model: 128``), not under an ``overrides`` key.
    """

    preset: str = "rmaat"
    backprop: str | None = None
    segments: int = 4
    retention_variant: str = "paper"
    retention_table: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Where the data is and how long each example is.

    ``seq_len`` is the length fed to the model: longer examples are truncated, shorter ones
    padded, so small values give quick CPU runs. ``data_dir`` None means ``data/<task>``.
    ``truncate`` says which end a long example keeps: ``right`` cuts the end off (LRA's rule),
    ``left`` keeps the last ``seq_len`` tokens; on a memory task (question at the end) that is
    a model that sees only the end of each example, the no-memory control.
    """

    seq_len: int = 2048
    data_dir: str | None = None
    num_workers: int = 0
    truncate: str = "right"


@dataclass
class OptimSection:
    """AdamW with linear warm-up then decay to ``min_lr_ratio * lr``.

    ``warmup`` is a fraction of ``train.max_steps`` (not a step count), so shortening a run
    from the command line keeps a sensible schedule. ``grad_clip`` 0 disables clipping.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    warmup: float = 0.1
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class TrainSection:
    """Steps, batches, cadence, seed and hardware.

    ``batch_size`` is per optimiser step and per process; each step accumulates
    ``grad_accum`` micro-batches of ``batch_size // grad_accum`` examples (so the effective
    batch does not change when memory forces more accumulation). Under ``torchrun`` the global
    batch is ``batch_size * world_size``.
    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``precision``: ``auto`` = bf16 autocast on CUDA, fp32 on CPU (CPU bf16 is slow on most
    processors and only adds noise to a quick run).
    ``eval_batches`` caps the validation batches of the periodic evaluations (None = whole
    split); the final validation and test passes use whole splits unless ``final_eval_batches``
    caps them too (quick CPU experiments on a large split such as Fashion-MNIST's 10k test
    images; the summary's ``n_test`` says how many examples were scored).
    ``stop_after`` ends this session after that many optimiser steps, saving a checkpoint
    (e.g. to fit a cluster time limit); ``--resume`` continues to ``max_steps``.
    ``compile`` runs the encoder blocks through ``torch.compile`` (``rmaat.compile``): how, not
    what, is trained (same numerics within float reassociation), so it is a runtime key and a
    resumed run may switch it.
    ``init_from`` starts from the weights of another run's checkpoint (a curriculum over the
    segment count, as RMT and BABILong train): every parameter is taken from it, and the
    retention factors stay this run's RF(., T). Optimiser and schedule start afresh.
    ``evaluate_test: false`` never loads or scores the test split: a tuning run
    (:mod:`rmaat.experiments.tuning`) is chosen on validation alone, and its summary holds no test
    numbers, so no choice can have seen the test split.
    """

    max_steps: int = 10000
    batch_size: int = 32
    grad_accum: int = 1
    eval_every: int = 500
    eval_batches: int | None = None
    final_eval_batches: int | None = None
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    stop_after: int | None = None
    init_from: str | None = None
    compile: bool = False
    evaluate_test: bool = True


@dataclass
class RunConfig:
    """The fully resolved configuration of one training run (written to ``R/config.yaml``)."""

    task: str
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (model overrides flattened into ``model``), YAML/JSON safe."""
        out: dict[str, Any] = {"task": self.task}
        for name in _SECTIONS:
            section = getattr(self, name)
            values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
            if name == "model":
                overrides = values.pop("overrides")
                values.update(dict(sorted(overrides.items())))
            out[name] = values
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from a nested dict (as read from YAML); unknown keys raise ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with keys task, model, data, optim, train")
        unknown = set(raw) - {"task", *_SECTIONS}
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; "
                              f"valid: task, {', '.join(_SECTIONS)}")
        task = raw.get("task")
        if not isinstance(task, str) or not task:
            raise ConfigError(f"{where}: 'task' must be a task name such as listops")
        sections: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: section '{name}' must be a mapping")
            sections[name] = _build_section(section_cls, values, f"{where}: {name}")
        return cls(task=task, **sections)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` (keys in declaration order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def copy(self) -> RunConfig:
        """A deep copy."""
        return RunConfig.from_dict(self.to_dict())

    # ------------------------------------------------------------------------ derived
    @property
    def segment_len(self) -> int:
        """Tokens per segment (seq_len / segments, validated to divide exactly)."""
        return self.data.seq_len // self.model.segments

    def validate(self) -> None:
        """Reject impossible values with a one-line ConfigError naming the field."""
        m, d, o, t = self.model, self.data, self.optim, self.train
        for key, value in _flatten(self.to_dict()).items():  # inf/nan pass every range check below
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
        if m.backprop is not None and m.backprop not in BACKPROP_MODES:
            raise ConfigError(f"model.backprop must be one of {', '.join(BACKPROP_MODES)}, got {m.backprop!r}")
        _positive("model.segments", m.segments)
        _positive("data.seq_len", d.seq_len)
        if d.seq_len % m.segments:
            raise ConfigError(f"data.seq_len ({d.seq_len}) must be a multiple of model.segments "
                              f"({m.segments}) so every segment has the same length")
        _at_least("data.num_workers", d.num_workers, 0)
        if m.retention_variant not in RETENTION_VARIANTS:
            raise ConfigError(f"model.retention_variant must be one of {', '.join(RETENTION_VARIANTS)}, "
                              f"got {m.retention_variant!r}")
        if d.truncate not in TRUNCATE_SIDES:
            raise ConfigError(f"data.truncate must be one of {', '.join(TRUNCATE_SIDES)}, got {d.truncate!r}")
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        _at_least("optim.weight_decay", o.weight_decay, 0.0)
        for key, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {value}")
        if not o.eps > 0:
            raise ConfigError(f"optim.eps must be > 0, got {o.eps}")
        if not 0.0 <= o.warmup < 1.0:
            raise ConfigError(f"optim.warmup is a fraction of max_steps in [0, 1), got {o.warmup}")
        if o.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        if not 0.0 <= o.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        _at_least("optim.grad_clip", o.grad_clip, 0.0)
        for key in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every"):
            _positive(f"train.{key}", getattr(t, key))
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of "
                              f"train.grad_accum ({t.grad_accum})")
        for key in ("eval_batches", "final_eval_batches"):
            if getattr(t, key) is not None:
                _positive(f"train.{key}", getattr(t, key))
        if t.stop_after is not None:
            _positive("train.stop_after", t.stop_after)
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
        if not (t.device in ("auto", "cpu", "cuda") or _is_cuda_index(t.device)):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
}


# ---------------------------------------------------------------------------- loading
def available_tasks() -> list[str]:
    """Names of the tasks with a packaged config file (``rmaat/configs/<task>.yaml``)."""
    folder = resources.files("rmaat") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task_config(task: str) -> RunConfig:
    """The packaged default config of ``task``; ConfigError listing valid tasks if unknown."""
    tasks = available_tasks()
    if task not in tasks:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(tasks)}")
    text = (resources.files("rmaat") / "configs" / f"{task}.yaml").read_text()
    return _config_from_yaml(text, f"rmaat/configs/{task}.yaml")


def load_config_file(path: str | Path) -> RunConfig:
    """Read a run config YAML (e.g. a previous run's ``R/config.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return _config_from_yaml(path.read_text(), str(path))


def _config_from_yaml(text: str, where: str) -> RunConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    return RunConfig.from_dict(raw, where)


# -------------------------------------------------------------------------- overrides
def parse_set_options(items: typing.Iterable[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are read as YAML scalars (``1e-3``, ``null``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. train.grad_accum=4), got {item!r}")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key] = text
    return out


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy of ``config`` with dotted-key ``overrides`` applied and type-checked.

    A key is ``section.field`` (``optim.lr``) or a bare field name that exists in exactly one
    section (``grad_accum``). Under ``model``, names that are not ModelSection fields become
    ``build_model`` overrides. A None value sets the field to None (valid for optional fields).
    """
    raw = config.to_dict()
    for key, value in overrides.items():
        section, name = _resolve_key(key)
        if section is None:
            raw["task"] = value
        else:
            raw[section][name] = value
    return RunConfig.from_dict(raw, "command-line overrides")


def _resolve_key(key: str) -> tuple[str | None, str]:
    if key == "task":
        return None, "task"
    if "." in key:
        section, name = key.split(".", 1)
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; "
                              f"valid sections: {', '.join(_SECTIONS)}")
        if section != "model" and name not in _field_names(_SECTIONS[section]):
            raise ConfigError(f"unknown key {key!r}; valid {section} keys: "
                              f"{', '.join(sorted(_field_names(_SECTIONS[section])))}")
        return section, name
    matches = [s for s, cls in _SECTIONS.items() if key in _field_names(cls) and key != "overrides"]
    if len(matches) == 1:
        return matches[0], key
    if len(matches) > 1:
        raise ConfigError(f"key {key!r} is ambiguous; write it as one of "
                          f"{', '.join(f'{s}.{key}' for s in matches)}")
    raise ConfigError(f"unknown key {key!r}; write section.field (sections: {', '.join(_SECTIONS)}), "
                      f"model options as model.<name>")


# ------------------------------------------------------------------------------ hash
def hashed_items(config: RunConfig) -> dict[str, Any]:
    """Flat ``section.field -> value`` of every field that the config hash covers."""
    flat = _flatten(config.to_dict())
    return {k: v for k, v in flat.items() if k not in RUNTIME_KEYS}


def config_hash(config: RunConfig) -> str:
    """Short SHA-256 of the training-relevant fields (canonical JSON)."""
    text = json.dumps(hashed_items(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Human-readable ``key: a != b`` for each hashed field where the configs differ."""
    fa, fb = hashed_items(a), hashed_items(b)
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- helpers
def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints or key == "overrides":
            if cls is ModelSection:
                extra[key] = value  # passed to build_model, which validates the name
                continue
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(hints))}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    if cls is ModelSection:
        kwargs["overrides"] = extra
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, str, bool, X | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where} must be {name}, got {value!r}")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()
