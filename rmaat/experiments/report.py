"""An experiment's results from its run directories alone: ``results.csv`` (one row per run),
``results.md`` (mean ± std, n, 95% CI and the paper's number per grid point; accuracy by fact
depth for the memory tasks) and a figure.

A run whose config is not the one the experiment file now gives (the file was edited after it
ran: :func:`rmaat.experiments.states.run_state` calls it ``stale``) is listed in results.csv with
``config`` = ``stale``, named in a warning at the top of results.md, and left out of every mean,
interval and figure: its numbers answer another question."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from retention.atomic import atomic_write
from rmaat.errors import DataError
from rmaat.experiments.spec import Experiment
from rmaat.experiments.stats import METRIC_RANGES, Summary, summarise
from rmaat.experiments.tuning import candidate_label

CSV_FIELDS = ("experiment", "scale", "point", "seed", "metric", "value", "test_accuracy", "val_accuracy",
              "majority_baseline", "steps", "wall_time_s", "run_dir", "by_depth", "config", "role", "candidate")


def run_command(exp: Experiment, jobs: int | None = None, root: Path | None = None) -> str:
    """The ``pipeline experiment run`` command that (re)makes these results, naming the
    experiment as it was given (a file's path: its ``name`` alone names no packaged experiment)."""
    import shlex

    return (f"pipeline experiment run {exp.argument} --scale {exp.scale} --seeds {exp.seeds}"
            + (f" --jobs {jobs}" if jobs is not None else "")
            + (f" --root {shlex.quote(str(root))}" if root is not None else ""))


def baseline_label(exp: Experiment) -> str:
    """What the ``majority_baseline`` column holds: the majority class of a classification task,
    or the unigram byte model's bits per byte for a language-modelling task."""
    from rmaat.data.kjv_lm import is_lm_task

    return "unigram bytes" if is_lm_task(exp.task) else "majority class"


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json; DataError (one line, naming the file) when it is not a JSON object."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable JSON summary ({error}); delete it and run the experiment "
                        "again to redo that run") from None
    if not isinstance(summary, dict):
        raise DataError(f"{path}: a summary is a JSON object, this holds a {type(summary).__name__}; delete it "
                        "and run the experiment again to redo that run")
    return summary


def _number(summary: dict[str, Any], key: str, path: Path) -> float | None:
    """``summary[key]`` as a number, None when absent; DataError for anything else."""
    value = summary.get(key)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise DataError(f"{path}: {key} must be a number, got {value!r}")


