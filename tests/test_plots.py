"""``pipeline plot`` and pipelines.figures: every subcommand writes a real image from the
packaged or synthetic data, and bad input costs one line of error, not a traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from pipelines import figures
from pipelines.cli import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fixtures
def synthetic_simulation(n_segments: int = 4, period: float = 10.0) -> xr.Dataset:
    """A small Dataset in the layout of Contract 1 (tripartite-style traces)."""
    time = np.arange(0.0, n_segments * period, 0.1)  # (n_time,)
    phase = time % period
    segment = np.arange(1, n_segments + 1)
    A, k = 0.6, 0.21
    ltp_end = A * (1 - np.exp(-k * segment))
    ltp = np.where(segment[None, :] <= segment[:, None], ltp_end[None, :], np.nan)  # (T, segment)
    spike = np.exp(-((phase - 4.0) ** 2) * 4)
    return xr.Dataset(
        {
            "calcium": ("time", 0.1 + 0.9 * spike, {"units": "uM", "long_name": "astrocytic Ca2+ C"}),
            "ip3": ("time", 0.2 + 0.6 * np.exp(-((phase - 3.0) ** 2) / 2), {"units": "uM", "long_name": "IP3 I"}),
            "gliotransmitter": ("time", 4.0 * spike**8, {"units": "uM", "long_name": "gliotransmitter G_A"}),
            "release_time": ("release", 4.0 + period * np.arange(n_segments), {"units": "s"}),
            "x_a": ("time", 1 - 0.5 * (phase > 4.0) * np.exp(-(phase - 4.0) / 2),
                    {"units": "1", "long_name": "gliotransmitter resources x_A"}),
            "gamma_s": ("time", A * (1 - np.exp(-k * time / period)), {"units": "1", "long_name": "Gamma_S"}),
            "u_s": ("time", 0.5 + 0.3 * (phase < 2), {"units": "1", "long_name": "release probability u_S"}),
            "x_s": ("time", 1 - 0.4 * (phase < 2), {"units": "1", "long_name": "synaptic resources x_S"}),
            "ltp_end": ("segment", ltp_end, {"units": "1", "long_name": "Gamma_S at segment end"}),
            "ltp": (("total_segments", "segment"), ltp, {"units": "1", "long_name": "Gamma_S per T"}),
        },
        coords={"time": ("time", time, {"units": "s", "long_name": "time after warm-up"}),
                "segment": segment, "total_segments": segment},
        attrs={"model": "tripartite", "model_params": "{}",
               "protocol": json.dumps({"segment_period_s": period, "burst_duration_s": 2.0, "stimulate": True})},
    )


def synthetic_table(n_segments: int = 12) -> xr.Dataset:
    """A table built by the retention package itself from a slightly noisy exponential curve."""
    from retention import build_table, fit_macro_model

    sim = synthetic_simulation(n_segments)
    noise = np.random.default_rng(0).normal(0.0, 1e-3, n_segments)
    sim["ltp_end"] = sim["ltp_end"] + noise
    sim["ltp_end"].attrs = {"units": "1", "long_name": "Gamma_S at segment end"}
    return build_table(sim, fit_macro_model(sim["ltp_end"].values), list(range(1, n_segments + 1)))


def write_run_dir(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    lines = [{"step": s, "split": "train", "loss": 2.3 / (1 + s / 20), "accuracy": min(0.9, 0.1 + s / 100),
              "lr": 1e-3, "tokens_per_s": 1e4, "elapsed_s": s / 10} for s in range(0, 60, 2)]
    lines += [{"step": s, "split": "val", "loss": 2.4 / (1 + s / 20), "accuracy": 0.1 + s / 120}
              for s in (0, 20, 40, 60)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["plot", *args], catch_exceptions=False)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG_MAGIC


def _assert_one_line_error(result, *fragments: str) -> None:
    """A user error: click's SystemExit with the documented exit status 1 and one `Error:` line."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def table_file(tmp_path_factory) -> Path:
    from retention.table import write_table

    return write_table(synthetic_table(), tmp_path_factory.mktemp("table") / "table.nc")


