"""``pipeline probe memory``: what the memory of a recurrent classifier checkpoint holds.

    pipeline probe memory --checkpoint r/checkpoints/best.pt --data-dir d --out probe.json --figure probe.png

Per boundary (after each segment): the accuracy of a linear probe that decodes the label from the
carried memory and from the write (trained on the train split, scored on ``--split``), by the
segment of the supporting fact; the memory's norm relative to the token embeddings; and how much
the next segment's outputs change when its memory is swapped for another example's
(:mod:`rmaat.probe.memory_probe`). torch is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group()
def probe() -> None:
    """Probe what a trained model keeps in its memory."""


@probe.command()
@click.option("--checkpoint", required=True,
              help="A classifier checkpoint of a recurrent preset (RUN_DIR/checkpoints/best.pt).")
@click.option("--data-dir", default=None, help="The task's data directory (default: the one the run used).")
@click.option("--split", default="test", show_default=True, help="Split the probes are scored on: train, val or test.")
@click.option("--out", default=None, help="Write the report here as JSON.")
@click.option("--figure", default=None, help="Draw probe accuracy by boundary here (.png).")
@click.option("--batch-size", type=int, default=None, help="Batch size of the forward passes (default: the run's).")
@click.option("--max-examples", type=int, default=2000, show_default=True, help="Examples used per split.")
@click.option("--device", default="cpu", show_default=True, help="cpu, auto, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the probes and the memory swaps.")
def memory(checkpoint, data_dir, split, out, figure, batch_size, max_examples, device, seed) -> None:
    """Linear probes, norms and swap sensitivity of the memory at every segment boundary."""
    from pipelines.options import check_device, check_output_file

    check_device(device)
    if out is not None:  # unwritable outputs fail now, not after the forward passes
        check_output_file(out, "--out", (".json",))
    if figure is not None:
        check_output_file(figure, "--figure", (".png",))
    from rmaat.probe.memory_probe import run_memory_probe

    result = run_memory_probe(checkpoint, data_dir=data_dir, split=split, device=device, batch_size=batch_size,
                              max_examples=max_examples, seed=seed)
    if out is not None:
        from rmaat.train.metrics import atomic_write_json

        atomic_write_json(out, result)
    if figure is not None:
        plot_probe(result, figure)
    click.echo(format_probe(result))
    for label, path in (("report", out), ("figure", figure)):
        if path is not None:
            click.echo(f"{label}: {path}")


def _cell(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def format_probe(result: dict[str, Any]) -> str:
    """The report as a short table: one row per boundary, then carried accuracy by depth."""
    r = result
    lines = [f"{r['task_title']}, {r['preset']} ({r['memory_rule']} memory rule) at step {r['step']}, "
             f"{r['segments']} segment(s) of {r['segment_len']} tokens, {r['n_mem']} x {r['d_model']} memory",
             f"probes trained on train (n={r['n_train']}), scored on {r['split']} (n={r['n']}); chance "
             f"(majority class) {r['chance']:.3f}; the model itself {r['model_accuracy']:.3f}",
             "boundary  carried  write  |carried|/|emb|  |write|/|emb|  swap: write  readout"]
    for row in r["boundaries"]:
        sens = row["sensitivity"] or {}
        lines.append(f"{row['boundary']:>8}{_cell(row['carried']['accuracy'], 9)}{_cell(row['write']['accuracy'], 7)}"
                     f"{_cell(row['carried_norm_ratio'], 17)}{_cell(row['write_norm_ratio'], 15)}"
                     f"{_cell(sens.get('write'), 13)}{_cell(sens.get('readout'), 9)}")
    depth_rows = r["boundaries"][0]["carried"].get("by_depth_segment")
    if depth_rows:
        lines.append("carried accuracy by segment of the supporting fact ('.': boundary before the fact):")
        for s, first in depth_rows.items():
            cells = [f"{row['carried']['by_depth_segment'][s]['accuracy']:.2f}"
                     if row["carried"]["by_depth_segment"][s]["fact_read"] else "  . " for row in r["boundaries"]]
            label = f"segment {s} (n={first['n']}):"
            lines.append(f"  {label:<20} {' '.join(cells)}")
    lines.append(f"note: {r['note']}")
    return "\n".join(lines)


def plot_probe(result: dict[str, Any], path: str | Path) -> Path:
    """Probe accuracy by boundary, carried and write, with the chance line (PNG, atomically)."""
    from pipelines.figures.common import _new_figure, _style, save_figure

    rows = result["boundaries"]
    b = [row["boundary"] for row in rows]
    with _style():
        fig = _new_figure(6.0, 3.6)
        ax = fig.add_subplot()
        ax.plot(b, [row["carried"]["accuracy"] for row in rows], "o-", label="carried memory (after the rule)")
        ax.plot(b, [row["write"]["accuracy"] for row in rows], "s--", label="write (before the rule)")
        ax.axhline(result["chance"], color="grey", ls=":", lw=1.2, label=f"chance ({result['chance']:.2f})")
        ax.set_xticks(b)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("boundary b (memory after b segments)")
        ax.set_ylabel(f"probe accuracy ({result['split']})")
        ax.set_title(f"{result['task']}, {result['preset']} (step {result['step']}): linear memory probe")
        ax.legend(loc="best", framealpha=0.8)
    return save_figure(fig, path)[0]
