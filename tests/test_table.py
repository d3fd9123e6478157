"""Retention tables: build, atomic write, validated read, merge, lookup (Contract 2)."""

import functools
import json
from datetime import datetime, timezone

import netCDF4
import numpy as np
import pytest
import xarray as xr

import retention.table as table_mod
from retention import (
    RetentionTableError,
    build_table,
    fit_macro_model,
    load_retention_factors,
    merge_tables,
    read_table,
    write_table,
)


def fake_simulation(total_segments=(16,), A=0.607, k=0.209, noise=0.002, seed=0) -> xr.Dataset:
    """A Contract-1 Dataset whose ltp_end is a noisy exponential saturation."""
    n = max(total_segments)
    seg = np.arange(1, n + 1)
    y = A * (1 - np.exp(-k * seg)) + np.random.default_rng(seed).normal(0, noise, n)
    totals = np.array(sorted(set(total_segments)))
    ltp = np.where(seg[None, :] <= totals[:, None], y[None, :], np.nan)
    time = np.linspace(0.0, 10.0 * n, 4 * n)
    return xr.Dataset(
        {
            "ltp_end": ("segment", y, {"units": "1", "long_name": "Gamma_S at the end of each segment"}),
            "ltp": (("total_segments", "segment"), ltp, {"units": "1", "long_name": "Gamma_S, NaN beyond T"}),
            "gamma_s": ("time", np.interp(time / 10.0, seg, y), {"units": "1", "long_name": "Gamma_S"}),
        },
        coords={"segment": seg, "total_segments": totals, "time": ("time", time, {"units": "s"})},
        attrs={
            "model": "tripartite",
            "model_params": json.dumps({"O_G": 0.1, "Omega_G": 1 / 120}),
            "protocol": json.dumps({"n_segments": n, "segment_period_s": 10.0}),
            "codegen": "numpy",
            "dt_s": 1e-3,
            "brian2_version": "2.9.0",
            "package_version": "0.1.0",
            "created": "2026-01-01T00:00:00Z",
        },
    )


@functools.lru_cache(maxsize=None)
def _simulated_and_fitted(n_sim, seed, k):
    sim = fake_simulation((n_sim,), k=k, seed=seed)
    return sim, fit_macro_model(sim["ltp_end"].values)  # the fit is the slow part: share it


def make_table(rows, n_sim=None, seed=0, k=0.209, created=None):
    sim, selection = _simulated_and_fitted(n_sim or max(rows), seed, k)
    return build_table(sim, selection, rows, created=created)


def test_build_table_layout_and_provenance():
    ds = make_table([2, 4, 16], n_sim=20)
    assert ds["retention_factor"].dims == ("total_segments", "segment")
    assert ds["total_segments"].values.tolist() == [2, 4, 16]
    assert ds.sizes["segment"] == 20  # every simulated point is kept in ltp_simulated
    rf = ds["retention_factor"].sel(total_segments=4).values
    assert np.all(np.isnan(rf[4:])) and rf[:4].sum() == pytest.approx(1.0)
    assert ds["retention_factor_streaming"].sel(total_segments=16).values[0] == 1.0
    for name in list(ds.data_vars) + list(ds.coords):
        assert "long_name" in ds[name].attrs, name
    for name in ("retention_factor", "retention_factor_streaming", "ltp_simulated", "ltp_fitted", "fit_r2"):
        assert ds[name].attrs["units"] == "1"
    assert "EXTENSION" in ds["retention_factor_streaming"].attrs["long_name"]
    a = ds.attrs
    assert a["macro_model_family"] == "exponential"
    assert json.loads(a["macro_model_params"])["k"] == pytest.approx(0.209, abs=0.01)
    assert set(json.loads(a["macro_model_param_stderr"])) == {"A", "k"}
    assert a["macro_model_r2"] > 0.99 and np.isfinite(a["macro_model_bic"])
    assert a["simulator_model"] == "tripartite" and a["brian2_version"] == "2.9.0"
    assert a["simulator_codegen"] == "numpy" and a["simulator_dt_s"] == 1e-3
    assert json.loads(a["simulator_params"])["O_G"] == 0.1
    run = json.loads(a["runs"])[a["latest_run_id"]]
    assert run["simulator"]["protocol"]["n_segments"] == 20
    assert set(run["macro_model"]["candidates"]) == {"exponential", "stretched_exponential", "hill", "logistic"}
    assert len(run["ltp_simulated"]) == 20
    assert set(ds["run_id"].values) == {a["latest_run_id"]}