# ----------------------------------------------------------------------------- CLI: success
def test_plot_simulation_png_and_svg(tmp_path):
    sim = tmp_path / "sim.nc"
    synthetic_simulation().to_netcdf(sim)
    out = tmp_path / "figs" / "sim.png"
    result = _invoke("simulation", str(sim), "--out", str(out), "--svg")
    assert result.exit_code == 0, result.output
    _assert_png(out)
    svg = out.with_suffix(".svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # ordinary permissions, not mkstemp's 0600


@pytest.mark.parametrize("command", ["retention", "fit"])
def test_plot_table_commands_from_packaged_default(tmp_path, command):
    out = tmp_path / f"{command}.png"
    result = _invoke(command, "--out", str(out))
    assert result.exit_code == 0, result.output
    _assert_png(out)


def test_plot_fit_from_a_file_with_svg_is_reproducible(tmp_path, table_file):
    written = []
    for name in ("a", "b"):
        out = tmp_path / name / "fit.png"
        result = _invoke("fit", str(table_file), "--out", str(out), "--svg")
        assert result.exit_code == 0, result.output
        _assert_png(out)
        assert out.with_suffix(".svg").stat().st_size > 5000
        written.append(out)
    for suffix in (".png", ".svg"):  # no dates or random ids: regenerated figures are identical
        assert written[0].with_suffix(suffix).read_bytes() == written[1].with_suffix(suffix).read_bytes()


def test_plot_training(tmp_path):
    out = tmp_path / "curves.png"
    result = _invoke("training", str(write_run_dir(tmp_path)), "--out", str(out), "--svg")
    assert result.exit_code == 0, result.output
    _assert_png(out)
    assert out.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_plot_decay(tmp_path):
    out = tmp_path / "decay.png"
    result = _invoke("decay", "--out", str(out), "--tokens", "8", "--scales", "1,2")
    assert result.exit_code == 0, result.output
    _assert_png(out)


# ----------------------------------------------------------------------------- CLI: errors
def test_missing_inputs_give_one_line_errors(tmp_path):
    missing = str(tmp_path / "nope")
    _assert_one_line_error(_invoke("simulation", missing + ".nc", "--out", str(tmp_path / "a.png")), "nope.nc")
    _assert_one_line_error(_invoke("retention", missing + ".nc", "--out", str(tmp_path / "b.png")), "nope.nc")
    _assert_one_line_error(_invoke("fit", missing + ".nc", "--out", str(tmp_path / "c.png")), "nope.nc")
    _assert_one_line_error(_invoke("training", missing, "--out", str(tmp_path / "d.png")), "metrics.jsonl")
    assert not list(tmp_path.glob("*.png"))


def test_corrupt_inputs_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"this is not netCDF\x00\x01" * 50)
    for command in ("simulation", "retention", "fit"):
        _assert_one_line_error(_invoke(command, str(junk), "--out", str(tmp_path / "x.png")), "junk.nc")
    run = write_run_dir(tmp_path)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 61, "split": "val", "loss": \n')
    _assert_one_line_error(_invoke("training", str(run), "--out", str(tmp_path / "y.png")), "line 35")
    # a netCDF file that is not a simulation Dataset
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(other)
    _assert_one_line_error(_invoke("simulation", str(other), "--out", str(tmp_path / "z.png")), "simulation")
    assert not list(tmp_path.glob("*.png"))


def test_unknown_segment_count_is_a_one_line_error(tmp_path, table_file):
    result = _invoke("retention", str(table_file), "--totals", "4,99", "--out", str(tmp_path / "r.png"))
    _assert_one_line_error(result, "T = 99", "pipeline simulate --segments 99")


# ----------------------------------------------------------------------------- figure content
def test_simulation_figure_marks_every_segment_and_shows_each_quantity():
    ds = synthetic_simulation(n_segments=5)
    fig = figures.simulation_figure(ds)
    panels = {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}
    assert list(panels) == ["Astrocyte Ca$^{2+}$", "Astrocyte IP$_3$ and receptors", "Gliotransmitter release",
                            "LTP trace (slow, saturating)", "Synapses: STP variables (fast)"]
    ltp_ax = panels["LTP trace (slow, saturating)"]
    boundaries = [line for line in ltp_ax.lines if np.ptp(line.get_xdata()) == 0]
    assert sorted(float(line.get_xdata()[0]) for line in boundaries) == [10.0, 20.0, 30.0, 40.0, 50.0]
    markers = [line for line in ltp_ax.lines if line.get_linestyle() == "None"]
    np.testing.assert_allclose(markers[0].get_ydata(), ds["ltp_end"].values)
    # the 17 ms gliotransmitter pulses are shown as release markers, not as an undersampled trace
    glio = panels["Gliotransmitter release"]
    releases = [line for line in glio.lines if line.get_marker() == "v"]
    np.testing.assert_allclose(releases[0].get_xdata(), ds["release_time"].values)
    assert all("G_A" not in line.get_label() for line in glio.lines)
    for ax in fig.axes:  # every y axis says what it shows and in which unit
        assert "(" in ax.get_ylabel() and ")" in ax.get_ylabel()


def test_retention_figure_draws_the_table_rows(table_file):
    from retention.table import read_table

    ds = read_table(table_file)
    fig = figures.retention_figure(ds, totals=[4, 8])
    paper_ax, streaming_ax = fig.axes
    for line, T in zip(paper_ax.lines, (4, 8)):
        np.testing.assert_allclose(line.get_ydata(), ds["retention_factor"].sel(total_segments=T).values[:T])
        assert line.get_label() == f"T = {T}"
    assert "extension" in streaming_ax.get_title(loc="left")
    np.testing.assert_allclose(streaming_ax.lines[0].get_ydata()[0], 1.0)


def test_fit_summary_and_figure_report_k_and_r2(table_file):
    """The table comes from a noisy exponential (A = 0.6, k = 0.21): BIC must pick the exponential
    (the 3-parameter families fit no better than the noise and pay for their extra parameter), and
    the summary must report its k and R²."""
    from retention.table import read_table

    ds = read_table(table_file)
    summary = figures.fit_summary(ds)
    assert summary["family"] == ds.attrs["macro_model_family"] == "exponential"
    assert summary["r2"] == pytest.approx(ds.attrs["macro_model_r2"]) and summary["r2"] > 0.999
    assert summary["k_name"] == "k" and summary["k"] == pytest.approx(0.21, abs=0.01)
    legend = "\n".join(t.get_text() for t in figures.fit_figure(ds).axes[0].get_legend().get_texts())
    assert "R² = " in legend and "k" in legend


def test_positional_decay_matches_the_attention_module():
    positional = pytest.importorskip("rmaat.attention.positional")
    for scale in figures.PAPER_SCALES:
        np.testing.assert_allclose(figures.positional_decay(9, scale),
                                   positional.decay_matrix(9, scale, dtype=__import__("torch").float64).numpy(),
                                   rtol=1e-12, atol=0)


def test_plotting_loads_neither_torch_nor_brian2():
    probe = ("import pipelines.plot_cmd, pipelines.figures, sys; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "torch" not in loaded and "brian2" not in loaded
