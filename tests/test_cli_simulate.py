"""`pipeline simulate` through click's test runner, with the simulator replaced by a fake.

Every bad input must give one `Error:` line, exit status 1 (click's SystemExit, not a crash),
no simulation and no file.
"""

import json

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import neuro_sim
from neuro_sim.protocol import MAX_SEGMENTS
from pipelines.cli import cli
from retention import read_table


class FakeSimulator:
    """Stands in for neuro_sim.simulate (Contract 1): exponential LTP curve + small noise."""

    def __init__(self):
        self.calls = []

    def __call__(self, total_segments=(16,), model="tripartite", *, protocol=None, params=None,
                 codegen="auto", dt_s=None, progress=True, seed=0):
        self.calls.append(dict(total_segments=tuple(total_segments), model=model, codegen=codegen,
                               dt_s=dt_s, progress=progress))
        n = max(total_segments)
        seg = np.arange(1, n + 1)
        y = 0.607 * (1 - np.exp(-0.209 * seg)) + np.random.default_rng(seed).normal(0, 0.002, n)
        totals = np.array(sorted(set(total_segments)))
        return xr.Dataset(
            {
                "ltp_end": ("segment", y, {"units": "1", "long_name": "Gamma_S at segment end"}),
                "ltp": (("total_segments", "segment"),
                        np.where(seg[None] <= totals[:, None], y[None], np.nan), {"units": "1"}),
            },
            coords={"segment": seg, "total_segments": totals},
            attrs={"model": model, "model_params": json.dumps({"O_G": 0.1}),
                   "protocol": json.dumps({"n_segments": int(n)}), "codegen": "numpy",
                   "dt_s": dt_s or 1e-3, "brian2_version": "2.9.0", "package_version": "0.1.0",
                   "created": "2026-01-01T00:00:00Z"},
        )


@pytest.fixture
def fake(monkeypatch, tmp_path):
    simulator = FakeSimulator()
    monkeypatch.setattr(neuro_sim, "simulate", simulator, raising=False)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(tmp_path / "user" / "table.nc"))
    return simulator


def run(*args):
    return CliRunner().invoke(cli, ["simulate", *args])


