"""``pipeline plot``: figures from the files the other stages write.

    pipeline plot simulation SIM.nc          a simulation Dataset (neuro_sim.simulate().to_netcdf)
    pipeline plot retention [TABLE]          RF(t, T) for several T + the streaming extension
    pipeline plot fit [TABLE]                the macro-model fit of the saturation curve + residuals
    pipeline plot training RUN_DIR           loss / accuracy of a training run
    pipeline plot decay                      STP spatial response vs the attention's decay scale

TABLE defaults to the retention table shipped in the package.  Every subcommand writes a
PNG (``--out``, written atomically) and, with ``--svg``, an SVG beside it (except
``training``, drawn by the trainer's PNG-only ``plot_curves``).  A missing or
unreadable input is reported in one line (exit status 1) by the stage's own error class.
Imports neither torch nor brian2: ``training`` draws with the trainer's torch-free
``plot_curves`` and ``decay`` integrates the astrocyte rate model with SciPy (< 1 s).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import click
import xarray as xr

from neuro_sim.errors import SimulationInputError
from pipelines import figures


def _out_options(default_name: str) -> Callable:
    """``--out`` and ``--svg``, shared by every subcommand."""
    def decorate(command: Callable) -> Callable:
        command = click.option("--svg", is_flag=True, help="Also write an SVG beside the PNG.")(command)
        return click.option(
            "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path(default_name),
            show_default=True, help="PNG file to write (its directory is created).",
        )(command)
    return decorate


def _check_out(out: Path) -> Path:
    if out.suffix.lower() != ".png":
        raise click.ClickException(f"--out {out} must end in .png (use --svg for an SVG copy)")
    return out


def _report(paths: list[Path]) -> None:
    for path in paths:
        click.echo(f"wrote {path}")


def load_simulation(path: Path) -> xr.Dataset:
    """Read a simulation Dataset written with ``neuro_sim.simulate(...).to_netcdf(path)``."""
    hint = "write one with `neuro_sim.simulate(...).to_netcdf(PATH)`"
    if not path.is_file():
        raise SimulationInputError(f"no simulation file at {path}; {hint}")
    try:
        with xr.open_dataset(path) as opened:
            ds = opened.load()
    except Exception as error:  # any decoding failure means a bad file, not a bug here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SimulationInputError(f"{path} is not a readable netCDF file ({reason}); {hint}") from None
    if "retention_factor" in ds.data_vars:  # the .nc `pipeline simulate` writes: a natural mistake
        raise SimulationInputError(
            f"{path} is a retention table (what `pipeline simulate` writes), not a simulation Dataset: "
            f"`plot simulation` draws the Dataset of neuro_sim.simulate(...).to_netcdf(PATH) (see "
            f"scripts/make_figures.sh); draw this table with `pipeline plot retention {path}`")
    return ds


def load_table(path: Path | None) -> xr.Dataset:
    """Read and validate a retention table (default: the packaged one)."""
    from retention.table import packaged_table_path, read_table

    return read_table(path if path is not None else packaged_table_path())


@click.group()
def plot() -> None:
    """Figures (PNG, optionally SVG) from simulation files, retention tables and training runs."""


@plot.command()
@click.argument("file", type=click.Path(path_type=Path))
@_out_options("simulation.png")
def simulation(file: Path, out: Path, svg: bool) -> None:
    """Ca2+, IP3, gliotransmitter, LTP and STP traces of a simulation Dataset FILE (netCDF).

    FILE is the Dataset of ``neuro_sim.simulate(...).to_netcdf(FILE)``, not the retention table
    that `pipeline simulate` writes (draw that with `pipeline plot retention TABLE`)."""
    _report(figures.plot_simulation(load_simulation(file), _check_out(out), svg=svg))


@plot.command()
@click.argument("table", type=click.Path(path_type=Path), required=False)
@click.option("--totals", default=None, metavar="T1,T2,...",
              help="Segment counts T to draw (default: 4,8,16,32, those the table has).")
@_out_options("retention.png")
def retention(table: Path | None, totals: str | None, out: Path, svg: bool) -> None:
    """Retention factors RF(t, T) for several T and the T-free streaming extension (TABLE: packaged default)."""
    from pipelines.options import parse_int_list

    counts = parse_int_list(totals, "--totals") if totals else None
    _report(figures.plot_retention_table(load_table(table), _check_out(out), totals=counts, svg=svg))


@plot.command()
@click.argument("table", type=click.Path(path_type=Path), required=False)
@_out_options("fit.png")
def fit(table: Path | None, out: Path, svg: bool) -> None:
    """Simulated saturation curve, fitted macro model and residuals (TABLE: packaged default)."""
    _report(figures.plot_fit(load_table(table), _check_out(out), svg=svg))


@plot.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_out_options("training.png")
def training(run_dir: Path, out: Path, svg: bool) -> None:
    """Loss and accuracy against step (train / val / test) of the run in RUN_DIR.

    Drawn by the trainer's own plot_curves (the run's curves.png), so the two never disagree.
    """
    png = figures.plot_training_curves(run_dir, _check_out(out))
    written = [png]
    if svg:
        written.append(figures.plot_training_curves(run_dir, png.with_suffix(".svg")))
    _report(written)


@plot.command()
@click.option("--scales", default="1,2,5,10", show_default=True, metavar="S1,S2,...",
              help="Decay scales to compare (the paper swept 1, 2, 5, 10).")
@click.option("--tokens", default=16, show_default=True, type=click.IntRange(2, 256),
              help="Size N of the positional matrices P drawn as heatmaps.")
@_out_options("decay.png")
def decay(scales: str, tokens: int, out: Path, svg: bool) -> None:
    """STP spatial response vs synapse distance next to the attention's exp(-scale * distance)."""
    from neuro_sim.spatial import spatial_response

    values = _parse_scales(scales)
    spatial = spatial_response(values)
    _report(figures.plot_decay_scale(spatial, _check_out(out), scales=values, n_tokens=tokens, svg=svg))


def _parse_scales(text: str) -> list[float]:
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.ClickException(f"--scales {text!r} is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise click.ClickException("--scales: give positive, finite scales, e.g. 1,2,5,10")
    return values
