"""What every figure module shares: the rc style, a pyplot-free Figure, axis and unit
helpers, JSON attributes, and atomic saving.

- :func:`_style` -- the rc context every figure is drawn (and saved) in.
- :func:`_new_figure` -- a constrained-layout Figure on an Agg canvas (no pyplot, no GUI).
- :func:`_log_y` -- a log y axis without minor labels.
- :func:`unit_label` -- a readable unit for an axis label.
- :func:`_json_attr` -- a JSON-encoded Dataset attribute as a dict.
- :func:`save_figure` -- PNG (and SVG) written atomically, with no dates in the metadata,
  so that regenerating a figure gives the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from retention.atomic import atomic_write

_UNIT_NAMES = {"": "dimensionless", "1": "dimensionless", "uM": "µM", "umolar": "µM",
               "mM": "mM", "mmolar": "mM", "second": "s", "1/s": "s$^{-1}$", "Hz": "Hz"}

_STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "svg.hashsalt": "rmaat",  # stable SVG element ids: regenerated figures diff cleanly
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def _log_y(ax, bottom: float | None = None, top: float | None = None) -> None:
    """Log y axis with unlabelled minor ticks (measuring dozens of empty minor labels slows layout)."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, numticks=8))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if bottom is not None or top is not None:
        ax.set_ylim(bottom, top)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas: renders without any GUI backend or pyplot state
    return fig


def unit_label(units: object) -> str:
    """Human-readable unit for an axis label (``"uM"`` -> ``"µM"``, ``"1"`` -> dimensionless)."""
    text = "" if units is None else str(units).strip()
    return _UNIT_NAMES.get(text, text)


def save_figure(fig: Figure, path: str | os.PathLike, *, svg: bool = False, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``path`` (PNG) and, with ``svg``, beside it as SVG; both atomically.

    Each file is written to a temporary name in the target directory and moved into place
    with ``os.replace``, so a reader never sees a half-written image.  Returns the paths.
    """
    png = Path(path)
    if png.suffix.lower() != ".png":
        png = png.with_name(png.name + ".png")
    targets = [png] + ([png.with_suffix(".svg")] if svg else [])
    with _style():  # some rcParams (svg.hashsalt) are read at save time
        for target in targets:
            _save_atomically(fig, target, dpi)
    return targets


def _save_atomically(fig: Figure, target: Path, dpi: int) -> None:
    """Never a half-written image (``retention.atomic``)."""
    fmt = target.suffix[1:].lower()
    # No creation date or version in the metadata: regenerating a figure gives the same bytes.
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    atomic_write(target, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi, metadata=metadata))


def _json_attr(ds: xr.Dataset, name: str) -> dict:
    """A JSON-encoded attribute as a dict (empty when absent or not JSON)."""
    raw = ds.attrs.get(name)
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
