"""ListOps: the official TSV loader and a generator written from LRA's published rules.

Rules (LRA ``lra_benchmarks/data/listops.py``, SPEC section 5): operators MIN, MAX, MED (integer
median: the mean of the two middle values, floored, for an even count) and SM (sum mod 10)
over digits 0-9; starting at depth 1, a node is a leaf with probability 0.75 (forced at depth
10); an operator node draws 2-10 arguments, then its operator; the length counts one token per
digit, operator and closing bracket; only 500 < length < 2000 is kept; duplicates are dropped;
default splits 96,000 / 2,000 / 2,000. The file format is LRA's: a ``Source\\tTarget`` header,
then one binary-tree-parenthesised expression and its value per line.

Other length bounds (``ListOpsConfig(min_length=..., max_length=...)``, ``pipeline data generate
--min-length/--max-length``) give a *short-ListOps demo set* for quick CPU runs; it is not LRA
ListOps, and ``generation.json`` beside its TSVs records the rules used so it cannot pass for it
(LRA-rule sets keep exactly LRA's three files).

Speed: LRA rejection-samples whole trees, and about 11 in 12 draws are thrown away. Two things
keep that cheap without changing which trees are kept: (1) a first pass draws only the length
and abandons the draw as soon as it reaches the upper bound (the length only grows); (2) only
for an accepted length is the random state rewound and the same draw replayed to write the
expression and compute its value. Uniform choices are ``int(u * n)`` from ``rng.random()``,
and a leaf's digit reuses the uniform that made it a leaf (rescaled), so most nodes cost one
random number. 2,000 examples take a few seconds of CPU (about 4 s on a loaded 2-core CI box).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from rmaat.data.generate import write_generation_record
from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import ConfigError, DataError

MIN, MAX, MED, SUM_MOD, FIRST, LAST = "[MIN", "[MAX", "[MED", "[SM", "[FIRST", "[LAST"
#: The basic task's operators (LRA also defines FIRST and LAST but leaves them out).
OPERATORS: tuple[str, ...] = (MIN, MAX, MED, SUM_MOD)

_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
#: Written beside the TSVs: the generation rules, seed and sizes (what kind of set this is).
GENERATION_FILE = "generation.json"
#: Duplicate draws in a row after which the bounds are taken to hold no further distinct tree.
_MAX_REPEATS = 20_000
_HEADER = ["Source", "Target"]


@dataclass(frozen=True)
class ListOpsConfig:
    """Generation rules; defaults are LRA's ``basic`` task."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500   # exclusive
    max_length: int = 2000  # exclusive
    leaf_prob: float = 0.75  # LRA draws r and makes a leaf when r > VALUE_P = 0.25

    def __post_init__(self) -> None:
        # A tree has at least one token (a leaf), so lengths 1.. are possible; an empty
        # window (max_length <= min_length + 1) would make the rejection sampler loop forever.
        if self.min_length < 0:
            raise ConfigError(f"ListOps min_length must be >= 0, got {self.min_length}")
        if self.max_length < self.min_length + 2:
            raise ConfigError(f"ListOps bounds are exclusive: max_length ({self.max_length}) must be at least "
                              f"min_length + 2 ({self.min_length + 2}) so some length fits between them")
        if self.min_length >= 1 and self.max_length <= 4:
            # a tree is one digit (length 1) or an operator, its "]" and >= 2 arguments (>= 4)
            raise ConfigError(f"no ListOps expression has {self.min_length} < length < {self.max_length} "
                              "(lengths are 1 or >= 4); widen the bounds")
        if self.max_depth < 1 or self.max_args < 2:
            raise ConfigError(f"ListOps needs max_depth >= 1 and max_args >= 2, got {self.max_depth} "
                              f"and {self.max_args}")

    @property
    def is_lra(self) -> bool:
        """True for LRA's ``basic`` rules; anything else is a short-ListOps demo set, not LRA."""
        return self == ListOpsConfig()

    def to_dict(self) -> dict[str, object]:
        """The rules as a JSON-ready dict (written to ``generation.json``)."""
        return {"max_depth": self.max_depth, "max_args": self.max_args, "min_length": self.min_length,
                "max_length": self.max_length, "leaf_prob": self.leaf_prob, "bounds": "exclusive",
                "operators": [op.lstrip("[") for op in OPERATORS]}


class _TooLong(Exception):
    """Raised while drawing a tree that has already reached ``max_length``."""