def test_round_trip_is_identical_and_plain_netcdf4_opens_it(tmp_path):
    ds = make_table([1, 3, 16])
    path = write_table(ds, tmp_path / "sub" / "t.nc")  # creates the directory
    back = read_table(path)
    assert back.identical(ds)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["t.nc"]  # no temp file left
    with netCDF4.Dataset(path) as nc:
        var = nc.variables["retention_factor"]
        assert var.dimensions == ("total_segments", "segment") and var.units == "1"
        assert np.ma.getmaskarray(var[0, :])[1:].all()  # NaN/fill beyond T = 1


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_table(make_table([4]), tmp_path / "t.nc")
    before = path.read_bytes()

    def broken(self, target, **kwargs):
        open(target, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        write_table(make_table([8]), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.nc"]


def test_merge_keeps_other_rows_and_their_provenance(tmp_path):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old = make_table([1, 2, 4, 8], n_sim=16, created=t0)
    new = make_table([4, 32], n_sim=32, seed=1, k=0.3, created=datetime(2026, 1, 2, tzinfo=timezone.utc))
    merged = merge_tables(old, new)
    assert merged["total_segments"].values.tolist() == [1, 2, 4, 8, 32]
    assert merged.sizes["segment"] == 32
    for T, source in ((1, old), (2, old), (8, old), (4, new), (32, new)):
        got = merged["retention_factor"].sel(total_segments=T).values[:T]
        np.testing.assert_array_equal(got, source["retention_factor"].sel(total_segments=T).values[:T])
        assert merged["run_id"].sel(total_segments=T).item() == source.attrs["latest_run_id"]
        assert merged["fit_rate_k"].sel(total_segments=T).item() == source["fit_rate_k"].values[0]
    runs = json.loads(merged.attrs["runs"])
    assert set(runs) == {old.attrs["latest_run_id"], new.attrs["latest_run_id"]}
    assert merged.attrs["latest_run_id"] == new.attrs["latest_run_id"]
    assert merged.attrs["history"].count("pipeline simulate") == 2
    path = write_table(merged, tmp_path / "m.nc")
    assert read_table(path).identical(merged)
    # replacing every row of a run drops that run from the provenance
    again = merge_tables(merged, make_table([1, 2, 8], n_sim=16, seed=2))
    assert old.attrs["latest_run_id"] not in json.loads(again.attrs["runs"])


def test_merge_pads_a_shorter_latest_run():
    merged = merge_tables(make_table([32]), make_table([4], n_sim=16, seed=3))
    assert merged.sizes["segment"] == 32
    assert np.isnan(merged["ltp_simulated"].values[16:]).all()
    assert merged["retention_factor"].sel(total_segments=32).notnull().sum() == 32


# ----------------------------------------------------------------------------- bad files


def test_read_missing_file_names_the_command(tmp_path):
    with pytest.raises(RetentionTableError, match="no retention table at .*pipeline simulate --segments T --out"):
        read_table(tmp_path / "absent.nc")


def test_read_corrupt_file(tmp_path):
    path = tmp_path / "t.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(RetentionTableError, match="not a readable netCDF file"):
        read_table(path)


def _corrupt(ds: xr.Dataset, how: str) -> xr.Dataset:
    ds = ds.copy(deep=True)
    rf = ds["retention_factor"]
    if how == "no variable":
        return ds.drop_vars(["retention_factor"])
    if how == "dims":
        return ds.assign(retention_factor=rf.transpose("segment", "total_segments"))
    if how == "sum":
        rf.loc[{"total_segments": 4, "segment": 1}] = rf.sel(total_segments=4, segment=1) + 0.1
    if how == "beyond T":
        rf.loc[{"total_segments": 4, "segment": 5}] = 0.01
    if how == "nan inside":
        rf.loc[{"total_segments": 4, "segment": 2}] = np.nan
    if how == "streaming":
        ds["retention_factor_streaming"].loc[{"total_segments": 4, "segment": 1}] = 0.5
    return ds


@pytest.mark.parametrize(
    "how, message",
    [
        ("no variable", "no variable 'retention_factor'"),
        ("dims", r"has dims \('segment', 'total_segments'\)"),
        ("sum", "row T = 4 of 'retention_factor' sums to"),
        ("beyond T", "must be NaN for t > T, but row T = 4"),
        ("nan inside", "NaN/inf within t <= T for T = 4"),
        ("streaming", "row T = 4 of 'retention_factor_streaming' starts at 0.5"),
    ],
)
def test_read_invalid_table_names_the_problem(tmp_path, how, message):
    path = tmp_path / "t.nc"
    _corrupt(make_table([4, 8]), how).to_netcdf(path, engine="netcdf4")
    with pytest.raises(RetentionTableError, match=message):
        read_table(path)
    # and write_table refuses to produce such a file at all
    with pytest.raises(RetentionTableError, match=message):
        write_table(_corrupt(make_table([4, 8]), how), tmp_path / "w.nc")
    assert not (tmp_path / "w.nc").exists()


# ----------------------------------------------------------------------------- lookup


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """A user table with T = 4, 16 and a 'packaged' table with T = 1..8."""
    user = write_table(make_table([4, 16], seed=5), tmp_path / "user.nc")
    packaged = write_table(make_table(list(range(1, 9)), n_sim=16, seed=6), tmp_path / "packaged.nc")
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(user))
    monkeypatch.setattr(table_mod, "packaged_table_path", lambda: packaged)
    return user, packaged


def _row(path, T, name="retention_factor"):
    return read_table(path)[name].sel(total_segments=T).values[:T]


def test_lookup_order(tables, tmp_path, monkeypatch):
    user, packaged = tables
    rf = load_retention_factors(4)
    assert rf.shape == (4,) and rf.dtype == np.float64
    np.testing.assert_array_equal(rf, _row(user, 4))  # user table first
    np.testing.assert_array_equal(load_retention_factors(3), _row(packaged, 3))  # falls through per T
    np.testing.assert_array_equal(load_retention_factors(4, path=packaged), _row(packaged, 4))
    np.testing.assert_array_equal(
        load_retention_factors(16, variant="streaming"), _row(user, 16, "retention_factor_streaming")
    )
    monkeypatch.delenv("RMAAT_RETENTION_TABLE")  # no user table at the default location
    monkeypatch.setattr(table_mod, "DEFAULT_USER_TABLE", str(tmp_path / "none.nc"))
    np.testing.assert_array_equal(load_retention_factors(4), _row(packaged, 4))


def test_a_missing_table_named_by_the_environment_is_an_error(tables, tmp_path, monkeypatch):
    """As a missing --set model.retention_table is: a typo must not train with other factors."""
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(tmp_path / "typo.nc"))
    with pytest.raises(RetentionTableError, match=r"\$RMAAT_RETENTION_TABLE names .*typo.nc, which does not exist"):
        load_retention_factors(4)


