"""The simulation figure: the traces of one simulation Dataset (architecture Contract 1).

Ca2+, IP3, gliotransmitter release, the LTP trace with its end-of-segment samples and the
STP variables, one panel per quantity, with segment boundaries and presynaptic bursts
marked.  :func:`simulation_figure` builds it, :func:`plot_simulation` writes it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from neuro_sim.errors import SimulationInputError
from pipelines.figures.common import _json_attr, _new_figure, _style, save_figure, unit_label

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


def plot_simulation(ds: xr.Dataset, path: str | os.PathLike, *, svg: bool = False) -> list[Path]:
    """Draw :func:`simulation_figure` for ``ds`` and write it to ``path``."""
    return save_figure(simulation_figure(ds), path, svg=svg)
