"""An experiment's results from its run directories alone: ``results.csv`` (one row per run),
``results.md`` (mean ± std, n, 95% CI and the paper's number per grid point; accuracy by fact
depth for the memory tasks) and a figure."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from retention.atomic import atomic_write
from rmaat.experiments.spec import Experiment
from rmaat.experiments.stats import Summary, summarise

CSV_FIELDS = ("experiment", "scale", "point", "seed", "metric", "value", "test_accuracy", "val_accuracy",
              "majority_baseline", "steps", "wall_time_s", "run_dir", "by_depth")


def baseline_label(exp: Experiment) -> str:
    """What the ``majority_baseline`` column holds: the majority class of a classification task,
    or the unigram byte model's bits per byte for a language-modelling task."""
    from rmaat.data.kjv_lm import is_lm_task

    return "unigram bytes" if is_lm_task(exp.task) else "majority class"


def collect_rows(exp: Experiment, root: Path) -> list[dict[str, Any]]:
    """One row per finished run and result stage (a summary.json in the point's last stage, or
    in each named stage), in grid order; ``point`` is the row label."""
    rows = []
    for label, point, stage in exp.result_rows():
        for seed in range(exp.seeds):
            run_dir = root / point.name / f"seed{seed}"
            if len(point.stages) > 1:
                run_dir = run_dir / f"stage{stage}"
            path = run_dir / "summary.json"
            if not path.is_file():
                continue
            s = json.loads(path.read_text())
            rows.append({
                "experiment": exp.name, "scale": exp.scale, "point": label, "seed": seed,
                "metric": exp.metric, "value": s.get(exp.metric), "test_accuracy": s.get("test_accuracy"),
                "val_accuracy": s.get("val_accuracy"), "majority_baseline": s.get("majority_baseline", s.get("unigram_bpb")),
                "steps": s.get("steps"), "wall_time_s": round(float(s.get("wall_time_s", 0.0)), 1),
                "run_dir": str(run_dir), "by_depth": json.dumps(s.get("test_accuracy_by_depth") or {}),
            })
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def point_summaries(exp: Experiment, rows: list[dict[str, Any]]) -> dict[str, Summary]:
    """Summary of the metric per result row label that has finished runs."""
    out = {}
    for label, _, _ in exp.result_rows():
        values = [r["value"] for r in rows if r["point"] == label and r["value"] is not None]
        if values:
            out[label] = summarise(values)
    return out


