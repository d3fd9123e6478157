"""Per-model tuning: every grid point gets its own optimiser settings, chosen on the validation split.

A scale of an experiment file may declare::

    tune:
      set: {optim.lr: [1.0e-3, 3.0e-3, 1.0e-2]}   # run-config key -> candidates (their product is swept)
      seeds: [0]                                  # the seeds that tune (default [0])
      metric: val_accuracy                        # a validation number of the summaries (default:
                                                  #   val_accuracy, or val_bpb for a language model)
      stages: each                                # a curriculum: tune every training stage (default),
                                                  #   or `first` and keep stage 0's choice for the rest

For each grid point the harness trains every candidate at each tuning seed with **the same budget
as the final runs** (the point's own config with the candidate's values on top), in
``<point>/tune/<candidate>/seed<s>/`` (``tune/stage<i>/...`` for a curriculum), picks the candidate
with the best mean validation metric over the tuning seeds, then trains the experiment's seeds at
the chosen values as usual. Tuning runs never evaluate the test split (``train.evaluate_test:
false``): the test split is read once, by the final runs.

Curricula are tuned per stage (``stages: each``): stage i's candidates start from the best
checkpoint of the chosen stage i-1 run of the same tuning seed, so the sweep of stage i is run
only once stage i-1's choice is known (a *wave* per stage). This is the fairer rule when the best
rate changes with length (it did: 3e-3 helped at T = 2 and left both models at chance at T = 16);
``stages: first`` costs one wave.

A choice at either end of a numeric sweep is flagged (:attr:`Sweep.at_edge`): the optimum may lie
outside it, and the sweep must be widened before the result is read.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmaat.errors import ConfigError

TUNE_KEYS = ("set", "seeds", "metric", "stages")
#: Selection metrics: validation numbers of the summaries (classifier, byte LM), with their direction.
#: ``val_*`` is the best periodic validation (the best checkpoint's); ``final_val_*`` the whole
#: validation split after the last step.
SELECTION_METRICS = {False: ("val_accuracy", "final_val_accuracy"), True: ("val_bpb", "final_val_bpb")}
HIGHER_IS_BETTER = {"val_accuracy": True, "final_val_accuracy": True, "val_bpb": False, "final_val_bpb": False}


@dataclass(frozen=True)
class Tuning:
    """A scale's ``tune:`` block, parsed."""

    values: tuple[tuple[str, tuple[Any, ...]], ...]  # (run-config key, candidates in sweep order)
    seeds: tuple[int, ...] = (0,)
    metric: str = "val_accuracy"
    per_stage: bool = True

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the candidate values, in sweep order."""
        keys = [key for key, _ in self.values]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(vals for _, vals in self.values))]

    def tuned_stages(self, n_stages: int, trains: list[bool]) -> list[int]:
        """Indices of the stages that are swept: every training stage, or the first only."""
        training = [i for i in range(n_stages) if trains[i]]
        return training if self.per_stage else training[:1]


def candidate_label(candidate: dict[str, Any]) -> str:
    """A folder name for a candidate: ``lr0.003`` (the key's last part and the value), joined by ``_``."""
    parts = []
    for key, value in candidate.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}{text}")
    return "_".join(parts)


