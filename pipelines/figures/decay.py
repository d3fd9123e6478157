"""The decay-scale figure: the astrocyte's STP spatial response next to the attention's
positional decay exp(-scale * distance) and its matrices P, for each scale.

:func:`decay_scale_figure` builds it from :func:`neuro_sim.spatial.spatial_response`'s
Dataset (or draws the attention side alone), :func:`plot_decay_scale` writes it, and
:func:`positional_decay` is the torch-free twin of the attention's decay matrix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from neuro_sim.errors import SimulationInputError
from neuro_sim.spatial import PAPER_SCALES  # the paper's sweep {1, 2, 5, 10}; SciPy only, no brian2
from pipelines.figures.common import _log_y, _new_figure, _style, save_figure

#: The scale the paper reports as robust across tasks -- the paper's finding, not ours.
PAPER_ROBUST_SCALE = 2.0


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


def plot_decay_scale(spatial: xr.Dataset | None, path: str | os.PathLike, *, scales: Sequence[float] | None = None,
                     n_tokens: int = 16, svg: bool = False) -> list[Path]:
    """Draw :func:`decay_scale_figure` and write it to ``path``."""
    return save_figure(decay_scale_figure(spatial, scales=scales, n_tokens=n_tokens), path, svg=svg)
