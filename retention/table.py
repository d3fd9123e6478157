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
time), enough to regenerate the row (:mod:`retention.build` writes the rows and merges
tables).  Runs no longer referenced by a row are dropped on merge.  The flat global attributes (``macro_model_*``, ``simulator_*``, versions,
``created``) describe the latest run, as do ``ltp_simulated`` and ``ltp_fitted`` (their
``run_id`` attribute says which; a shorter latest run is NaN-padded to S).  Non-finite
numbers in the JSON (an undetermined standard error) are written as null.

Writes are atomic (temporary file in the target directory, then ``os.replace``), and
both writing and reading validate the table; ``read_table`` raises
``RetentionTableError`` naming the file and what is wrong.  ``retention.build.update_table``
reads, merges and writes under the table's lock (:func:`table_lock`: ``.<name>.lock`` beside
it, :mod:`retention.lock`), so that two simulations into one table both keep their rows: the
second waits for the first.

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
import importlib.resources
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Iterable

import numpy as np
import xarray as xr

from retention.atomic import atomic_write_path, output_path
from retention.errors import RetentionTableError
from retention.factors import VARIANTS
from retention.lock import FileLock, LockBusyError

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


# ----------------------------------------------------------------------------- paths


def user_table_path() -> Path:
    """The user's table: ``$RMAAT_RETENTION_TABLE`` if set, else ~/.local/share/rmaat/retention_table.nc."""
    return Path(os.environ.get(USER_TABLE_ENV) or DEFAULT_USER_TABLE).expanduser()


def packaged_table_path() -> Path:
    """The default table shipped inside the package (may be absent in a broken install)."""
    with importlib.resources.as_file(importlib.resources.files("retention") / PACKAGED_TABLE) as p:
        return Path(p)


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


#: How long :func:`retention.build.update_table` waits for another process's update of the same
#: table. An update holds the lock for one read, merge and write (seconds), so only a hung one
#: lasts this.
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
