"""Figures of every pipeline stage, drawn from the files the stages write.

One builder per figure returns a :class:`matplotlib.figure.Figure` (notebooks display it
inline); one ``plot_*`` wrapper builds it and writes PNG (and SVG on request) atomically.

- :func:`simulation_figure` -- a simulation Dataset (architecture Contract 1): Ca2+, IP3,
  gliotransmitter release, the LTP trace with segment boundaries, the STP variables.
- :func:`retention_figure` -- a retention table (Contract 2): RF(t, T) for several T and
  the T-free streaming variant (an extension, labelled as such).
- :func:`fit_figure` -- the same table: simulated end-of-segment points, the fitted macro
  model and its residuals, with R^2 and k in the legend.
- :func:`decay_scale_figure` -- the STP spatial response versus synapse distance next to
  the attention's positional weights exp(-scale * distance) and the matrices P.
- :func:`plot_training_curves` -- a training run directory (Contract 6): loss and accuracy,
  drawn by the trainer's own ``rmaat.train.metrics.plot_curves``.

Only matplotlib's object-oriented API is used, with an Agg canvas: no pyplot state, no
GUI backend, and nothing here imports torch or brian2, so the simulation side can draw
its figures on a machine without either.  Bad inputs raise the error class of the stage
that wrote them (SimulationInputError, RetentionTableError, DataError).
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuro_sim.errors import SimulationInputError
from neuro_sim.spatial import PAPER_SCALES  # the paper's sweep {1, 2, 5, 10}; SciPy only, no brian2
from retention.errors import RetentionTableError
from retention.table import format_ranges
from rmaat.errors import DataError

#: The scale the paper reports as robust across tasks -- the paper's finding, not ours.
PAPER_ROBUST_SCALE = 2.0

#: Trace panels of the simulation figure: title and the variable names (Contract 1) it shows.
#: A variable on ``time`` that matches no panel is drawn in a final "other traces" panel,
#: so a model that records something new is still shown rather than silently dropped.
SIMULATION_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Neuron states", ("x_pre", "x_post", "x_mean")),
    ("Astrocyte Ca$^{2+}$", ("calcium",)),
    ("Astrocyte IP$_3$ and receptors", ("ip3", "gamma_a", "h")),
    ("Gliotransmitter release", ("gliotransmitter", "g_a", "x_a")),
    ("LTP trace (slow, saturating)", ("gamma_s", "p_l_mean", "p_l")),
    ("Synapses: STP variables (fast)", ("u_s", "x_s", "r_s", "glutamate", "p_s_mean", "s_mean")),
)

_LTP_PANEL = next(panel for panel in SIMULATION_PANELS if panel[0].startswith("LTP"))

_UNIT_NAMES = {"": "dimensionless", "1": "dimensionless", "uM": "µM", "umolar": "µM",
               "mM": "mM", "mmolar": "mM", "second": "s", "1/s": "s$^{-1}$", "Hz": "Hz"}

_STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "svg.hashsalt": "rmaat",  # stable SVG element ids: regenerated figures diff cleanly
}


# --------------------------------------------------------------------------- helpers
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
    """Temp file in the target directory, then ``os.replace``: never a half-written image."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    fmt = target.suffix[1:].lower()
    # No creation date or version in the metadata: regenerating a figure gives the same bytes.
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    try:
        with open(tmp, "xb") as handle:
            fig.savefig(handle, format=fmt, dpi=dpi, metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


# ------------------------------------------------------------------- simulation figure
def segment_end_times(ds: xr.Dataset) -> np.ndarray:
    """End time (s after warm-up) of each segment of a simulation Dataset.

    Taken from a variable/coordinate on ``segment`` with units of seconds when the
    simulator stored one, else from the protocol's ``segment_period_s``.
    """
    for name in list(ds.coords) + list(ds.data_vars):
        da = ds[name]
        if da.dims == ("segment",) and unit_label(da.attrs.get("units")) == "s":
            return np.asarray(da.values, dtype=float)
    period = _json_attr(ds, "protocol").get("segment_period_s")
    if period is None:
        raise SimulationInputError(
            "the simulation Dataset has no segment times: neither a 'segment' variable in seconds "
            "nor a 'protocol' attribute with segment_period_s; write it with neuro_sim.simulate()"
        )
    return np.asarray(ds["segment"].values, dtype=float) * float(period)


def _check_simulation(ds: xr.Dataset) -> None:
    missing = [name for name in ("ltp_end",) if name not in ds]
    if missing or "time" not in ds.dims or "segment" not in ds.dims:
        raise SimulationInputError(
            "not a simulation Dataset (needs dims 'time' and 'segment' and variable 'ltp_end'); "
            "save one with neuro_sim.simulate(...).to_netcdf(PATH)"
        )


def _panel_of(name: str) -> int:
    key = name.lower()
    for index, (_, names) in enumerate(SIMULATION_PANELS):
        if key in names:
            return index
    return len(SIMULATION_PANELS)


def _rank_in_panel(name: str) -> int:
    index = _panel_of(name)
    return SIMULATION_PANELS[index][1].index(name.lower()) if index < len(SIMULATION_PANELS) else 0


def _trace(da: xr.DataArray) -> tuple[np.ndarray, str]:
    """A 1-D trace over time; extra dims (e.g. one per synapse) are averaged and said so."""
    extra = [d for d in da.dims if d != "time"]
    if extra:
        return np.asarray(da.mean(extra).values, dtype=float), f" (mean over {', '.join(extra)})"
    return np.asarray(da.values, dtype=float), ""


def _simulation_panels(ds: xr.Dataset) -> list[tuple[str, list[list[str]]]]:
    """(title, variables grouped by unit) per panel, in SIMULATION_PANELS order.

    A panel holds at most two units (left axis and a twin right axis); further units
    continue in a panel of their own.  A per-synapse or per-neuron variable whose mean is
    stored as ``<name>_mean`` is shown by that mean.  With ``release_time`` present, the
    gliotransmitter pulse trace (17 ms pulses, narrower than the trace's sampling) is
    replaced by markers at the release times.
    """
    skip = {"ltp_end", "ltp"} | ({"gliotransmitter", "g_a"} if "release_time" in ds else set())
    traces = [n for n in ds.data_vars if "time" in ds[n].dims and n not in skip
              and not (ds[n].ndim > 1 and f"{n}_mean" in ds.data_vars)]
    if not traces:
        raise SimulationInputError("the simulation Dataset holds no traces on 'time' to plot")
    # within a panel, the variable listed first in SIMULATION_PANELS sets the left axis
    traces.sort(key=lambda n: (_panel_of(n), _rank_in_panel(n)))
    groups: dict[int, dict[str, list[str]]] = {}
    for name in traces:
        unit = unit_label(ds[name].attrs.get("units"))
        groups.setdefault(_panel_of(name), {}).setdefault(unit, []).append(name)
    panels = []
    for index in sorted(groups):
        title = SIMULATION_PANELS[index][0] if index < len(SIMULATION_PANELS) else "Other traces"
        units = list(groups[index].values())
        for start in range(0, len(units), 2):
            panels.append((title if start == 0 else f"{title} (continued)", units[start:start + 2]))
    return panels


def _ylabel(ds: xr.Dataset, panel_title: str, names: Sequence[str]) -> str:
    """Short axis label: the quantity and its unit (the legend names each trace)."""
    unit = unit_label(ds[names[0]].attrs.get("units"))
    if panel_title == _LTP_PANEL[0]:
        quantity = "LTP level"
    elif unit in ("µM", "mM"):
        quantity = "concentration"
    else:
        quantity = "value"
    return f"{quantity} ({unit})"


def _panel_extras(ax, ds: xr.Dataset, panel_title: str, ends: np.ndarray) -> list:
    """Markers a panel adds beyond its traces; returns their legend handles.

    LTP panel: the end-of-segment samples the macro model is fitted to.  Ca2+ panel: the
    release threshold C_Theta (``model_params`` are SI, so mM).  Gliotransmitter panel:
    the release times (``release_time``).
    """
    handles = []
    if panel_title == _LTP_PANEL[0]:
        handles += ax.plot(ends, ds["ltp_end"].values, "o", ms=4, color="black",
                           label="sampled at each segment's end (ltp_end)")
    elif panel_title == SIMULATION_PANELS[1][0]:
        theta = _json_attr(ds, "model_params").get("C_Theta")
        if isinstance(theta, (int, float)) and unit_label(ds["calcium"].attrs.get("units")) == "µM":
            handles.append(ax.axhline(theta * 1e3, color="C3", ls="--", lw=1.0,
                                      label="release threshold C$_Θ$"))
    elif panel_title == SIMULATION_PANELS[3][0] and "release_time" in ds:
        times = np.asarray(ds["release_time"].values, dtype=float)
        handles += ax.plot(times, np.full(times.shape, 0.98), "v", ms=7, color="C3",
                           transform=ax.get_xaxis_transform(), clip_on=False, linestyle="none",
                           label=f"gliotransmitter release ({times.size} events)")
    return handles


def simulation_figure(ds: xr.Dataset, *, title: str | None = None) -> Figure:
    """Traces of one simulation run, one panel per quantity, segment boundaries marked.

    Panels (those the model records): neuron states, astrocyte Ca2+ (with the release
    threshold), IP3 and receptors, gliotransmitter release, the LTP trace with its
    end-of-segment samples, and the synapses' STP variables.  Grey bands mark the
    presynaptic bursts, dotted lines the segment boundaries.
    """
    _check_simulation(ds)
    panels = _simulation_panels(ds)
    ends = segment_end_times(ds)
    protocol = _json_attr(ds, "protocol")
    burst = float(protocol.get("burst_duration_s", 0.0)) if protocol.get("stimulate", True) else 0.0
    period = float(protocol.get("segment_period_s", ends[0] if len(ends) else 0.0))
    time = np.asarray(ds["time"].values, dtype=float)
    time_label = f"{ds['time'].attrs.get('long_name', 'time')} ({unit_label(ds['time'].attrs.get('units', 's'))})"

    with _style():
        fig = _new_figure(12.0, 1.9 * len(panels) + 1.0)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (panel_title, unit_groups) in zip(axes, panels):
            handles = []
            for k, names in enumerate(unit_groups):
                target = ax if k == 0 else ax.twinx()
                for name in names:
                    values, note = _trace(ds[name])
                    label = textwrap.fill((ds[name].attrs.get("long_name") or name) + note, 42)
                    handles += target.plot(time, values, lw=1.1, label=label, color=f"C{len(handles) % 10}",
                                           ls="-" if k == 0 else "--")
                target.set_ylabel(_ylabel(ds, panel_title, names) + ("  [dashed]" if k else ""))
                if k:
                    target.grid(False)
                    target.spines["right"].set_visible(True)
            handles += _panel_extras(ax, ds, panel_title, ends)
            for start in (np.concatenate([[0.0], ends[:-1]]) if burst > 0 else []):
                ax.axvspan(start, start + burst, color="0.88", lw=0, zorder=0)
            for end in ends:
                ax.axvline(end, color="0.45", ls=":", lw=0.9, zorder=0)
            ax.set_title(panel_title, loc="left")
            right = 1.09 if len(unit_groups) > 1 else 1.02  # clear of a twin axis's labels
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(right, 1.0), borderaxespad=0.0,
                      frameon=False)
        axes[-1].set_xlabel(time_label)
        if len(time):
            axes[-1].set_xlim(time[0], max(time[-1], ends[-1] if len(ends) else time[-1]))
        model = ds.attrs.get("model", "unknown model")
        fig.suptitle(title or f"Neuron–astrocyte simulation ({model}): {ds.sizes['segment']} segments"
                     + (f" of {period:g} s" if period else "") + " — dotted: segment boundaries"
                     + ("; grey: presynaptic burst" if burst > 0 else ""), fontsize=12)
    return fig


