"""``pipeline bench``: side-by-side benchmarks that print ratios measured in one run.

These machines are shared and noisy, so every figure is a ratio of kinds/modes measured in
the same invocation, never an absolute time compared across runs.
"""

from __future__ import annotations

import json

import click

from pipelines.options import parse_int_list


def _print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` as an aligned text table with ``columns`` (missing keys shown as '-')."""
    click.echo(title)
    cells = [[_fmt(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(c[i]) for c in cells)) if cells else len(col) for i, col in enumerate(columns)]
    click.echo("  ".join(col.rjust(w) for col, w in zip(columns, widths)))
    for line in cells:
        click.echo("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _emit(rows: list[dict], summary: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps({"benchmark": title, "rows": rows, "summary": summary}))
        return
    _print_table(f"{title}: raw measurements", rows, list(rows[0].keys()) if rows else [])
    click.echo()
    _print_table(f"{title}: ratios (measured side by side in this run)", summary,
                 list(summary[0].keys()) if summary else [])


@click.group()
def bench() -> None:
    """Benchmarks: peak memory of BPTT vs AMRB, and attention cost vs length."""


@bench.command()
@click.option("--segments", default="4,8,16,32", show_default=True,
              help="Comma-separated segment counts (equal segment length, so L = T * segment length).")
@click.option("--segment-len", default=128, show_default=True, type=click.IntRange(1), help="Tokens per segment.")
@click.option("--d-model", default=128, show_default=True, type=click.IntRange(4), help="Model width.")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1), help="Batch size.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the raw rows.")
def memory(segments: str, segment_len: int, d_model: int, batch: int, device: str | None,
           as_json: bool) -> None:
    """Peak memory and step time of one training step, BPTT vs AMRB, each in a fresh process."""
    from rmaat.benchmarks.memory_bench import format_table, run_memory_bench, summarise

    counts = parse_int_list(segments, "--segments")
    rows = run_memory_bench(segments=counts, segment_len=segment_len, d_model=d_model, batch=batch,
                            device=device)
    if as_json:
        click.echo(json.dumps({"benchmark": "memory", "rows": rows, "summary": summarise(rows)}))
    else:
        click.echo(format_table(rows))


@bench.command()
@click.option("--lengths", default="1024,2048,4096,8192,16384", show_default=True,
              help="Comma-separated sequence lengths.")
@click.option("--d-model", default=128, show_default=True, type=click.IntRange(4), help="Model width.")
@click.option("--heads", default=4, show_default=True, type=click.IntRange(1), help="Attention heads.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the raw rows.")
def attention(lengths: str, d_model: int, heads: int, device: str | None, as_json: bool) -> None:
    """Forward+backward time and memory of astromorphic vs linear vs softmax attention."""
    from rmaat.benchmarks.attention_bench import run_attention_bench, summarise

    values = parse_int_list(lengths, "--lengths")
    if d_model % heads:
        raise click.ClickException(f"--heads {heads} must divide --d-model {d_model}")
    rows = run_attention_bench(lengths=values, d_model=d_model, n_heads=heads, device=device,
                               progress=not as_json)
    _emit(rows, summarise(rows), as_json, "attention")


@bench.command()
@click.option("--presets", default="rmaat,rmaat:bptt,rmt,transformer", show_default=True,
              help="Comma-separated presets; NAME:bptt or NAME:amrb forces a training mode.")
@click.option("--doc-len", default=4096, show_default=True, type=click.IntRange(1),
              help="Tokens per document (Retrieval shape: two documents per example).")
@click.option("--segments", default=8, show_default=True, type=click.IntRange(1),
              help="Segments per document for the recurrent presets.")
@click.option("--d-model", default=128, show_default=True, type=click.IntRange(4), help="Model width.")
@click.option("--layers", default=2, show_default=True, type=click.IntRange(1), help="Encoder layers.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1), help="Examples per step.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1), help="Timed steps per preset.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--compile", "compile_", is_flag=True,
              help="Also time a torch.compile'd twin (NAME+compiled) of every preset; compile time apart.")
@click.option("--compile-mode", default=None, type=click.Choice(["default", "max-autotune-no-cudagraphs"]),
              help="torch.compile mode of the compiled twins (with --compile).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the raw rows.")
def throughput(presets: str, doc_len: int, segments: int, d_model: int, layers: int, batch: int,
               rounds: int, device: str | None, compile_: bool, compile_mode: str | None, as_json: bool) -> None:
    """Training tokens/s and peak memory of presets at equal size, timed in rotating rounds."""
    from rmaat.benchmarks.throughput_bench import run_throughput_bench, summarise
    from rmaat.encoder.config import PRESETS

    names = [p.strip() for p in presets.split(",") if p.strip()]
    unknown = [p for p in names if p.split(":")[0] not in PRESETS
               or (":" in p and p.split(":")[1] not in ("bptt", "amrb"))]
    if unknown or not names:
        raise click.ClickException(f"--presets: unknown preset(s) {unknown}; choose from {', '.join(PRESETS)} "
                                   "(optionally :bptt or :amrb)")
    if doc_len % segments:
        raise click.ClickException(f"--doc-len {doc_len} is not divisible by --segments {segments}")
    if compile_mode is not None and not compile_:
        raise click.ClickException("--compile-mode needs --compile")
    rows = run_throughput_bench(names, doc_len=doc_len, segments=segments, d_model=d_model,
                                n_layers=layers, batch=batch, rounds=rounds, device=device,
                                compile=compile_, compile_mode=compile_mode)
    _emit(rows, summarise(rows), as_json, "throughput")
