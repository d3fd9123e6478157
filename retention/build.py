"""Building retention tables: rows from one simulation run and its fit, merged into a table.

:func:`build_table` turns a simulation (Contract 1) and its macro-model selection into table rows
for the requested T, with the run's full provenance (the ``runs`` attribute, keyed by each row's
``run_id``; the layout is :mod:`retention.table`'s). :func:`merge_tables` puts new rows into an
existing table, keeping the other T; :func:`update_table` does that to a file, read, merge and
write under the table's lock, so that two simulations into one table both keep their rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from retention.errors import RetentionTableError
from retention.factors import factor_matrix
from retention.macro_model import ModelSelection
from retention.table import (
    DIMS, STREAMING_VARIABLE, TABLE_LOCK_TIMEOUT_S, TABLE_VARIABLE, format_ranges, read_table, table_lock,
    validate_table, write_table,
)

PACKAGE_NAME = "rmaat-pipeline"


def package_version() -> str:
    try:
        return version(PACKAGE_NAME)
    except PackageNotFoundError:
        return "unknown"


def _jsonable(value):
    """Floats that JSON cannot hold (nan, inf) become null; numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _dumps(value) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)


def _parse_json_attr(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _netcdf_attr(value):
    """netCDF attributes hold numbers and strings only."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    return "unknown" if value is None else str(value)


def _row_dataset(run_id: str, selection: ModelSelection, rows: list[int], fr: np.ndarray,
                 streaming: np.ndarray, segments: np.ndarray) -> xr.Dataset:
    best = selection.best
    n = len(rows)
    return xr.Dataset(
        {
            TABLE_VARIABLE: (DIMS, fr, {
                "units": "1",
                "long_name": "retention factor RF(t, T) = dp_t / sum_{i<=T} dp_i (paper, Appendix D)",
                "description": "weight of segment t's memory update for a sequence of T segments; "
                               "sums to 1 over t = 1..T; NaN for t > T",
            }),
            STREAMING_VARIABLE: (DIMS, streaming, {
                "units": "1",
                "long_name": "EXTENSION (not in the paper): T-free streaming retention factor r_t = dp_t / dp_1",
                "description": "share of a fresh episode's gain segment t can still write; r_1 = 1; "
                               "independent of T (repeated per row for a uniform layout); NaN for t > T",
            }),
            "run_id": ("total_segments", np.array([run_id] * n, dtype=object), {
                "long_name": "simulation run that produced this row (key into the global attribute `runs`)",
            }),
            "fit_family": ("total_segments", np.array([best.family] * n, dtype=object), {
                "long_name": "macro-model family selected by BIC for this row's run",
            }),
            "fit_rate_k": ("total_segments", np.full(n, best.rate_k), {
                "units": "1/segment",
                "long_name": "half-saturation rate ln(2)/t_half of the macro model (= k for the exponential)",
            }),
            "fit_r2": ("total_segments", np.full(n, best.r2), {
                "units": "1",
                "long_name": "coefficient of determination R^2 of the macro-model fit",
            }),
        },
        coords={
            "total_segments": ("total_segments", np.asarray(rows, dtype=np.int64), {
                "units": "1", "long_name": "total number of segments T of the input sequence",
            }),
            "segment": ("segment", segments, {
                "units": "1", "long_name": "segment index t (1-based)",
            }),
        },
    )


def build_table(
    sim: xr.Dataset,
    selection: ModelSelection,
    total_segments: Sequence[int],
    created: datetime | None = None,
) -> xr.Dataset:
    """Table for ``total_segments`` from a simulation Dataset (Contract 1) and its macro-model fit.

    The factors come from ``selection.best`` (the smooth fit); ``ltp_simulated`` is the
    simulation's ``ltp_end``.  Every T must be <= the number of simulated segments.
    """
    if "ltp_end" not in sim.data_vars or sim["ltp_end"].dims != ("segment",):
        raise RetentionTableError("the simulation Dataset lacks ltp_end(segment); it is not a neuro_sim.simulate() result")
    y = np.asarray(sim["ltp_end"].values, dtype=float)  # (n_sim,)
    n_sim = y.size
    rows = sorted(set(int(T) for T in total_segments))
    if not rows or rows[0] < 1:
        raise RetentionTableError(f"total_segments must be integers >= 1, got {list(total_segments)}")
    if rows[-1] > n_sim:
        raise RetentionTableError(
            f"T = {rows[-1]} exceeds the {n_sim} simulated segments; simulate at least {rows[-1]} segments"
        )
    best = selection.best
    width = max(n_sim, rows[-1])
    segments = np.arange(1, width + 1, dtype=np.int64)
    dp = best.increments(width)  # (S,)
    fr = factor_matrix(dp, rows, width, "paper")  # (n_T, S)
    streaming = factor_matrix(dp, rows, width, "streaming")  # (n_T, S)

    created = created or datetime.now(timezone.utc)
    stamp = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    attrs = dict(sim.attrs)
    model = str(attrs.get("model", "unknown"))
    digest = hashlib.sha256((stamp + _dumps(attrs) + y.tobytes().hex()).encode()).hexdigest()[:8]
    run_id = f"{created.strftime('%Y%m%dT%H%M%S')}-{model}-{digest}"
    simulator = {
        "model": model,
        "model_params": _parse_json_attr(attrs.get("model_params", "unknown")),
        "protocol": _parse_json_attr(attrs.get("protocol", "unknown")),
        "codegen": attrs.get("codegen", "unknown"),
        "dt_s": attrs.get("dt_s", "unknown"),
        "brian2_version": attrs.get("brian2_version", "unknown"),
        "package_version": attrs.get("package_version", "unknown"),
        "created": attrs.get("created", "unknown"),
    }
    run = {
        "created": stamp,
        "package_version": package_version(),
        "simulator": simulator,
        "macro_model": selection.as_dict(),
        "simulated_segments": n_sim,
        "ltp_simulated": y.tolist(),
        "total_segments": rows,
    }

    ds = _row_dataset(run_id, selection, rows, fr, streaming, segments)
    ltp_units = sim["ltp_end"].attrs.get("units", "1")
    ltp_name = sim["ltp_end"].attrs.get("long_name", "LTP variable at the end of each segment")
    padded = np.full(width, np.nan)
    padded[:n_sim] = y
    ds["ltp_simulated"] = ("segment", padded, {
        "units": ltp_units,
        "long_name": f"simulated {ltp_name} (latest run)",
        "run_id": run_id,
    })
    ds["ltp_fitted"] = ("segment", best.predict(segments.astype(float)), {
        "units": ltp_units,
        "long_name": f"macro model f(t) = {best.formula} fitted to ltp_simulated (latest run)",
        "run_id": run_id,
    })
    ds.attrs = {
        "title": "RMAAT retention-factor table",
        "Conventions": "CF-1.10",
        "source": f"pipeline simulate ({PACKAGE_NAME} {package_version()}), neuro_sim model {model}",
        "references": "Mia, Bal, Sengupta, RMAAT, ICLR 2026 (arXiv 2601.00426), Appendix D",
        "comment": "rows may come from different runs: per-row variable run_id keys the JSON attribute runs; "
                   "flat macro_model_*/simulator_* attributes describe the latest run",
        "history": f"{stamp} pipeline simulate: T = {format_ranges(rows)} from run {run_id}",
        "created": stamp,
        "package_version": package_version(),
        "latest_run_id": run_id,
        "macro_model_family": best.family,
        "macro_model_formula": best.formula,
        "macro_model_params": _dumps(best.params),
        "macro_model_param_stderr": _dumps(best.stderr),
        "macro_model_r2": best.r2,
        "macro_model_rss": best.rss,
        "macro_model_bic": best.bic,
        "macro_model_rate_k_half": best.rate_k,
        "macro_model_selection": selection.criterion,
        "macro_model_candidates": _dumps({k: v.as_dict() for k, v in selection.fits.items()}),
        "macro_model_skipped": _dumps(selection.skipped),
        "simulator_model": model,
        "simulator_params": _dumps(simulator["model_params"]),
        "simulator_protocol": _dumps(simulator["protocol"]),
        "simulator_codegen": _netcdf_attr(simulator["codegen"]),
        "simulator_dt_s": _netcdf_attr(simulator["dt_s"]),
        "simulator_package_version": _netcdf_attr(simulator["package_version"]),
        "brian2_version": _netcdf_attr(simulator["brian2_version"]),
        "runs": _dumps({run_id: run}),
    }
    validate_table(ds, "the new table")
    return ds


def _pad_segments(ds: xr.Dataset, width: int) -> xr.Dataset:
    if ds.sizes["segment"] == width:
        return ds
    segments = np.arange(1, width + 1, dtype=np.int64)
    out = ds.reindex(segment=segments)
    out["segment"].attrs = ds["segment"].attrs
    return out


def merge_tables(existing: xr.Dataset, new: xr.Dataset) -> xr.Dataset:
    """Rows of ``new`` replace those of ``existing`` with the same T; all other rows are kept.

    ``ltp_simulated``/``ltp_fitted`` and the flat attributes come from ``new`` (the latest run);
    the ``runs`` attribute keeps every run a row still refers to.
    """
    width = max(existing.sizes["segment"], new.sizes["segment"])
    new_rows = set(int(T) for T in new["total_segments"].values)
    kept = [int(T) for T in existing["total_segments"].values if int(T) not in new_rows]
    row_vars = [v for v in new.data_vars if new[v].dims[:1] == ("total_segments",)]
    new_part = _pad_segments(new[row_vars], width)
    if kept:
        old_part = _pad_segments(existing.sel(total_segments=kept), width)
        # a table written elsewhere may lack some per-row variables: fill them as unknown
        for name in row_vars:
            if name not in old_part.data_vars:
                fill = "unknown" if new[name].dtype == object else np.nan
                shape = tuple(old_part.sizes[d] for d in new[name].dims)
                data = np.full(shape, fill, dtype=object if fill == "unknown" else float)
                old_part[name] = (new[name].dims, data, new[name].attrs)
        merged = xr.concat([old_part[row_vars], new_part], dim="total_segments").sortby("total_segments")
    else:
        merged = new_part
    for name in row_vars:
        merged[name].attrs = new[name].attrs
    merged["total_segments"].attrs = new["total_segments"].attrs
    merged["segment"].attrs = new["segment"].attrs
    latest = _pad_segments(new[["ltp_simulated", "ltp_fitted"]], width)
    for name in ("ltp_simulated", "ltp_fitted"):
        merged[name] = latest[name]
        merged[name].attrs = new[name].attrs

    attrs = dict(new.attrs)
    runs = _parse_json_attr(existing.attrs.get("runs", "{}"))
    runs = runs if isinstance(runs, dict) else {}
    runs.update(json.loads(new.attrs["runs"]))
    referenced = set(str(r) for r in merged["run_id"].values)
    attrs["runs"] = _dumps({k: v for k, v in runs.items() if k in referenced})
    old_history = existing.attrs.get("history")
    if isinstance(old_history, str) and old_history:
        attrs["history"] = old_history + "\n" + new.attrs["history"]
    merged.attrs = attrs
    validate_table(merged, "the merged table")
    return merged


def update_table(new: xr.Dataset, path: str | os.PathLike, *, replace: bool = False, fix_hint: str | None = None,
                 lock_timeout: float | None = TABLE_LOCK_TIMEOUT_S) -> xr.Dataset:
    """Merge ``new`` into the table at ``path`` (:func:`merge_tables`; a new file if there is
    none) and write it; with ``replace``, write ``new`` alone. Returns the table written.

    Read, merge and write happen under :func:`table_lock`: the table is read *now*, not when the
    caller started, so rows another process added meanwhile are kept, and a concurrent update
    waits rather than writing over this one. ``fix_hint`` as in :func:`read_table`."""
    with table_lock(path, lock_timeout):
        table = new
        if not replace and Path(path).exists():
            table = merge_tables(read_table(path, fix_hint=fix_hint), new)
        write_table(table, path)
    return table
