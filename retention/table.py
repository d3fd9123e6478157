"""Retention-factor tables: one netCDF file holding RF(t, T) for many segment counts T.

Layout (docs/architecture.md, Contract 2), dimensions ``total_segments`` (the T values
present, increasing) and ``segment`` (t = 1..S, S >= max T):

=====================================  ==============================  ======================
variable                               dims                            meaning
=====================================  ==============================  ======================
``retention_factor``                   (total_segments, segment)       paper's RF(t, T), NaN for t > T
``retention_factor_streaming``         (total_segments, segment)       EXTENSION r_t = dp_t/dp_1
``ltp_simulated``                      (segment,)                      latest run's simulated curve
``ltp_fitted``                         (segment,)                      latest run's macro model f(t)
``run_id``                             (total_segments,)               run that produced the row
``fit_family``                         (total_segments,)               that run's macro-model family
``fit_rate_k``                         (total_segments,)               its half-saturation rate k_1/2
``fit_r2``                             (total_segments,)               its R^2
=====================================  ==============================  ======================

**Per-row provenance.**  ``pipeline simulate`` merges new rows into an existing table and
keeps the other segment counts, so one file can hold rows from several simulation runs.
Each row therefore names its run in ``run_id``; the global attribute ``runs`` is a JSON
object mapping every referenced run_id to that run's full provenance (simulator model,
parameters, protocol, code generation, dt, brian2 and package versions, the simulated
curve, every candidate fit with parameters, standard errors, R^2, RSS, BIC, and creation
time), enough to regenerate the row.  Runs no longer referenced by a row are dropped on
merge.  The flat global attributes (``macro_model_*``, ``simulator_*``, versions,
``created``) describe the latest run, as do ``ltp_simulated`` and ``ltp_fitted`` (their
``run_id`` attribute says which; a shorter latest run is NaN-padded to S).  Non-finite
numbers in the JSON (an undetermined standard error) are written as null.

Writes are atomic (temporary file in the target directory, then ``os.replace``), and
both writing and reading validate the table; ``read_table`` raises
``RetentionTableError`` naming the file and what is wrong.  ``update_table`` reads, merges
and writes under the table's lock (``.<name>.lock`` beside it, :mod:`retention.lock`), so
that two simulations into one table both keep their rows: the second waits for the first.

``load_retention_factors(T)`` looks up, in order: an explicit ``path`` (only that file);
otherwise the user table (``$RMAAT_RETENTION_TABLE``, else
``~/.local/share/rmaat/retention_table.nc``) if it exists *and has a row for T*, then the
packaged default (``retention/data/default_table.nc``).  A ``$RMAAT_RETENTION_TABLE`` that
names a missing file is an error, as an explicit missing ``path`` is (a typo must not
silently train with the packaged factors); only the default location may be absent.  Falling through per T lets a
user table that holds only the segment counts a user regenerated override the default
for those counts without hiding the others; an existing but corrupt user table is an
error, never skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import math
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import xarray as xr

from retention.atomic import atomic_write_path, output_path
from retention.errors import RetentionTableError
from retention.factors import VARIANTS, factor_matrix
from retention.lock import FileLock, LockBusyError
from retention.macro_model import ModelSelection

TABLE_VARIABLE = "retention_factor"
STREAMING_VARIABLE = "retention_factor_streaming"
DIMS = ("total_segments", "segment")
#: Per-row provenance variables (dim total_segments).
ROW_VARIABLES = ("run_id", "fit_family", "fit_rate_k", "fit_r2")
USER_TABLE_ENV = "RMAAT_RETENTION_TABLE"
DEFAULT_USER_TABLE = "~/.local/share/rmaat/retention_table.nc"
PACKAGED_TABLE = "data/default_table.nc"  # inside the retention package
#: Tolerance on sum_t RF(t, T) = 1 and r_1 = 1 when validating a table.
ROW_SUM_ATOL = 1e-6
PACKAGE_NAME = "rmaat-pipeline"


# ----------------------------------------------------------------------------- paths


def user_table_path() -> Path:
    """The user's table: ``$RMAAT_RETENTION_TABLE`` if set, else ~/.local/share/rmaat/retention_table.nc."""
    return Path(os.environ.get(USER_TABLE_ENV) or DEFAULT_USER_TABLE).expanduser()