def test_missing_T_names_the_command(tables):
    user, packaged = tables
    with pytest.raises(RetentionTableError, match=r"total_segments = 12 .*`pipeline simulate --segments 12`"):
        load_retention_factors(12)
    with pytest.raises(RetentionTableError, match=r"has T = 1-8\).*`pipeline simulate --segments 16 --out "):
        load_retention_factors(16, path=packaged)


def test_corrupt_user_table_is_an_error_not_skipped(tables):
    user, _ = tables
    user.write_text("not a table")
    with pytest.raises(RetentionTableError, match="not a readable netCDF file"):
        load_retention_factors(4)


@pytest.mark.parametrize("T, variant, message", [(0, "paper", ">= 1"), (2.5, "paper", "integer"),
                                                 (4, "online", "unknown retention-factor variant")])
def test_lookup_bad_arguments(tables, T, variant, message):
    with pytest.raises(RetentionTableError, match=message):
        load_retention_factors(T, variant=variant)


def test_packaged_default_table(tmp_path, monkeypatch):
    """The table shipped in the package: T = 1..64 from the tripartite model, valid factors."""
    monkeypatch.delenv("RMAAT_RETENTION_TABLE", raising=False)  # no user table
    monkeypatch.setattr(table_mod, "DEFAULT_USER_TABLE", str(tmp_path / "absent.nc"))
    ds = read_table(table_mod.packaged_table_path())
    assert ds["total_segments"].values.tolist() == list(range(1, 65))
    assert ds.attrs["simulator_model"] == "tripartite"
    rf = load_retention_factors(16)  # falls through to the packaged table
    np.testing.assert_array_equal(rf, ds["retention_factor"].sel(total_segments=16).values[:16])
    assert rf.sum() == pytest.approx(1.0) and np.all(np.diff(rf) < 0)
    # SPEC section 2: the tripartite curve saturates with k ~ 0.21 per segment
    assert ds.attrs["macro_model_rate_k_half"] == pytest.approx(0.209, abs=0.01)
    assert ds.attrs["macro_model_r2"] > 0.9999
