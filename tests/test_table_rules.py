"""Every rule of ``retention.table.validate_table``, each broken alone in a hand-made file.

A case corrupts a valid table (T = 4, 8; S = 8 segments) in exactly one way that the other rules
let pass, writes it with plain xarray (no validation), and expects ``read_table`` to refuse it
with that rule's one-line message; ``write_table`` must refuse the same Dataset and write nothing.
"""

import numpy as np
import pytest
import xarray as xr

from retention import RetentionTableError, read_table, write_table
from test_table import make_table

RF, STREAMING = "retention_factor", "retention_factor_streaming"
GOOD_RULE = "coordinate 'total_segments' must be increasing integers in 1..S"


def _set(ds, name, T, t, value):
    ds[name].loc[{"total_segments": T, "segment": t}] = value


def _negative_but_summing_to_one(ds):
    """RF(2, 4) < 0 with RF(1, 4) raised so that the row still sums to 1: only the range rule sees it."""
    rf = ds[RF].sel(total_segments=4).values
    _set(ds, RF, 4, 1, rf[0] + rf[1] + 0.05)
    _set(ds, RF, 4, 2, -0.05)


def _coords(ds, **values):
    return ds.assign_coords({k: (k, np.asarray(v), ds[k].attrs) for k, v in values.items()})


#: (rule, corruption of a deep copy of the T = 4, 8 table -> Dataset, the message after "...table: ")
CASES = [
    ("factor variable present", lambda ds: ds.drop_vars([RF]), f"it has no variable '{RF}'"),
    ("factor dims", lambda ds: ds.assign({RF: ds[RF].transpose("segment", "total_segments")}),
     f"'{RF}' has dims ('segment', 'total_segments'), expected ('total_segments', 'segment')"),
    # a table written elsewhere with its own dimension names: named as such, before any coordinate
    ("factor dims named otherwise", lambda ds: ds.rename({"total_segments": "T", "segment": "t"}),
     f"'{RF}' has dims ('T', 't'), expected ('total_segments', 'segment')"),
    ("segment coordinate present", lambda ds: ds.drop_vars(["segment"]),
     "coordinate 'segment' is missing or not integer"),
    ("segment coordinate integer", lambda ds: _coords(ds, segment=np.arange(1.0, 9.0)),
     "coordinate 'segment' is missing or not integer"),
    ("total_segments coordinate integer", lambda ds: _coords(ds, total_segments=[4.0, 8.0]),
     "coordinate 'total_segments' is missing or not integer"),
    ("segment is 1..S", lambda ds: _coords(ds, segment=np.arange(0, 8)), "coordinate 'segment' is not 1..S"),
    ("total_segments not empty", lambda ds: ds.isel(total_segments=slice(0, 0)), GOOD_RULE),
    ("total_segments increasing", lambda ds: ds.isel(total_segments=[1, 0]), GOOD_RULE),
    ("total_segments without repeats", lambda ds: ds.isel(total_segments=[0, 0]), GOOD_RULE),
    ("total_segments >= 1", lambda ds: _coords(ds, total_segments=[0, 8]), GOOD_RULE),
    ("total_segments <= S", lambda ds: ds.isel(segment=slice(0, 6)), GOOD_RULE),
    ("streaming dims", lambda ds: ds.assign({STREAMING: ds[STREAMING].transpose("segment", "total_segments")}),
     f"'{STREAMING}' has dims ('segment', 'total_segments'), expected ('total_segments', 'segment')"),
    ("finite for t <= T", lambda ds: _set(ds, RF, 4, 2, np.nan), f"'{RF}' has NaN/inf within t <= T for T = 4"),
    ("NaN for t > T", lambda ds: _set(ds, RF, 4, 5, 0.01),
     f"'{RF}' must be NaN for t > T, but row T = 4 has values there"),
    ("factors > 0", _negative_but_summing_to_one, f"'{RF}' has values outside (0, 1] for T = 4"),
    ("factors not 0", lambda ds: _set(ds, STREAMING, 4, 4, 0.0), f"'{STREAMING}' has values outside (0, 1] for T = 4"),
    ("factors <= 1", lambda ds: _set(ds, STREAMING, 4, 2, 1.5), f"'{STREAMING}' has values outside (0, 1] for T = 4"),
    ("paper rows sum to 1", lambda ds: _set(ds, RF, 4, 1, ds[RF].sel(total_segments=4, segment=1) + 0.1),
     f"row T = 4 of '{RF}' sums to 1.1, not 1"),
    ("streaming rows start at 1", lambda ds: _set(ds, STREAMING, 4, 1, 0.5),
     f"row T = 4 of '{STREAMING}' starts at 0.5, not 1"),
]


def _corrupted(corrupt) -> xr.Dataset:
    ds = make_table([4, 8]).copy(deep=True)
    out = corrupt(ds)
    return ds if out is None else out


@pytest.mark.parametrize("corrupt, what", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_validation_rule_refuses_a_hand_made_bad_file(tmp_path, corrupt, what):
    path = tmp_path / "bad.nc"
    _corrupted(corrupt).to_netcdf(path, engine="netcdf4")  # plain xarray: no validation on the way out
    with pytest.raises(RetentionTableError) as error:
        read_table(path)
    expected = (f"{path} is not a valid retention table: {what}; "
                f"regenerate it with `pipeline simulate --segments T --out {path} --force`")
    assert str(error.value) == expected  # the rule's own message, on one line
    with pytest.raises(RetentionTableError) as error:
        write_table(_corrupted(corrupt), tmp_path / "w.nc")
    assert str(error.value) == f"the table to write is not a valid retention table: {what}"
    assert not (tmp_path / "w.nc").exists()


def test_the_uncorrupted_table_passes(tmp_path):
    """The base of every case is valid: each failure above comes from its one corruption."""
    read_table(write_table(make_table([4, 8]), tmp_path / "good.nc"))