def _draw_length(uniform, cfg: ListOpsConfig) -> int | None:
    """Length of one tree drawn with LRA's rules; None once it reaches ``max_length``."""
    p_op, leaf_prob = 1.0 - cfg.leaf_prob, cfg.leaf_prob
    max_depth, max_length, span = cfg.max_depth, cfg.max_length, cfg.max_args - 1
    count = 0

    def draw(depth: int) -> None:
        nonlocal count
        r = uniform() if depth < max_depth else p_op + leaf_prob * uniform()
        if r > p_op:
            count += 1
            if count >= max_length:
                raise _TooLong
            return
        count += 2  # the operator and its closing bracket
        if count >= max_length:
            raise _TooLong
        for _ in range(2 + int(uniform() * span)):
            draw(depth + 1)
        uniform()  # the operator, drawn after the arguments as in LRA

    try:
        draw(1)
    except _TooLong:
        return None
    return count


def _apply(op: str, values: list[int]) -> int:
    if op == MIN:
        return min(values)
    if op == MAX:
        return max(values)
    if op == MED:  # LRA: int(np.median(values)); values are >= 0 so int() floors
        s = sorted(values)
        return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2
    if op == SUM_MOD:
        return sum(values) % 10
    if op == FIRST:
        return values[0]
    if op == LAST:
        return values[-1]
    raise ValueError(f"unknown operator {op!r}")


_LEAF_TEXT = tuple(f"{d} )" for d in range(10))  # a digit closing its parent's "( " pair


def _emit(uniform, cfg: ListOpsConfig, out: list[str]) -> int:
    """Replay of :func:`_draw_length` writing LRA's text form into ``out``; returns the value.

    LRA's ``to_string`` nests ``[OP a b c ]`` as a binary tree: ``( ( ( ( [OP a ) b ) c ) ] )``:
    every argument is followed by a ``)``, which is appended together with the argument's
    own last token (the caller strips the root's). This loop runs once per token of every
    kept example, so it avoids per-node work it does not need.
    """
    p_op, leaf_prob = 1.0 - cfg.leaf_prob, cfg.leaf_prob
    scale = 10.0 / leaf_prob
    max_depth, span, n_ops = cfg.max_depth, cfg.max_args - 1, len(OPERATORS)
    append = out.append

    def draw(depth: int) -> int:
        if depth < max_depth:
            r = uniform()
        else:
            r = p_op + leaf_prob * uniform()
        if r > p_op:  # a leaf: (r - p_op) / leaf_prob is uniform on (0, 1)
            value = min(9, int((r - p_op) * scale))
            append(_LEAF_TEXT[value])
            return value
        n_args = 2 + int(uniform() * span)
        head = len(out)
        append("")  # becomes "( ( ... [OP" once the operator is drawn (after the arguments)
        values = [draw(depth + 1) for _ in range(n_args)]
        op = OPERATORS[int(uniform() * n_ops)]
        out[head] = "( " * (n_args + 1) + op
        append("] ) )")
        return _apply(op, values)

    return draw(1)


def sample_example(rng: random.Random,
                   cfg: ListOpsConfig = ListOpsConfig()) -> tuple[str, int, int] | None:
    """One draw: (expression, value, length) if ``min_length < length < max_length``, else None."""
    state = rng.getstate()
    length = _draw_length(rng.random, cfg)
    if length is None or length <= cfg.min_length:
        return None
    after = rng.getstate()
    rng.setstate(state)
    out: list[str] = []
    value = _emit(rng.random, cfg, out)
    rng.setstate(after)  # the replay consumed the same numbers; make that explicit
    return " ".join(out)[:-2], value, length  # the root is nobody's argument: drop its " )"


