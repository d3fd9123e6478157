"""Validate a task's data directory: counts per split, label balance, truncation, or what
is missing.

Used by ``pipeline data check``; also handy before a long training run, since it loads (and so
fully parses) every split exactly as training will.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rmaat.data.tasks import SPLITS, TaskSpec, find_task_root, get_task
from rmaat.errors import DataError


@dataclass
class SplitReport:
    """What one split holds."""

    split: str
    n_examples: int
    class_counts: list[int]
    n_truncated: int
    source: str

    @property
    def majority_fraction(self) -> float:
        """Accuracy of always predicting the most common label (the baseline to beat)."""
        return max(self.class_counts) / self.n_examples if self.n_examples else 0.0


@dataclass
class CheckReport:
    """Result of :func:`check_task`: per-split reports and the problems found."""

    spec: TaskSpec
    root: Path | None
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    example_length: int | None = None  # the generated length of a memory task's examples

    @property
    def ok(self) -> bool:
        """All splits loaded."""
        return not self.problems and len(self.splits) == len(SPLITS)

    def lines(self) -> list[str]:
        """Human-readable report."""
        spec = self.spec
        kind = "LRA task" if spec.is_lra else "stand-in, not an LRA task: never report it as one"
        length = self.example_length or spec.seq_len
        out = [f"{spec.name}: {spec.title} ({kind}); {spec.n_classes} classes, "
               f"length {length}{' per document, 2 documents' if spec.dual else ''}"]
        if self.root is not None:
            out.append(f"data: {self.root}")
        for r in self.splits:
            balance = " ".join(f"{c}:{n}" for c, n in enumerate(r.class_counts))
            line = (f"  {r.split:<5} {r.n_examples:>7} examples  labels {balance}  "
                    f"majority {100 * r.majority_fraction:.1f}%")
            if r.n_truncated:  # dual tasks count documents (2 per example), the others examples
                unit = "documents" if spec.dual else "examples"
                line += f"  {r.n_truncated} {unit} cut to {spec.seq_len} tokens"
            out.append(line)
        out += [f"  problem: {p}" for p in self.problems]
        out.append("OK" if self.ok else "INVALID")
        return out


def check_task(task: str, data_dir: str | Path | None) -> CheckReport:
    """Load every split of ``task`` from ``data_dir`` and summarise it (never raises DataError)."""
    from rmaat.data import load_split

    spec = get_task(task)
    try:
        root = find_task_root(spec, data_dir)
    except DataError as e:
        return CheckReport(spec, None, problems=[str(e)])
    report = CheckReport(spec, root)
    for split in SPLITS:
        try:
            ds = load_split(spec, root, split)
        except DataError as e:
            report.problems.append(f"{split}: {e}")
            continue
        report.splits.append(SplitReport(split, len(ds), ds.class_counts().tolist(),
                                         ds.n_truncated, ds.source))
        report.example_length = getattr(ds, "example_length", None)
    return report
