"""Streaming evaluation of an LM experiment's trained runs (``pipeline experiment stream``).

For each chosen grid point and seed, the run's ``best.pt`` reads long held-out streams with its
memory carried across every segment (:func:`rmaat.lm.stream.evaluate_stream`: bits per byte by
position for each retention rule). One JSON per run is kept under
``<root>/streaming-<bytes>/`` (one made for the same ``--streams`` and the same trained run is
not redone; the folder is made with its first file, so a failed call leaves none), and the seeds
are summarised in
``streaming.md`` (mean ± std of bpb within and past the training length, per rule) and
``streaming.png`` (mean bpb against position, one line per point and rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from retention.atomic import atomic_write
from rmaat.errors import ConfigError, RMAATUserError
from rmaat.experiments.spec import Experiment


def stream_folder(root: Path, stream_bytes: int) -> Path:
    """Where the streaming results of ``stream_bytes``-byte streams live."""
    return root / f"streaming-{stream_bytes}"


def cache_key(streams: int | None, summary: dict[str, Any]) -> dict[str, Any]:
    """What a cached result depends on besides the stream length (the folder): the number of
    streams asked for, and the trained run (its config hash; a replaced run has a new one)."""
    return {"streams": streams, "config_hash": summary.get("config_hash")}


def _trained(exp: Experiment, root: Path, point: str, seed: int) -> tuple[Path, dict[str, Any]]:
    """``(best.pt, summary)`` of a finished run; RMAATUserError naming the command otherwise."""
    from rmaat.experiments.report import read_summary, run_command

    run_dir = root / point / f"seed{seed}"
    if not (run_dir / "summary.json").is_file():
        raise RMAATUserError(f"{point} seed {seed} has not finished training ({run_dir}); "
                             f"run `{run_command(exp)}` first")
    return run_dir / "checkpoints" / "best.pt", read_summary(run_dir / "summary.json")


def _cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The result stored at ``path`` if it was made for ``key``, else None (it is redone)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("cache_key") == key else None


def run_streaming(exp: Experiment, root: Path, points: list[str], *, stream_bytes: int, streams: int | None,
                  split: str = "test", log: Callable[[str], None] = print) -> dict[str, dict[int, dict[str, Any]]]:
    """Evaluate (or read back) every (point, seed); return {point: {seed: result}}."""
    from rmaat.train.lm_trainer import stream_evaluate_checkpoint
    from rmaat.train.metrics import atomic_write_text

    known = [p.name for p in exp.points]
    points = list(dict.fromkeys(points))  # "a,a" evaluates a once
    if not points:
        raise ConfigError(f"--points names no grid point; choose from {', '.join(known)}")
    unknown = [p for p in points if p not in known]
    if unknown:
        raise ConfigError(f"unknown grid point(s) {', '.join(unknown)} of {exp.name}; choose from {', '.join(known)}")
    # every run is checked before any is evaluated: a missing one fails now, not after the others
    trained = {(point, seed): _trained(exp, root, point, seed) for point in points for seed in range(exp.seeds)}
    folder = stream_folder(root, stream_bytes)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for (point, seed), (checkpoint, summary) in trained.items():
        out = folder / f"{point}-seed{seed}.json"
        key = cache_key(streams, summary)
        result = _cached(out, key)
        if result is None:
            result = stream_evaluate_checkpoint(checkpoint, split=split, device="cpu", stream_bytes=stream_bytes,
                                                max_streams=streams)
            result["cache_key"] = key
            atomic_write_text(out, json.dumps(result) + "\n")  # makes the folder with its first file
            log(f"{point} seed {seed}: " + ", ".join(f"{m} {r['bpb']:.4f}" for m, r in result["modes"].items()))
        results.setdefault(point, {})[seed] = result
    return results


def _fmt(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.{digits}f}"


def streaming_markdown(results: dict[str, dict[int, dict[str, Any]]], command: str) -> str:
    """One row per (point, rule): mean ± std over seeds of bpb overall, within and past training."""
    seeds = sorted(next(iter(results.values())))
    first = next(iter(results.values()))[seeds[0]]
    n, t_train = first["segment_len"], first["train_segments"]
    lines = [f"Command: `{command}`; {first['streams']} stream(s) of {first['stream_bytes']:,} bytes "
             f"({first['stream_bytes'] // n} segments of {n}) from the start of the {first['split']} books; "
             f"trained on {t_train} segments. Mean ± std over seeds {', '.join(map(str, seeds))}.",
             "The last column is the memory's worth: bpb minus the same run's bpb without memory (reset), "
             "per seed; negative = memory helps.",
             "", f"| point | rule | bpb, whole stream | segments 1–{t_train} | segments {t_train + 1}– | "
             "minus reset | factor |", "|---|---|---|---|---|---|---|"]
    for point, by_seed in results.items():
        runs = list(by_seed.values())
        for mode in runs[0]["modes"]:
            rows = [r["modes"][mode] for r in runs if mode in r["modes"]]
            gain = [r["modes"][mode]["bpb"] - r["modes"]["reset"]["bpb"] for r in runs
                    if mode in r["modes"] and "reset" in r["modes"]] if mode != "reset" else []
            lines.append(f"| {point} | {mode} | {_fmt([r['bpb'] for r in rows])} | "
                         f"{_fmt([r['bpb_within_training'] for r in rows])} | "
                         f"{_fmt([r['bpb_past_training'] for r in rows])} | {_fmt(gain, 4)} | {rows[0]['note']} |")
        for mode, why in runs[0]["skipped"].items():
            lines.append(f"| {point} | {mode} | skipped: {why} | | | | |")
    return "\n".join(lines) + "\n"


def streaming_figure(results: dict[str, dict[int, dict[str, Any]]], path: Path, title: str,
                     smooth: int = 4) -> None:
    """Mean bpb against position per point and rule (a running mean over ``smooth`` segments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False, sharey=True)
    for ax, (point, by_seed) in zip(axes[0], results.items()):
        runs = list(by_seed.values())
        n, t_train = runs[0]["segment_len"], runs[0]["train_segments"]
        for mode in runs[0]["modes"]:
            curve = np.mean([r["modes"][mode]["bpb_by_segment"] for r in runs], axis=0)  # (T_s,)
            kernel = np.ones(smooth) / smooth
            smoothed = np.convolve(curve, kernel, mode="valid")
            x = (np.arange(len(smoothed)) + smooth) * n / 1024
            ax.plot(x, smoothed, lw=1.2, label=mode)
        ax.axvline(t_train * n / 1024, color="grey", ls="--", lw=1, label="training context")
        ax.set_title(f"{point} (mean of {len(runs)} seeds)", fontsize=10)
        ax.set_xlabel("position in the stream (KiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel(f"bits per byte (running mean over {smooth} segments)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110, metadata={"Software": None}))
    finally:
        plt.close(fig)