def _by_depth(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    groups = summary.get("test_accuracy_by_depth") or {}
    if not isinstance(groups, dict) or not all(isinstance(cell, dict) and isinstance(cell.get("accuracy"), (int, float))
                                               for cell in groups.values()):
        raise DataError(f"{path}: test_accuracy_by_depth must map segments to {{accuracy, n}}")
    return groups


def result_states(exp: Experiment, root: Path) -> dict[tuple[str, int, int], str]:
    """``(point, seed, stage) -> run state`` (states.job_states) for the configs the file gives now
    (a tuned experiment's final runs at the values its tuning chose)."""
    from rmaat.experiments.runner import current_jobs
    from rmaat.experiments.states import job_states

    return {(job.point, job.seed, i): state for job in current_jobs(exp, root)
            for i, state in enumerate(job_states(job))}


def collect_rows(exp: Experiment, root: Path) -> list[dict[str, Any]]:
    """One row per finished run and result stage (a summary.json in the point's last stage, or
    in each named stage), in grid order; ``point`` is the row label, ``config`` says whether the
    run was made by the config the file gives now (``current``) or another one (``stale``)."""
    states = result_states(exp, root)
    tuning = _tuning_plan(exp, root)
    rows = []
    for label, point, stage in exp.result_rows():
        chosen = (tuning.choices.get(point.name, {}) if tuning is not None else {}).get(_trained_stage(point, stage))
        for seed in range(exp.seeds):
            run_dir = root / point.name / f"seed{seed}"
            if len(point.stages) > 1:
                run_dir = run_dir / f"stage{stage}"
            path = run_dir / "summary.json"
            if not path.is_file():
                continue
            s = read_summary(path)
            rows.append({
                "experiment": exp.name, "scale": exp.scale, "point": label, "seed": seed,
                "metric": exp.metric, "value": _number(s, exp.metric, path),
                "test_accuracy": _number(s, "test_accuracy", path), "val_accuracy": _number(s, "val_accuracy", path),
                "majority_baseline": _number(s, "majority_baseline", path) if "majority_baseline" in s
                else _number(s, "unigram_bpb", path),
                "steps": s.get("steps"), "wall_time_s": round(float(_number(s, "wall_time_s", path) or 0.0), 1),
                "run_dir": str(run_dir), "by_depth": json.dumps(_by_depth(s, path)),
                "config": "current" if states.get((point.name, seed, stage)) == "done" else "stale",
                "role": "final", "candidate": "" if chosen is None else candidate_label(chosen),
            })
    return rows + (tuning_rows(exp, root, tuning) if tuning is not None else [])


def _tuning_plan(exp: Experiment, root: Path) -> Any:
    """The experiment's tuning plan (rmaat.experiments.tuning_plan), None when it tunes nothing."""
    if exp.tuning is None:
        return None
    from rmaat.experiments.tuning_plan import plan

    return plan(exp, root)


def _trained_stage(point: Any, stage: int) -> int:
    """The last training stage at or before ``stage`` (an evaluate stage reports its weights)."""
    while stage > 0 and not point.stages[stage].trains:
        stage -= 1
    return stage


def tuning_rows(exp: Experiment, root: Path, tuning: Any) -> list[dict[str, Any]]:
    """results.csv rows (``role`` = ``tune``) of every finished tuning run: its validation metric."""
    from rmaat.experiments.tuning import tune_dir

    rows = []
    for sweep in tuning.sweeps:
        label = sweep.point + (f"/stage{sweep.stage}" if sweep.n_stages > 1 else "")
        for candidate, values in sweep.rows:
            for seed, value in zip(exp.tuning.seeds, values):
                if math.isnan(value):  # not run yet
                    continue
                run_dir = tune_dir(root, sweep.point, sweep.stage, sweep.n_stages, candidate, seed)
                rows.append({"experiment": exp.name, "scale": exp.scale, "point": label, "seed": seed,
                             "metric": sweep.metric, "value": value, "run_dir": str(run_dir), "by_depth": "{}",
                             "config": "current", "role": "tune", "candidate": candidate_label(candidate)})
    return rows


def current_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final runs made by the file's present config (the ones every mean is taken over)."""
    return [r for r in rows if r["config"] == "current" and r.get("role", "final") == "final"]


def stale_warning(exp: Experiment, rows: list[dict[str, Any]]) -> str | None:
    """One line naming the stale runs and what to do, or None when there are none."""
    stale = [f"{r['point']} seed {r['seed']}" for r in rows if r["config"] == "stale"]
    if not stale:
        return None
    shown = ", ".join(stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
    return (f"**Warning: {len(stale)} run(s) were made with another configuration than {exp.source} now gives "
            f"(the file changed after they ran): {shown}. They are marked `stale` in results.csv and left out of "
            f"the table and figure; rerun them with `{run_command(exp)} --force`, or run the experiment under a "
            "new --root.**")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def point_summaries(exp: Experiment, rows: list[dict[str, Any]]) -> dict[str, Summary]:
    """Summary of the metric per result row label that has finished runs of the present config."""
    out = {}
    for label, _, _ in exp.result_rows():
        values = [r["value"] for r in current_rows(rows) if r["point"] == label and r["value"] is not None]
        if values:
            out[label] = summarise(values, bounds=METRIC_RANGES.get(exp.metric, (-math.inf, math.inf)))
    return out


def depth_table(exp: Experiment, rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Mean test accuracy per grid point and depth segment (memory tasks), over seeds."""
    table: dict[str, dict[int, list[float]]] = {}
    for row in current_rows(rows):
        for depth, cell in json.loads(row["by_depth"]).items():
            table.setdefault(row["point"], {}).setdefault(int(depth), []).append(cell["accuracy"])
    return {p: {d: sum(v) / len(v) for d, v in sorted(cells.items())} for p, cells in table.items()}


def _interval_note(exp: Experiment) -> str:
    """How the intervals are made (said in results.md)."""
    low, high = METRIC_RANGES.get(exp.metric, (-math.inf, math.inf))
    if math.isinf(low) and math.isinf(high):
        return "95% CI: Student-t interval of the mean over seeds."
    shown = f"[{low:g}, {high:g}]" if not math.isinf(high) else f">= {low:g}"
    return f"95% CI: Student-t interval of the mean over seeds, clipped to the metric's range {shown}."


def markdown(exp: Experiment, rows: list[dict[str, Any]], command: str, tuning: Any = None) -> str:
    """The results table (and the by-depth and tuning tables) as markdown; stale runs are counted
    per row and named in a warning, never averaged in."""
    summaries = point_summaries(exp, rows)
    lines = [f"### `{exp.name}` ({exp.scale} scale, task {exp.task})", "", exp.question.strip(), "",
             f"Command: `{command}`; seeds 0..{exp.seeds - 1}; metric `{exp.metric}`. {_interval_note(exp)}", ""]
    warning = stale_warning(exp, rows)
    if warning:
        lines += [warning, ""]
    tuned = exp.tuning is not None
    lines += [f"| grid point | mean ± std | n | 95% CI | {baseline_label(exp)} | paper |" + (" chosen |" if tuned else ""),
              "|---|---|---|---|---|---|" + ("---|" if tuned else "")]
    current = current_rows(rows)
    for label, _, _ in exp.result_rows():
        s = summaries.get(label)
        paper = exp.paper.get(label)
        paper_text = "–" if paper is None else f"{paper}"
        n_stale = sum(1 for r in rows if r["point"] == label and r["config"] == "stale")
        stale_text = f" (+{n_stale} stale)" if n_stale else ""
        chosen = next((r["candidate"] for r in current if r["point"] == label and r["candidate"]), "–")
        chosen_text = f" {chosen} |" if tuned else ""
        if s is None:
            finished = sum(1 for r in current if r["point"] == label)
            state = f"no `{exp.metric}` in {finished} summaries" if finished else "stale only" if n_stale else "not run"
            lines.append(f"| {label} | {state} | 0{stale_text} | – | – | {paper_text} |{chosen_text}")
            continue
        # per row: the points of one experiment may train on different tasks (lra_shapes)
        own = [r["majority_baseline"] for r in current if r["point"] == label and r["majority_baseline"] is not None]
        lines.append(f"| {label} | {_fmt(s.mean)} ± {_fmt(s.std)} | {s.n}{stale_text} | "
                     f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] | {_fmt(sum(own) / len(own) if own else None)} | "
                     f"{paper_text} |{chosen_text}")
    if tuning is not None:
        lines += ["", *tuning_markdown(exp, tuning)]
    depths = depth_table(exp, rows)
    if depths:
        segments = sorted({d for cells in depths.values() for d in cells})
        lines += ["", "Test accuracy by the segment that holds the supporting fact (mean over seeds):", "",
                  "| grid point | " + " | ".join(f"segment {d}" for d in segments) + " |",
                  "|---" * (len(segments) + 1) + "|"]
        for point, cells in depths.items():
            lines.append(f"| {point} | " + " | ".join(_fmt(cells.get(d)) for d in segments) + " |")
    return "\n".join(lines) + "\n"


def tuning_markdown(exp: Experiment, tuning: Any) -> list[str]:
    """The sweep of every tuned stage: the validation metric per candidate (mean over the tuning
    seeds), the choice in bold, and a flag where the choice is at an edge of its sweep."""
    from rmaat.experiments.tuning import describe

    t = exp.tuning
    labels = [candidate_label(c) for c in t.candidates()]
    lines = [f"Tuning ({describe(t, exp)[0].removeprefix('tuning: ')}; the test split is not read). A choice marked **edge** lies at "
             "an end of its sweep: the optimum may be outside it, so widen the sweep before reading that row.", "",
             "| grid point | " + " | ".join(labels) + " | chosen |", "|---" * (len(labels) + 2) + "|"]
    for sweep in tuning.sweeps:
        cells = []
        for candidate, values in sweep.rows:
            mean = sweep.mean(values)
            text = _fmt(mean) if not math.isnan(mean) else "not run"
            cells.append(f"**{text}**" if candidate == sweep.chosen else text)
        edge = [key for key, flag in sweep.at_edge.items() if flag]
        chosen = "undecided" if sweep.chosen is None else candidate_label(sweep.chosen) + (
            f" (**edge** of {', '.join(edge)})" if edge else "")
        name = sweep.point + (f" stage {sweep.stage}" if sweep.n_stages > 1 else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen} |")
    return lines


def figure(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of the metric per point with 95% CIs (and accuracy vs fact depth when recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = current_rows(rows)  # a stale run's numbers answer another question
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
    tuning = _tuning_plan(exp, root)
    if not rows:
        from rmaat.errors import RMAATUserError

        raise RMAATUserError(f"no finished runs under {root}; run it first: {run_command(exp)}")
    root.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, fig_path = root / "results.csv", root / "results.md", root / f"{exp.name}.png"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, table.getvalue())
    atomic_write_text(md_path, markdown(exp, rows, command, tuning))
    figure(exp, rows, fig_path)
    return {"csv": csv_path, "md": md_path, "figure": fig_path}