def parse_tuning(raw: Any, where: str, language_model: bool) -> Tuning | None:
    """The ``tune:`` block of a scale (None when absent); ConfigError (one line) when malformed.
    ``language_model``: the experiment's runs are byte LMs (selection by bits per byte)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with {', '.join(TUNE_KEYS)}, got {type(raw).__name__}")
    unknown = set(raw) - set(TUNE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: {', '.join(TUNE_KEYS)}")
    sweep = raw.get("set")
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"{where}.set must map run-config keys to lists of candidates, "
                          f"e.g. {{optim.lr: [0.001, 0.003, 0.01]}}; got {sweep!r}")
    values = []
    for key, candidates in sweep.items():
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}.set: {key!r} is not a run-config key such as optim.lr")
        if not isinstance(candidates, list) or not candidates:
            raise ConfigError(f"{where}.set.{key} must be a non-empty list of candidates, got {candidates!r}")
        if len(set(map(repr, candidates))) != len(candidates):
            raise ConfigError(f"{where}.set.{key} repeats a candidate: {candidates!r}")
        values.append((key, tuple(_number_or_value(c) for c in candidates)))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                        for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds must be a non-empty list of distinct seeds >= 0, got {seeds!r}")
    allowed = SELECTION_METRICS[language_model]
    metric = raw.get("metric", allowed[0])
    if metric not in allowed:
        raise ConfigError(f"{where}.metric must be a validation metric of these runs ({', '.join(allowed)}): "
                          f"tuning never reads the test split; got {metric!r}")
    stages = raw.get("stages", "each")
    if stages not in ("each", "first"):
        raise ConfigError(f"{where}.stages must be 'each' (tune every training stage) or 'first', got {stages!r}")
    return Tuning(tuple(values), tuple(seeds), metric, stages == "each")


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: a numeric string becomes the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ------------------------------------------------------------------------------ selection
@dataclass
class Sweep:
    """One tuned stage of one grid point: the validation metric of every candidate and the choice."""

    point: str
    stage: int
    n_stages: int
    metric: str
    rows: list[tuple[dict[str, Any], list[float]]]  # candidate -> metric per tuning seed (nan: not done)
    chosen: dict[str, Any] | None  # None until every candidate has a result at every tuning seed
    at_edge: dict[str, bool]  # key -> the choice is the smallest or largest of >= 2 numeric candidates

    def mean(self, values: list[float]) -> float:
        return sum(values) / len(values) if values and not any(math.isnan(v) for v in values) else math.nan


def tune_dir(root: Path, point: str, stage: int, n_stages: int, candidate: dict[str, Any], seed: int) -> Path:
    """The run directory of one tuning run."""
    base = root / point / "tune"
    if n_stages > 1:
        base = base / f"stage{stage}"
    return base / candidate_label(candidate) / f"seed{seed}"


def select(tuning: Tuning, rows: list[tuple[dict[str, Any], list[float]]]) -> dict[str, Any] | None:
    """The candidate with the best mean metric over the tuning seeds (the first of equals, in sweep
    order); None while any candidate lacks a result."""
    means = [(sum(v) / len(v), i) for i, (_, v) in enumerate(rows) if v and not any(math.isnan(x) for x in v)]
    if len(means) < len(rows):
        return None
    sign = -1.0 if tuning.higher_is_better else 1.0
    best = min(means, key=lambda m: (sign * m[0], m[1]))[1]
    return rows[best][0]


def edges(tuning: Tuning, chosen: dict[str, Any] | None) -> dict[str, bool]:
    """Per swept key: whether ``chosen`` is at an end of its (>= 2, numeric) candidates."""
    flags = {}
    for key, candidates in tuning.values:
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in candidates)
        flags[key] = bool(chosen is not None and numeric and len(candidates) >= 2
                          and chosen[key] in (min(candidates), max(candidates)))
    return flags


def every_candidate_choices(exp: Any) -> list[dict[str, dict[int, dict[str, Any]]]]:
    """For validation before anything runs: one ``choices`` per candidate, applied to every training
    stage of every point (so each candidate's run configs are checked)."""
    return [{point.name: {i: candidate for i, stage in enumerate(point.stages) if stage.trains}
             for point in exp.points} for candidate in exp.tuning.candidates()]


def describe(tuning: Tuning, exp: Any) -> list[str]:
    """``--dry-run`` lines: what is swept, at which seeds, and how many tuning runs."""
    sweep = ", ".join(f"{key} in {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}}}"
                      for key, values in tuning.values)
    n = len(tuning.candidates()) * len(tuning.seeds)
    total = sum(n * len(tuning.tuned_stages(len(p.stages), [s.trains for s in p.stages])) for p in exp.points)
    stages = "every training stage of a curriculum in turn" if tuning.per_stage else "the first stage only"
    return [f"tuning: {sweep}; seed(s) {', '.join(map(str, tuning.seeds))}; chosen per grid point by the best "
            f"mean {tuning.metric} (validation split), {stages}; the final runs' budget each",
            f"  {total} tuning runs ({n} per tuned stage), under <point>/tune/, before the {exp.n_runs} final runs"]