def packaged_table_path() -> Path:
    """The default table shipped inside the package (may be absent in a broken install)."""
    with importlib.resources.as_file(importlib.resources.files("retention") / PACKAGED_TABLE) as p:
        return Path(p)


def package_version() -> str:
    try:
        return version(PACKAGE_NAME)
    except PackageNotFoundError:
        return "unknown"


def format_ranges(values: Iterable[int]) -> str:
    """[1, 2, 3, 5, 8, 9] -> '1-3, 5, 8-9'."""
    values = sorted(set(int(v) for v in values))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(parts)


# ----------------------------------------------------------------------------- building


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


# ----------------------------------------------------------------------------- validation


def _fix_hint(path_text: str) -> str:
    return f"regenerate it with `pipeline simulate --segments T --out {path_text} --force`"


def validate_table(ds: xr.Dataset, source: str = "the table") -> None:
    """Raise ``RetentionTableError`` unless ``ds`` has the Contract-2 layout and valid factors."""
    def fail(what: str) -> None:
        raise RetentionTableError(f"{source} is not a valid retention table: {what}")

    if TABLE_VARIABLE not in ds.data_vars:
        fail(f"it has no variable '{TABLE_VARIABLE}'")
    if ds[TABLE_VARIABLE].dims != DIMS:
        fail(f"'{TABLE_VARIABLE}' has dims {ds[TABLE_VARIABLE].dims}, expected {DIMS}")
    for dim in DIMS:
        if dim not in ds.coords or not np.issubdtype(ds[dim].dtype, np.integer):
            fail(f"coordinate '{dim}' is missing or not integer")
    segments = ds["segment"].values
    totals = ds["total_segments"].values
    if not np.array_equal(segments, np.arange(1, segments.size + 1)):
        fail("coordinate 'segment' is not 1..S")
    if totals.size == 0 or np.any(np.diff(totals) <= 0) or totals[0] < 1 or totals[-1] > segments.size:
        fail("coordinate 'total_segments' must be increasing integers in 1..S")
    for name in (TABLE_VARIABLE, STREAMING_VARIABLE):
        if name not in ds.data_vars:
            continue  # the streaming extension is optional in tables written elsewhere
        if ds[name].dims != DIMS:
            fail(f"'{name}' has dims {ds[name].dims}, expected {DIMS}")
        values = np.asarray(ds[name].values, dtype=float)  # (n_T, S)
        for row, T in zip(values, totals):
            head, tail = row[:T], row[T:]
            if not np.all(np.isfinite(head)):
                fail(f"'{name}' has NaN/inf within t <= T for T = {T}")
            if not np.all(np.isnan(tail)):
                fail(f"'{name}' must be NaN for t > T, but row T = {T} has values there")
            if np.any(head <= 0) or np.any(head > 1 + ROW_SUM_ATOL):
                fail(f"'{name}' has values outside (0, 1] for T = {T}")
            if name == TABLE_VARIABLE and abs(head.sum() - 1.0) > ROW_SUM_ATOL:
                fail(f"row T = {T} of '{name}' sums to {head.sum():.9g}, not 1")
            if name == STREAMING_VARIABLE and abs(head[0] - 1.0) > ROW_SUM_ATOL:
                fail(f"row T = {T} of '{name}' starts at {head[0]:.9g}, not 1")


# ----------------------------------------------------------------------------- I/O


def read_table(path: str | os.PathLike, fix_hint: str | None = None) -> xr.Dataset:
    """Open, load into memory and validate the table at ``path`` (the file is closed again).

    ``fix_hint`` replaces the default advice appended to the error for a corrupt file.
    """
    path = Path(path)
    hint = fix_hint or _fix_hint(str(path))
    if not path.is_file():
        raise RetentionTableError(
            f"no retention table at {path}; create one with `pipeline simulate --segments T --out {path}`"
        )
    try:
        # no time decoding: a units attribute copied from the simulator must stay a string
        with xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False) as opened:
            ds = opened.load()
    except Exception as error:  # any failure to decode a user's file is a bad file, not a bug
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RetentionTableError(
            f"{path} is not a readable netCDF file ({reason}); {hint}"
        ) from None
    try:
        validate_table(ds, str(path))
    except RetentionTableError as error:
        raise RetentionTableError(f"{error}; {hint}") from None
    return ds