def generate_examples(n: int, seed: int = 0, cfg: ListOpsConfig = ListOpsConfig(),
                      progress: bool = False) -> list[tuple[str, int]]:
    """``n`` distinct (expression, value) pairs in generation order; deterministic in ``seed``."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    repeats = 0  # in-bounds draws in a row that were duplicates
    with tqdm(total=n, desc="listops", unit="ex", disable=not progress) as bar:
        while len(out) < n:
            drawn = sample_example(rng, cfg)
            if drawn is None:
                continue
            if drawn[0] in seen:
                # narrow bounds hold few distinct trees (length 1: ten digits); stop, don't spin
                repeats += 1
                if repeats > _MAX_REPEATS:
                    raise ConfigError(
                        f"only {len(out)} distinct expressions found with {cfg.min_length} < length < "
                        f"{cfg.max_length} after {_MAX_REPEATS} repeats in a row; widen the length bounds "
                        f"or lower the size ({n})")
                continue
            repeats = 0
            seen.add(drawn[0])
            out.append(drawn[:2])
            bar.update(1)
    return out


def split_sizes(size: int) -> dict[str, int]:
    """Split ``size`` examples: val and test 10% each, capped at LRA's 2,000 (100k -> LRA's)."""
    if size < 3:
        raise ValueError("ListOps needs at least 3 examples (one per split)")
    held_out = min(2000, max(1, size // 10))
    return {"train": size - 2 * held_out, "val": held_out, "test": held_out}


def write_tsv(rows: list[tuple[str, int]], path: Path) -> None:
    """Write LRA's TSV (``Source\\tTarget`` header) to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(_HEADER)
        writer.writerows(rows)


def generation_record(cfg: ListOpsConfig, seed: int, sizes: dict[str, int]) -> dict[str, object]:
    """What ``generation.json`` holds: the kind of set, its rules, seed and split sizes."""
    if cfg.is_lra:
        kind = "generated ListOps with LRA's basic rules (500 < length < 2000)"
    else:
        kind = (f"short-ListOps demo set ({cfg.min_length} < length < {cfg.max_length}): "
                "not LRA ListOps, do not report its numbers as LRA results")
    return {"task": "listops", "kind": kind, "lra_rules": cfg.is_lra, "rules": cfg.to_dict(),
            "seed": seed, "sizes": sizes, "generator": "rmaat.data.listops"}


def read_generation_record(source: str | Path) -> dict[str, object] | None:
    """The ``generation.json`` beside a ListOps split (``source``: its TSV file or folder), or None.

    Lets a training run tell a short-ListOps demo set from LRA-rule data when it reports results.
    """
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    try:
        record = json.loads((folder / GENERATION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def generate_listops(out_dir: str | Path, size: int = 100_000, seed: int = 0,
                     progress: bool = True, cfg: ListOpsConfig = ListOpsConfig()) -> dict[str, int]:
    """Write ``out_dir/listops-1000/basic_{train,val,test}.tsv``; return the split sizes.

    A set made with other rules than LRA's (``cfg``) also gets ``generation.json`` there, saying
    it is a short-ListOps demo set and recording the rules, seed and sizes.

    ``out_dir`` is written in place: callers wanting atomicity pass a temporary directory
    (``pipeline data generate`` does).
    """
    sizes = split_sizes(size)
    rows = generate_examples(size, seed=seed, cfg=cfg, progress=progress)
    root = Path(out_dir) / "listops-1000"
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in sizes.items():
        write_tsv(rows[start:start + n], root / _FILES[split])
        start += n
    if not cfg.is_lra:  # LRA-rule sets keep exactly LRA's layout (three TSVs)
        record = generation_record(cfg, seed, sizes)
        write_generation_record(root, record, GENERATION_FILE)
    return sizes


def load_listops(spec: TaskSpec, root: Path, split: str):
    """Read ``root/basic_<split>.tsv`` into a :class:`SequenceDataset`.

    Malformed lines raise DataError naming the file and line.
    """
    import numpy as np

    from rmaat.data.tokenize import Ragged, SequenceDataset, tokenize_listops

    path = root / _FILES[check_split(split)]
    if not path.is_file():
        raise DataError(f"missing ListOps file {path}; to get it, {spec.obtain}")
    tokens, labels = [], []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines or lines[0].rstrip("\r").split("\t") != _HEADER:
        raise DataError(f"{path}:1: expected the header 'Source<TAB>Target', "
                        f"got {lines[0][:60]!r}")
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{where}: expected 2 tab-separated fields (Source, Target), "
                            f"got {len(fields)}")
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"{where}: Target {fields[1]!r} is not an integer") from None
        if not 0 <= label < spec.n_classes:
            raise DataError(f"{where}: Target {label} is outside 0..{spec.n_classes - 1}")
        tokens.append(tokenize_listops(fields[0], where))
        labels.append(label)
    if not labels:
        raise DataError(f"{path}: no examples after the header")
    return SequenceDataset(spec, split, Ragged(tokens), np.asarray(labels), str(path))