def depth_table(exp: Experiment, rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Mean test accuracy per grid point and depth segment (memory tasks), over seeds."""
    table: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        for depth, cell in json.loads(row["by_depth"]).items():
            table.setdefault(row["point"], {}).setdefault(int(depth), []).append(cell["accuracy"])
    return {p: {d: sum(v) / len(v) for d, v in sorted(cells.items())} for p, cells in table.items()}


def markdown(exp: Experiment, rows: list[dict[str, Any]], command: str) -> str:
    """The results table (and the by-depth table) as markdown."""
    summaries = point_summaries(exp, rows)
    lines = [f"### `{exp.name}` ({exp.scale} scale, task {exp.task})", "", exp.question.strip(), "",
             f"Command: `{command}`; seeds 0..{exp.seeds - 1}; metric `{exp.metric}`.", "",
             f"| grid point | mean ± std | n | 95% CI | {baseline_label(exp)} | paper |", "|---|---|---|---|---|---|"]
    for label, _, _ in exp.result_rows():
        s = summaries.get(label)
        paper = exp.paper.get(label)
        paper_text = "–" if paper is None else f"{paper}"
        if s is None:
            lines.append(f"| {label} | not run | 0 | – | – | {paper_text} |")
            continue
        # per row: the points of one experiment may train on different tasks (lra_shapes)
        own = [r["majority_baseline"] for r in rows if r["point"] == label and r["majority_baseline"] is not None]
        lines.append(f"| {label} | {_fmt(s.mean)} ± {_fmt(s.std)} | {s.n} | "
                     f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] | {_fmt(sum(own) / len(own) if own else None)} | "
                     f"{paper_text} |")
    depths = depth_table(exp, rows)
    if depths:
        segments = sorted({d for cells in depths.values() for d in cells})
        lines += ["", "Test accuracy by the segment that holds the supporting fact (mean over seeds):", "",
                  "| grid point | " + " | ".join(f"segment {d}" for d in segments) + " |",
                  "|---" * (len(segments) + 1) + "|"]
        for point, cells in depths.items():
            lines.append(f"| {point} | " + " | ".join(_fmt(cells.get(d)) for d in segments) + " |")
    return "\n".join(lines) + "\n"


def figure(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of the metric per point with 95% CIs (and accuracy vs fact depth when recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = point_summaries(exp, rows)
    depths = depth_table(exp, rows)
    fig, axes = plt.subplots(1, 2 if depths else 1, figsize=(11 if depths else 6, 4), squeeze=False)
    ax = axes[0, 0]
    if any(st.name for point in exp.points for st in point.stages):
        _stage_curves(ax, exp, summaries)
    else:
        _bars(ax, summaries, rows)
    majority = [r["majority_baseline"] for r in rows if r["majority_baseline"] is not None]
    # one dashed line only when every point shares it (not across lra_shapes' five tasks)
    baseline = sum(majority) / len(majority) if majority and max(majority) - min(majority) < 0.05 else None
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", lw=1, label=baseline_label(exp))
        ax.legend(fontsize=8)
    ax.set_ylabel(exp.metric)
    ax.set_title(f"{exp.name} ({exp.scale}): mean, 95% CI, runs")
    ax.tick_params(axis="x", rotation=30)
    if depths:
        ax2 = axes[0, 1]
        for point, cells in depths.items():
            ax2.plot(list(cells), list(cells.values()), "o-", label=point)
        if baseline is not None:
            ax2.axhline(baseline, ls="--", color="gray", lw=1, label="majority class")
        ax2.set_xticks(sorted({d for cells in depths.values() for d in cells}))
        ax2.set_xlabel("segment holding the supporting fact (0 = first)")
        ax2.set_ylabel("test accuracy")
        ax2.set_title("accuracy by fact depth")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)


def _ci_errors(summaries: dict[str, Summary], names: list[str]) -> list[list[float]]:
    """Lower and upper error-bar lengths of the 95% CIs (0 where a single run has none)."""
    return [[0 if math.isnan(summaries[n].ci_low) else summaries[n].mean - summaries[n].ci_low for n in names],
            [0 if math.isnan(summaries[n].ci_high) else summaries[n].ci_high - summaries[n].mean for n in names]]


def _bars(ax: Any, summaries: dict[str, Summary], rows: list[dict[str, Any]]) -> None:
    """One bar per grid point with its CI and the single runs as dots."""
    names = list(summaries)
    ax.bar(names, [summaries[n].mean for n in names], yerr=_ci_errors(summaries, names), capsize=4, color="#4C72B0")
    for i, n in enumerate(names):
        values = [r["value"] for r in rows if r["point"] == n]
        ax.plot([i] * len(values), values, "k.", alpha=0.6)


def _stage_curves(ax: Any, exp: Experiment, summaries: dict[str, Summary]) -> None:
    """One line per grid point over its named stages (e.g. accuracy against T), with CIs."""
    for point in exp.points:
        labels = [(st.name, f"{point.name}/{st.name}") for st in point.stages if st.name]
        labels = [(x, key) for x, key in labels if key in summaries]
        if labels:
            keys = [key for _, key in labels]
            ax.errorbar([x for x, _ in labels], [summaries[k].mean for k in keys],
                        yerr=_ci_errors(summaries, keys), marker="o", capsize=4, label=point.name)
    ax.set_xlabel("stage")
    ax.legend(fontsize=8)


def write_report(exp: Experiment, root: Path, command: str) -> dict[str, Path]:
    """Write results.csv, results.md and the figure under ``root``; return their paths."""
    from rmaat.train.metrics import atomic_write_text

    rows = collect_rows(exp, root)
    if not rows:
        from rmaat.errors import RMAATUserError

        raise RMAATUserError(f"no finished runs under {root}; run it first: pipeline experiment run {exp.name}")
    root.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, fig_path = root / "results.csv", root / "results.md", root / f"{exp.name}.png"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, table.getvalue())
    atomic_write_text(md_path, markdown(exp, rows, command))
    figure(exp, rows, fig_path)
    return {"csv": csv_path, "md": md_path, "figure": fig_path}