def write_table(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate ``ds`` and write it to ``path`` atomically (``retention.atomic``: fsynced temp file
    beside the target, then os.replace; a symlink is written through). Returns the file written."""
    validate_table(ds, "the table to write")
    return atomic_write_path(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4"))


#: How long :func:`update_table` waits for another process's update of the same table. An
#: update holds the lock for one read, merge and write (seconds), so only a hung one lasts this.
TABLE_LOCK_TIMEOUT_S = 120.0


def table_lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the table at ``path``: ``.<name>.lock`` beside the file a write of
    ``path`` replaces (symlinks followed, so that every name of one table shares one lock)."""
    target = output_path(path)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def table_lock(path: str | os.PathLike, timeout: float | None = TABLE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """``with table_lock(path):`` hold the update lock of the table at ``path``, waiting up to
    ``timeout`` seconds (None: for good) while another process holds it; RetentionTableError
    naming that process if it does not finish in time."""
    lock = FileLock(table_lock_path(path))
    try:
        lock.acquire(timeout=timeout)
    except LockBusyError as busy:
        who = busy.owner.describe() if busy.owner else "another process"
        raise RetentionTableError(f"{path} is being updated by {who}, still after {timeout:g} s of waiting; "
                                  f"try again once it has finished") from None
    try:
        yield
    finally:
        lock.release()


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


# ----------------------------------------------------------------------------- lookup


def _check_T(total_segments: object) -> int:
    if isinstance(total_segments, bool) or not isinstance(total_segments, (int, np.integer)) or total_segments < 1:
        raise RetentionTableError(f"total_segments must be an integer >= 1, got {total_segments!r}")
    return int(total_segments)


def load_retention_factors(
    total_segments: int, path: str | os.PathLike | None = None, variant: str = "paper"
) -> np.ndarray:
    """Retention factors for T = ``total_segments`` as a (T,) float64 array.

    ``variant="paper"`` gives RF(t, T) (sums to 1); ``"streaming"`` the T-free extension
    r_t = dp_t / dp_1.  Lookup order as in the module docstring.
    """
    T = _check_T(total_segments)
    if variant not in VARIANTS:
        raise RetentionTableError(f"unknown retention-factor variant {variant!r}; choose from {', '.join(VARIANTS)}")
    name = TABLE_VARIABLE if variant == "paper" else STREAMING_VARIABLE
    if path is not None:
        candidates = [Path(path)]
    else:
        user = user_table_path()
        if os.environ.get(USER_TABLE_ENV) and not user.exists():  # named on purpose: never skipped
            raise RetentionTableError(
                f"${USER_TABLE_ENV} names {user}, which does not exist; create it with `pipeline simulate "
                f"--segments {T}` or unset {USER_TABLE_ENV} to use the packaged table")
        candidates = ([user] if user.exists() else []) + [packaged_table_path()]
    looked: list[str] = []
    for candidate in candidates:
        if path is None and not candidate.exists():
            looked.append(f"{candidate} (missing)")
            continue
        ds = read_table(candidate)
        available = [int(v) for v in ds["total_segments"].values]
        if T in available and name in ds.data_vars:
            row = ds[name].sel(total_segments=T).values[:T]
            return np.array(row, dtype=np.float64)
        looked.append(f"{candidate} (has T = {format_ranges(available) or 'none'}"
                      + ("" if name in ds.data_vars else f", no '{name}'") + ")")
    out = f" --out {path}" if path is not None else ""
    raise RetentionTableError(
        f"no {variant} retention factors for total_segments = {T} in {'; '.join(looked)}; "
        f"create them with `pipeline simulate --segments {T}{out}`"
    )