def test_writes_table_and_summary(fake, tmp_path):
    out = tmp_path / "t.nc"
    result = run("--segments", "4,8", "--segments", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    # one run of max(max T, 16) segments serves every T
    assert fake.calls == [dict(total_segments=(2, 4, 8, 16), model="tripartite", codegen="auto",
                               dt_s=None, progress=True)]
    ds = read_table(out)
    assert ds["total_segments"].values.tolist() == [2, 4, 8]
    for T in (2, 4, 8):
        rf = ds["retention_factor"].sel(total_segments=T).values[:T]
        assert rf.sum() == pytest.approx(1.0) and np.all(np.diff(rf) < 0)
    text = result.output
    assert "macro model: exponential" in text and "k = 0.2" in text and "R² = 0.99" in text
    assert "RF(t, 8): " in text and f"wrote {out} (total_segments: 2, 4, 8)" in text


def test_range_default_output_and_merge(fake, tmp_path):
    user = tmp_path / "user" / "table.nc"
    assert run("--segments", "1-3", "--quiet").exit_code == 0
    assert run("--segments", "20", "--model", "astro_rate", "--dt", "0.002", "-q").exit_code == 0
    assert fake.calls[1]["total_segments"] == (20,) and fake.calls[1]["model"] == "astro_rate"
    assert fake.calls[1]["dt_s"] == 0.002 and fake.calls[1]["progress"] is False
    ds = read_table(user)  # the user table, never the packaged one
    assert ds["total_segments"].values.tolist() == [1, 2, 3, 20]  # merged, nothing lost
    assert ds["run_id"].sel(total_segments=1).item() != ds["run_id"].sel(total_segments=20).item()


def test_quiet_prints_nothing(fake, tmp_path):
    result = run("--out", str(tmp_path / "t.nc"), "--quiet")
    assert result.exit_code == 0 and result.output == ""
    assert read_table(tmp_path / "t.nc")["total_segments"].values.tolist() == [16]


def test_force_replaces_an_invalid_or_valid_table(fake, tmp_path):
    out = tmp_path / "t.nc"
    out.write_text("garbage")
    assert run("--segments", "4", "--out", str(out), "--force", "-q").exit_code == 0
    assert run("--segments", "8", "--out", str(out), "--force", "-q").exit_code == 0
    assert read_table(out)["total_segments"].values.tolist() == [8]  # fresh, not merged


def test_family_option(fake, tmp_path):
    result = run("--segments", "4", "--family", "hill", "--out", str(tmp_path / "t.nc"))
    assert result.exit_code == 0, result.output
    assert read_table(tmp_path / "t.nc").attrs["macro_model_family"] == "hill"


BAD = [
    (["--segments", "0"], "must be >= 1"),
    (["--segments", "-3"], "must be >= 1"),
    (["--segments", "abc"], "not a whole number"),
    (["--segments", "1.5"], "not a whole number"),
    (["--segments", "4,,8"], "empty entry"),
    (["--segments", "8-2"], "range '8-2' is empty"),
    (["--segments", str(MAX_SEGMENTS + 1)], f"exceeds the limit of {MAX_SEGMENTS}"),
    (["--segments", f"1-{MAX_SEGMENTS + 5}"], f"exceeds the limit of {MAX_SEGMENTS}"),
    (["--model", "hodgkin"], "unknown --model 'hodgkin'; choose from tripartite, astro_rate"),
    (["--family", "gompertz"], "unknown --family 'gompertz'"),
    (["--codegen", "gpu"], "unknown codegen 'gpu'"),
    (["--dt", "-0.001"], "--dt must be a positive number"),
    (["--dt", "0"], "--dt must be a positive number"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_nothing_written(fake, tmp_path, args, message):
    result = run(*args, "--out", str(tmp_path / "t.nc"))
    _assert_refused(result, message, fake, tmp_path, [])


def _assert_refused(result, message, fake, tmp_path, files_before):
    """A user error: click's SystemExit with the documented status 1 (a crash would leave its own
    exception in result.exception, with the traceback captured, not printed), one `Error:` line,
    no simulation and no file."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert fake.calls == []  # validated before simulating
    assert sorted(p.name for p in tmp_path.rglob("*")) == files_before  # nothing written


def test_out_is_a_directory(fake, tmp_path):
    (tmp_path / "d").mkdir()
    result = run("--out", str(tmp_path / "d"))
    _assert_refused(result, "is a directory", fake, tmp_path, ["d"])


def test_out_parent_is_not_a_directory(fake, tmp_path):
    (tmp_path / "f").write_text("x")
    result = run("--out", str(tmp_path / "f" / "sub" / "t.nc"))
    _assert_refused(result, "is not a directory", fake, tmp_path, ["f"])


def test_out_directory_without_write_permission(fake, tmp_path, monkeypatch):
    # root ignores mode bits, so the permission check itself is exercised via os.access
    import pipelines.simulate_cmd as cmd

    monkeypatch.setattr(cmd.os, "access", lambda path, mode: False)
    result = run("--out", str(tmp_path / "t.nc"))
    _assert_refused(result, "no write permission", fake, tmp_path, [])


def test_existing_invalid_table_is_refused_without_force(fake, tmp_path):
    out = tmp_path / "t.nc"
    out.write_text("garbage")
    result = run("--segments", "4", "--out", str(out))
    _assert_refused(result, "pass --force to replace it", fake, tmp_path, ["t.nc"])
    assert out.read_text() == "garbage"


@pytest.mark.slow
def test_end_to_end_with_the_real_simulator(tmp_path, monkeypatch):
    """Real tripartite network (numpy target) on a 4-segment protocol: ~15 s of CPU.

    The CLI's 16-segment minimum for the fit is lowered to 4 and a short protocol is
    injected (30 s warm-up past the spontaneous Ca2+ event, then 4 segments of 10 s).
    The physics is neuro_sim's tests' business; this checks the plumbing end to end.
    """
    import pipelines.simulate_cmd as cmd
    from neuro_sim import SegmentProtocol

    real, results = neuro_sim.simulate, []

    def short_run(*args, **kwargs):
        results.append(real(*args, protocol=SegmentProtocol(n_segments=4, warmup_s=30.0), **kwargs))
        return results[-1]

    monkeypatch.setattr(cmd, "MIN_FIT_SEGMENTS", 4)
    monkeypatch.setattr(neuro_sim, "simulate", short_run)
    out = tmp_path / "t.nc"
    result = run("--segments", "2,4", "--codegen", "numpy", "--dt", "0.01", "-q", "--out", str(out))
    assert result.exit_code == 0, result.output
    (sim,) = results
    assert sim["total_segments"].values.tolist() == [2, 4]
    ds = read_table(out)
    np.testing.assert_array_equal(ds["ltp_simulated"].values, sim["ltp_end"].values)
    assert ds.attrs["simulator_model"] == "tripartite" and ds.attrs["simulator_codegen"] == "numpy"
    assert ds.attrs["simulator_dt_s"] == 0.01 and ds.attrs["brian2_version"] == sim.attrs["brian2_version"]
    assert json.loads(ds.attrs["simulator_protocol"])["warmup_s"] == 30.0
    for T in (2, 4):
        rf = ds["retention_factor"].sel(total_segments=T).values[:T]
        assert rf.sum() == pytest.approx(1.0) and np.all(np.diff(rf) < 0)
