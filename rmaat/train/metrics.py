"""Run metrics: one JSON object per line in ``R/metrics.jsonl``, mirrored to TensorBoard, and the
loss/accuracy curve plot (:func:`plot_curves`, also used by ``pipeline plot``).

Record schema (Contract 6): ``{"step", "split": "train"|"val"|"test", "loss", "accuracy", "lr",
"tokens_per_s", "elapsed_s", ...}``. Extra numeric keys are allowed and become TensorBoard
scalars ``<split>/<key>``.

Importing this module loads neither torch nor matplotlib; each is imported where used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from retention.atomic import atomic_write, atomic_write_bytes
from rmaat.errors import DataError


class MetricsLogger:
    """Append metric records to ``metrics.jsonl`` and TensorBoard (main process only).

    On resume, ``resume_step`` drops records a previous session logged after its last
    checkpoint (from the JSONL file, and via TensorBoard's ``purge_step``), so the log of a
    resumed run reads like the log of an uninterrupted one.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain ``step`` and ``split``)."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            step, split = int(clean["step"]), clean["split"]
            for key, value in clean.items():
                if key in ("step", "split") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                self._writer.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        """Flush TensorBoard events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a run directory is accepted too).

    A torn final line (a write cut short by a kill, a full disk or a power loss) is dropped:
    the checkpoint a resume continues from precedes it. A damaged line anywhere else is a
    DataError naming the line, since records would silently go missing."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):
                break  # the torn last line
            raise DataError(f"{path} line {number} is not a JSON record ({line[:40]!r}); the log is damaged: "
                            "delete that line (or the file, losing the curves) and resume again")
        records.append(record)
    return records


def truncate_metrics(path: str | Path, max_step: int,
                     keep: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Atomically drop the records with ``step > max_step`` (and those ``keep`` rejects)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step and (keep is None or keep(r))]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


#: The second panel of :func:`plot_curves`: metric -> (axis label, baseline label).
CURVE_METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy (fraction correct)", "majority class"),
    "bpb": ("bits per byte (lower is better)", "unigram bytes"),
}


def plot_curves(metrics: str | Path | Iterable[dict[str, Any]], out_path: str | Path, *,
                title: str | None = None, baseline: float | None = None, metric: str = "accuracy") -> Path:
    """Plot loss and ``metric`` (accuracy, or bits per byte for language models) against step for
    each split; write a PNG (or SVG, by suffix) atomically.

    ``metrics``: a metrics.jsonl path, a run directory, or records. ``baseline`` (the majority-class
    accuracy of the test split, or the unigram bits per byte) is drawn as a dashed line on the
    metric's panel.
    """
    metric_label, baseline_label = CURVE_METRICS[metric]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"train": dict(lw=1.0, alpha=0.8), "val": dict(marker="o", ms=3), "test": dict(marker="*", ms=9, ls="")}
    for split, style in styles.items():
        rows = sorted((r for r in records if r.get("split") == split), key=lambda r: r["step"])
        for ax, key in ((ax_loss, "loss"), (ax_acc, metric)):
            points = [(r["step"], r[key]) for r in rows if _finite(r.get(key))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=split, **style)
    if baseline is not None:
        ax_acc.axhline(baseline, color="grey", ls="--", lw=1, label=baseline_label)
    for ax, label in ((ax_loss, "cross-entropy loss (nats)"), (ax_acc, metric_label)):
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", framealpha=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    fmt = "svg" if out_path.suffix.lower() == ".svg" else "png"
    try:
        # no date or version in the file: the same metrics give the same bytes (as pipelines.figures)
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with matplotlib.rc_context({"svg.hashsalt": "rmaat"}):  # fixed SVG element ids
            atomic_write(out_path, lambda handle: fig.savefig(handle, format=fmt, dpi=120, metadata=metadata))
    finally:
        plt.close(fig)
    return out_path


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON via a temp file + ``os.replace``."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``retention.atomic``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """Make tensors / numpy scalars JSON-serialisable."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return plain


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