# -------------------------------------------------------------------- retention figures
def _check_table(ds: xr.Dataset, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise RetentionTableError(
            f"the retention table lacks {', '.join(missing)}; regenerate it with `pipeline simulate`"
        )


#: Segment counts drawn by default: the paper's ablation (4, 8, 16 segments) and one longer.
DEFAULT_TOTALS: tuple[int, ...] = (4, 8, 16, 32)


def default_totals(available: Sequence[int], limit: int = 5) -> list[int]:
    """The segment counts to draw: DEFAULT_TOTALS where present, else up to ``limit`` spread out."""
    available = sorted(int(t) for t in available)
    chosen = [t for t in DEFAULT_TOTALS if t in available]
    if chosen:
        return chosen
    if len(available) > limit:
        available = [available[i] for i in np.linspace(0, len(available) - 1, limit).round().astype(int)]
    return sorted(set(available))


def retention_figure(ds: xr.Dataset, *, totals: Sequence[int] | None = None) -> Figure:
    """RF(t, T) against t for several T, and the T-free streaming variant r_t.

    Linear axes: the factors that matter are the large early ones, and the way a segment's
    factor shrinks as T grows (the sum over t is always 1) is what the left panel shows.
    """
    _check_table(ds, ["retention_factor"])
    available = [int(t) for t in ds["total_segments"].values]
    totals = default_totals(available) if not totals else sorted({int(t) for t in totals})
    unknown = [t for t in totals if t not in available]
    if unknown:
        raise RetentionTableError(
            f"the retention table has no entry for T = {', '.join(map(str, unknown))} (it has "
            f"T = {format_ranges(available)}); add it with `pipeline simulate --segments {unknown[0]}`"
        )
    streaming = "retention_factor_streaming" in ds
    with _style():
        fig = _new_figure(11.0 if streaming else 6.5, 4.3)
        axes = fig.subplots(1, 2 if streaming else 1, squeeze=False, sharex=True)[0]
        ax = axes[0]
        for k, total in enumerate(totals):
            rf = ds["retention_factor"].sel(total_segments=total).dropna("segment")
            ax.plot(rf["segment"], rf.values, "o-", ms=3, lw=1.2, color=f"C{k % 10}", label=f"T = {total}")
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("segment t")
        ax.set_ylabel("retention factor RF(t, T) (dimensionless)")
        ax.set_title("Paper's factor: RF(t, T) = Δp$_t$ / Σ$_{i≤T}$ Δp$_i$,  Σ$_t$ RF = 1", loc="left")
        ax.legend(title="total segments", frameon=False)
        if streaming:
            ax = axes[1]
            longest = max(totals)
            r = ds["retention_factor_streaming"].sel(total_segments=longest).dropna("segment")
            ax.plot(r["segment"], r.values, "o-", ms=3, lw=1.2, color="C3",
                    label="r$_t$ = Δp$_t$ / Δp$_1$ (the same for every T)")
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("segment t")
            ax.set_ylabel("streaming factor r$_t$ (dimensionless)")
            ax.set_title("T-free streaming variant (extension, not in the paper)", loc="left")
            ax.legend(frameon=False)
        source = ds.attrs.get("simulator_model", "")
        fig.suptitle("Retention factors from the fitted LTP saturation curve"
                     + (f" ({source} model)" if source else ""), fontsize=12)
    return fig


def fit_summary(ds: xr.Dataset) -> dict:
    """Family, formula, parameters (+ standard errors), R^2 and rate k of the table's latest fit.

    Read from the flat ``macro_model_*`` attributes that ``retention.build_table`` writes.
    ``k`` is the family's own rate for the exponential and otherwise the half-saturation
    rate ln 2 / t_1/2 (``macro_model_rate_k_half``), one number comparable across families.
    """
    attrs = ds.attrs
    out: dict = {"family": str(attrs.get("macro_model_family", "unknown")),
                 "formula": str(attrs.get("macro_model_formula", "")),
                 "params": _json_attr(ds, "macro_model_params"),
                 "stderr": _json_attr(ds, "macro_model_param_stderr")}
    if "macro_model_r2" in attrs:
        out["r2"] = float(attrs["macro_model_r2"])
    if "k" in out["params"]:
        out["k"], out["k_name"] = float(out["params"]["k"]), "k"
        if isinstance(out["stderr"].get("k"), (int, float)):
            out["k_stderr"] = float(out["stderr"]["k"])
    elif "macro_model_rate_k_half" in attrs:
        out["k"], out["k_name"] = float(attrs["macro_model_rate_k_half"]), "k$_{1/2}$"
    return out


def _smooth_fit(summary: dict, t: np.ndarray) -> np.ndarray | None:
    """The fitted family evaluated on a fine grid, or None when the family is unknown here."""
    from retention.macro_model import FAMILIES  # numpy/scipy only

    family = FAMILIES.get(summary["family"])
    if family is None or not all(name in summary["params"] for name in family.param_names):
        return None
    return family.curve(t, *(float(summary["params"][name]) for name in family.param_names))


def _fit_label(summary: dict) -> str:
    """Legend entry of the fitted curve: family, formula, R^2 and k (with its standard error)."""
    lines = [f"fitted macro model: {summary['family'].replace('_', ' ')}"]
    if summary["formula"]:
        lines.append(f"f(t) = {summary['formula']}")
    extras = []
    if "r2" in summary:  # an excellent fit reads better as 1 - R^2 than as 1.00000
        r2 = summary["r2"]
        extras.append(f"R² = 1 − {1 - r2:.1e}" if 0.99999 < r2 < 1 else f"R² = {r2:.5f}")
    if "k" in summary:
        error = f" ± {summary['k_stderr']:.2g}" if "k_stderr" in summary else ""
        extras.append(f"{summary['k_name']} = {summary['k']:.4f}{error} / segment")
    if extras:
        lines.append(", ".join(extras))
    return "\n".join(lines)


def fit_figure(ds: xr.Dataset) -> Figure:
    """Simulated end-of-segment LTP, the fitted macro model, and the residuals.

    The fitted curve is solid over the simulated segments and dashed where it extrapolates
    (a table's rows can reach beyond its latest run's curve).
    """
    _check_table(ds, ["ltp_simulated", "ltp_fitted"])
    segment = np.asarray(ds["segment"].values, dtype=float)
    simulated = np.asarray(ds["ltp_simulated"].values, dtype=float)
    fitted = np.asarray(ds["ltp_fitted"].values, dtype=float)
    known = np.isfinite(simulated)
    if not known.any():
        raise RetentionTableError("the table's ltp_simulated is all NaN; regenerate it with `pipeline simulate`")
    summary = fit_summary(ds)
    fit_label = _fit_label(summary)
    last = float(segment[known][-1])
    grid = np.linspace(0.0, float(segment[-1]), 400)
    smooth = _smooth_fit(summary, grid)
    if smooth is None:  # unknown family: join the fitted points
        grid, smooth = np.concatenate([[0.0], segment]), np.concatenate([[0.0], fitted])
    units = unit_label(ds["ltp_simulated"].attrs.get("units"))
    with _style():
        fig = _new_figure(7.5, 6.2)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
        inside = grid <= last
        top.plot(grid[inside], smooth[inside], "-", lw=1.8, color="C0", label=fit_label)
        if (~inside).any():
            top.plot(grid[~inside], smooth[~inside], "--", lw=1.2, color="C0",
                     label="extrapolated beyond the simulation")
        top.plot(segment[known], simulated[known], "o", ms=4.5, mfc="white", color="black",
                 label="simulated, sampled at each segment's end")
        top.set_ylabel("LTP level f(t) (" + units + ")")
        top.set_title("LTP saturation curve and its macro-model fit", loc="left")
        top.legend(loc="lower right", frameon=False)
        residual = simulated[known] - fitted[known]
        bottom.axhline(0.0, color="0.4", lw=0.8)
        bottom.plot(segment[known], residual, "o-", ms=3.5, lw=0.8, color="C3", label="simulated − fitted")
        bottom.set_xlabel("segment t")
        bottom.set_ylabel(f"residual ({units})")
        bottom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        bottom.legend(loc="best", frameon=False)
        source = ds.attrs.get("simulator_model")
        name = ds["ltp_simulated"].attrs.get("long_name", "LTP variable")
        fig.suptitle(f"{name}" + (f" — simulator: {source}" if source else ""), fontsize=10)
    return fig


# --------------------------------------------------------------------- decay-scale figure
def positional_decay(n_tokens: int, scale: float) -> np.ndarray:
    """P_ij = exp(-|i - j| * scale), the attention's positional decay (SPEC section 3), (N, N).

    NumPy twin of ``rmaat.attention.positional.decay_matrix`` (which is torch), so that the
    figure needs no torch; a test checks that the two agree.
    """
    index = np.arange(n_tokens, dtype=float)
    return np.exp(-np.abs(index[:, None] - index[None, :]) * scale)


def _check_spatial(spatial: xr.Dataset) -> None:
    needed = ("p_s_relative", "attention_decay_relative", "effective_scale")
    if any(name not in spatial for name in needed) or "scale" not in spatial.dims:
        raise SimulationInputError(
            "not an STP spatial-response Dataset (needs p_s_relative, attention_decay_relative and "
            "effective_scale over 'scale'); create one with neuro_sim.spatial.spatial_response()"
        )


def decay_scale_figure(spatial: xr.Dataset | None, *, scales: Sequence[float] | None = None,
                       n_tokens: int = 16) -> Figure:
    """The astrocyte's STP spatial response beside the attention's positional decay, per scale.

    ``spatial`` is :func:`neuro_sim.spatial.spatial_response`'s Dataset (dims scale x
    distance): the STP p_s at each synapse distance from one stimulated synapse, relative to
    distance 1, drawn next to exp(-scale (d - 1)) -- the same decay with no network in
    between -- and, when present, the p_s of every synapse on the 3 x 3 grid.  The lower
    rows show the attention's weights exp(-scale |i - j|) against token distance and the
    matrices P for ``n_tokens`` tokens.  With ``spatial=None`` only the attention is drawn.
    """
    if spatial is not None:
        _check_spatial(spatial)
        scales = [float(s) for s in spatial["scale"].values] if scales is None else [float(s) for s in scales]
        missing = [s for s in scales if s not in set(float(v) for v in spatial["scale"].values)]
        if missing:
            raise SimulationInputError(
                f"the spatial response has no scale {missing[0]:g}; recompute it with that scale")
    scales = list(PAPER_SCALES) if scales is None else [float(s) for s in scales]
    grid = spatial is not None and "p_s_grid" in spatial
    colors = {s: f"C{k % 10}" for k, s in enumerate(scales)}
    with _style():
        fig = _new_figure(12.5, 10.5 if grid else 7.6)
        rows = fig.subfigures(3 if grid else 2, 1, height_ratios=[1.25, 0.9, 1.0] if grid else [1.25, 1.0])
        top = rows[0].subplots(1, 2 if spatial is not None else 1, squeeze=False)[0]
        if spatial is not None:
            ax = top[0]
            d = np.asarray(spatial["distance"].values, dtype=float)
            far = d >= 1.0
            for s in scales:
                row = spatial.sel(scale=s)
                eff = float(row["effective_scale"])
                ax.plot(d[far], row["p_s_relative"].values[far], "o-", ms=4, lw=1.5, color=colors[s],
                        label=f"scale = {s:g} (STP decay rate {eff:.2f})")
                ax.plot(d[far], row["attention_decay_relative"].values[far], "--", lw=1.0, color=colors[s])
            ax.plot([], [], "o-", color="0.3", label="solid: STP p$_s$ of the rate network")
            ax.plot([], [], "--", color="0.3", label="dashed: exp(−scale·(d − 1))")
            _log_y(ax)
            ax.set_xlabel("distance d from the stimulated synapse (grid units)")
            ax.set_ylabel("response relative to d = 1 (dimensionless, log scale)")
            at = str(spatial.attrs.get("at", "")).replace("_", " ")
            ax.set_title("Astrocyte STP: spread of one synapse's activity" + (f" (at {at})" if at else ""),
                         loc="left")
            ax.legend(frameon=False, fontsize=7.5, ncol=1, loc="lower left")
        ax = top[-1]
        distance = np.arange(n_tokens)
        for s in scales:
            ax.plot(distance, np.exp(-s * distance), "o-", ms=3, lw=1.3, color=colors[s],
                    label=f"scale = {s:g}" + ("  (paper: robust)" if s == PAPER_ROBUST_SCALE else ""))
        _log_y(ax, 1e-6, 2.0)  # the weights span many decades; a linear axis shows only the first step
        ax.set_xlabel("token distance |i − j| (positions)")
        ax.set_ylabel("weight exp(−scale·|i − j|)\n(dimensionless, log scale)")
        ax.set_title("Attention: positional weight vs token distance", loc="left")
        ax.legend(frameon=False)
        if grid:
            _grid_row(rows[1], spatial, scales)
        _decay_heatmaps(rows[-1], scales, n_tokens)
        fig.suptitle(f"Decay scale ∈ {{{', '.join(f'{s:g}' for s in scales)}}}: astrocyte STP coupling "
                     "and the attention's positional term P$_{ij}$ = exp(−scale·|i − j|)\n"
                     f"The RMAAT paper's sensitivity study reports scale = {PAPER_ROBUST_SCALE:g} as robust "
                     "across tasks (the paper's finding, not re-measured here)", fontsize=11)
    return fig


def _grid_row(subfig, spatial: xr.Dataset, scales: Sequence[float]) -> None:
    """p_s of every synapse on the (post, pre) grid, log colour scale, one panel per scale."""
    from matplotlib.colors import LogNorm

    axes = subfig.subplots(1, len(scales), squeeze=False)[0]
    values = np.asarray(spatial["p_s_grid"].sel(scale=list(scales)).values, dtype=float)
    positive = values[values > 0]
    norm = LogNorm(vmin=max(float(positive.min()), 1e-8) if positive.size else 1e-8,
                   vmax=float(positive.max()) if positive.size else 1.0)
    source = json.loads(spatial.attrs.get("source_synapse", "null") or "null")
    image = None
    for ax, s, panel in zip(axes, scales, values):
        image = ax.imshow(np.where(panel > 0, panel, np.nan), norm=norm, cmap="magma", origin="upper")
        if isinstance(source, list) and len(source) == 2:
            ax.text(source[1], source[0], "stimulated", ha="center", va="center", fontsize=7.5)
        ax.set_title(f"STP p$_s$ on the synapse grid, scale = {s:g}", fontsize=9)
        ax.set_xlabel("presynaptic neuron j")
        ax.set_xticks(range(panel.shape[1]))
        ax.set_yticks(range(panel.shape[0]))
        ax.grid(False)
    axes[0].set_ylabel("postsynaptic neuron i")
    subfig.colorbar(image, ax=list(axes), label="p$_s$ (dimensionless)", shrink=0.9)


def _decay_heatmaps(subfig, scales: Sequence[float], n_tokens: int) -> None:
    """The attention's matrices P for each scale, one shared linear colour scale."""
    axes = subfig.subplots(1, len(scales), squeeze=False)[0]
    image = None
    for ax, s in zip(axes, scales):
        image = ax.imshow(positional_decay(n_tokens, s), vmin=0.0, vmax=1.0, cmap="viridis",
                          interpolation="nearest")
        ax.set_title(f"attention P, scale = {s:g}", fontsize=9)
        ax.set_xlabel("key position j")
        ax.grid(False)
    axes[0].set_ylabel("query position i")
    subfig.colorbar(image, ax=list(axes), label="P$_{ij}$ (dimensionless)", shrink=0.9)


# ----------------------------------------------------------------------- training figure
def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` (Contract 6), one dict per line.

    Checked line by line so that a missing or corrupt file is reported in one line naming
    the file and the line, before anything is drawn.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: give a run directory written by `pipeline train --run-dir`")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}, line {number}: not valid JSON; the file is corrupt") from None
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise DataError(f"{path}, line {number}: expected an object with 'step' and 'split'")
            records.append(record)
    if not records:
        raise DataError(f"{path} holds no metrics yet: let the run log at least one step")
    return records


# ------------------------------------------------------------------ file-level wrappers
def plot_simulation(ds: xr.Dataset, path: str | os.PathLike, *, svg: bool = False) -> list[Path]:
    """Draw :func:`simulation_figure` for ``ds`` and write it to ``path``."""
    return save_figure(simulation_figure(ds), path, svg=svg)


def plot_retention_table(ds: xr.Dataset, path: str | os.PathLike, *, totals: Sequence[int] | None = None,
                         svg: bool = False) -> list[Path]:
    """Draw :func:`retention_figure` for the table ``ds`` and write it to ``path``."""
    return save_figure(retention_figure(ds, totals=totals), path, svg=svg)


def plot_fit(ds_table: xr.Dataset, path: str | os.PathLike, *, svg: bool = False) -> list[Path]:
    """Draw :func:`fit_figure` for the table ``ds_table`` and write it to ``path``."""
    return save_figure(fit_figure(ds_table), path, svg=svg)


def plot_decay_scale(spatial: xr.Dataset | None, path: str | os.PathLike, *, scales: Sequence[float] | None = None,
                     n_tokens: int = 16, svg: bool = False) -> list[Path]:
    """Draw :func:`decay_scale_figure` and write it to ``path``."""
    return save_figure(decay_scale_figure(spatial, scales=scales, n_tokens=n_tokens), path, svg=svg)


def plot_training_curves(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Draw the loss/accuracy curves of the run in ``run_dir`` and write them (PNG) to ``path``.

    The drawing is the trainer's own :func:`rmaat.train.metrics.plot_curves` (the
    ``curves.png`` of every run), so the two never disagree; here the run directory is
    validated first, and a finished run's title and majority-class accuracy (drawn as a
    baseline) come from its ``summary.json``.
    """
    from rmaat.train.metrics import plot_curves  # torch-free module; loads matplotlib only

    run = Path(run_dir)
    records = read_metrics(run)
    summary = _read_json(run / "summary.json")
    baseline = summary.get("majority_baseline")
    baseline = float(baseline) if isinstance(baseline, (int, float)) and not isinstance(baseline, bool) else None
    return Path(plot_curves(records, path, title=_run_title(run, summary), baseline=baseline))


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when the file is absent or unreadable (a run still going)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _run_title(run: Path, summary: dict) -> str:
    """``task: preset (backprop)`` as the trainer titles its curves, else from config.yaml."""
    if {"task_title", "preset", "backprop"} <= summary.keys():
        return f"{summary['task_title']}: {summary['preset']} ({summary['backprop']})"
    try:
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        return f"{config['task']}: {config['model']['preset']}"
    except Exception:  # a missing, partial or odd config only costs the nicer title
        return f"training run {run.resolve().name}"
