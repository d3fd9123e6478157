"""Figures of a retention table (architecture Contract 2): its factors and its fit.

- :func:`retention_figure` -- RF(t, T) for several T and the T-free streaming variant r_t
  (an extension, labelled as such).
- :func:`fit_figure` -- the simulated end-of-segment LTP, the fitted macro model and its
  residuals, with R^2 and k (from :func:`fit_summary`) in the legend.

:func:`plot_retention_table` and :func:`plot_fit` write them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pipelines.figures.common import _json_attr, _new_figure, _style, save_figure, unit_label
from retention.errors import RetentionTableError
from retention.table import format_ranges


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


def plot_retention_table(ds: xr.Dataset, path: str | os.PathLike, *, totals: Sequence[int] | None = None,
                         svg: bool = False) -> list[Path]:
    """Draw :func:`retention_figure` for the table ``ds`` and write it to ``path``."""
    return save_figure(retention_figure(ds, totals=totals), path, svg=svg)


def plot_fit(ds_table: xr.Dataset, path: str | os.PathLike, *, svg: bool = False) -> list[Path]:
    """Draw :func:`fit_figure` for the table ``ds_table`` and write it to ``path``."""
    return save_figure(fit_figure(ds_table), path, svg=svg)
