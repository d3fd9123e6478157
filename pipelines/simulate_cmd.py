"""``pipeline simulate``: neuron-astrocyte simulation -> macro-model fit -> retention table.

Every argument is checked before the (slow) simulation starts, and nothing is written
unless the whole run succeeds: a bad request costs a one-line error, not minutes of
simulation followed by a half-written file.  Never imports torch; brian2 is imported by
``neuro_sim`` only once a run is due.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np

import neuro_sim  # import-light: brian2 is loaded only when a network runs
from neuro_sim.codegen import CODEGEN_MODES, validate_codegen
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import MAX_SEGMENTS, validate_segment_count
from pipelines.options import parse_int_list
from retention.atomic import output_path
from retention.build import build_table, update_table
from retention.errors import RetentionTableError
from retention.macro_model import DEFAULT_FAMILIES, ModelSelection, fit_macro_model
from retention.table import format_ranges, read_table, user_table_path

#: The fit always sees at least this many segments, so that three-parameter families are
#: well determined and the plateau is visible even when only T = 2 is requested.
MIN_FIT_SEGMENTS = 16
FAMILY_CHOICES = ("auto",) + DEFAULT_FAMILIES
#: What to do about an --out that exists but is not a valid table.
KEEP_HINT = "refusing to overwrite it: pass --force to replace it or choose another --out"


def parse_segments(specs: tuple[str, ...]) -> list[int]:
    """'16', '4,8,16', '1-64' (and mixtures, repeated) -> sorted unique segment counts, each
    within 1..MAX_SEGMENTS (checked before a range is expanded)."""
    return parse_int_list(specs, "--segments", check=validate_segment_count)


def _check_writable(out: Path) -> None:
    """Fail now if ``out`` could not be written later (a directory, or an unwritable parent)."""
    if out.is_dir():
        raise RetentionTableError(f"--out {out} is a directory; give a file name such as {out / 'retention_table.nc'}")
    out = output_path(out)  # a symlink is written through; a device or FIFO is refused (--force too)
    parent = out.parent
    while not parent.exists():  # the nearest existing ancestor must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        raise RetentionTableError(f"cannot write {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RetentionTableError(f"cannot write {out}: no write permission in {parent}; choose another --out")


def _simulator() -> Callable:
    """``neuro_sim.simulate`` (Contract 1), looked up at call time so tests can replace it."""
    return neuro_sim.simulate


def _format_factors(values: np.ndarray, head: int = 8, tail: int = 2) -> str:
    shown = [f"{v:.4g}" for v in values]
    if len(shown) > head + tail + 1:
        shown = shown[:head] + ["..."] + shown[-tail:]
    return " ".join(shown)


def _summary(selection: ModelSelection, table, requested: list[int], out: Path,
             n_simulated: int, model: str, seconds: float) -> list[str]:
    best = selection.best
    params = ", ".join(
        f"{name} = {value:.4g} ± {best.stderr[name]:.2g}" for name, value in best.params.items()
    )
    others = [f"{f.family} {f.bic - best.bic:+.1f}" for f in selection.ranking()[1:]]
    lines = [
        f"simulated {n_simulated} segments ({model}) in {seconds:.1f} s",
        f"macro model: {best.family} {best.formula}: {params}",
        f"  k = {best.rate_k:.4f} /segment (half-saturation rate), R² = {best.r2:.5f}, "
        f"BIC = {best.bic:.1f}" + (f" (others: {', '.join(others)})" if others else ""),
    ]
    rows = requested if len(requested) <= 8 else requested[:3] + requested[-3:]
    for i, T in enumerate(rows):
        if len(requested) > 8 and i == 3:
            lines.append(f"  ... {len(requested) - 6} more rows in the table")
        factors = table["retention_factor"].sel(total_segments=T).values[:T]
        lines.append(f"  RF(t, {T}): {_format_factors(factors)}")
    lines.append(f"wrote {out} (total_segments: {format_ranges(table['total_segments'].values)})")
    return lines


@click.command()
@click.option("--segments", "-s", "segments", multiple=True, default=("16",), show_default=True,
              metavar="T|T1,T2|LO-HI",
              help=f"Segment counts T to tabulate: 16, 4,8,16 or a range 1-64; repeatable. "
                   f"1 <= T <= {MAX_SEGMENTS}. One run of max(max T, {MIN_FIT_SEGMENTS}) segments "
                   f"serves them all, so the fit always sees at least {MIN_FIT_SEGMENTS} points.")
@click.option("--model", default="tripartite", show_default=True, metavar="|".join(neuro_sim.MODELS),
              help="Simulator model: tripartite (biophysical, default for tables) or astro_rate.")
@click.option("--out", "out", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="Table to create or update (rows for other T are kept). "
                   "Default: $RMAAT_RETENTION_TABLE or ~/.local/share/rmaat/retention_table.nc; "
                   "the packaged default is only written when named here.")
@click.option("--force", is_flag=True,
              help="Replace --out with a fresh table instead of merging into it, even if it is not a valid table.")
@click.option("--family", default="auto", show_default=True, metavar="|".join(FAMILY_CHOICES),
              help="Macro-model family; auto selects by BIC among all families.")
@click.option("--codegen", default="auto", show_default=True, metavar="|".join(CODEGEN_MODES),
              help="Brian2 code generation target; auto picks the fastest that works here.")
@click.option("--dt", "dt_s", type=float, default=None, metavar="SECONDS",
              help="Integration time step in seconds (default: the model's own).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def simulate(segments: tuple[str, ...], model: str, out: Path | None, force: bool, family: str,
             codegen: str, dt_s: float | None, quiet: bool) -> None:
    """Simulate astrocyte LTP, fit the macro model and write retention factors RF(t, T)."""
    # ---- validate everything before the simulation starts
    requested = parse_segments(segments)
    if model not in neuro_sim.MODELS:  # checked here so a typo fails before brian2 is loaded
        raise SimulationInputError(f"unknown --model {model!r}; choose from {', '.join(neuro_sim.MODELS)}")
    if family not in FAMILY_CHOICES:
        raise RetentionTableError(f"unknown --family {family!r}; choose from {', '.join(FAMILY_CHOICES)}")
    validate_codegen(codegen)
    if dt_s is not None and not (np.isfinite(dt_s) and dt_s > 0):
        raise SimulationInputError(f"--dt must be a positive number of seconds, got {dt_s}")
    out = (out or user_table_path()).expanduser()
    _check_writable(out)
    if out.exists() and not force:
        # checked now, before minutes of simulation; read again (under the table's lock) to
        # merge, since another simulation may add rows to it meanwhile
        read_table(out, fix_hint=KEEP_HINT)
    n_fit = max(requested[-1], MIN_FIT_SEGMENTS)

    # ---- simulate, fit, tabulate
    started = time.perf_counter()
    sim = _simulator()(
        total_segments=tuple(sorted(set(requested) | {n_fit})), model=model,
        codegen=codegen, dt_s=dt_s, progress=not quiet,
    )
    seconds = time.perf_counter() - started
    ltp = np.asarray(sim["ltp_end"].values, dtype=float)[:n_fit]  # (n_fit,)
    families = DEFAULT_FAMILIES if family == "auto" else (family,)
    selection = fit_macro_model(ltp, families=families)
    table = update_table(build_table(sim, selection, requested), out, replace=force, fix_hint=KEEP_HINT)
    if not quiet:
        for line in _summary(selection, table, requested, out, ltp.size, model, seconds):
            click.echo(line)
