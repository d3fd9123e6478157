"""simulate(): Contract 1 (dims, attributes, NaN beyond T), inputs, code-generation setup."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import neuro_sim
from neuro_sim import SimulationInputError, codegen, simulate
from neuro_sim.protocol import MAX_SEGMENTS, SegmentProtocol

PROVENANCE = ("model", "model_params", "protocol", "codegen", "dt_s", "brian2_version",
              "package_version", "created")


def test_contract_dims_coords_and_attrs(tripartite_short):
    ds = tripartite_short
    assert ds["segment"].values.tolist() == [1, 2, 3, 4]
    assert ds["total_segments"].values.tolist() == [2, 4]  # sorted, unique
    assert ds["ltp_end"].dims == ("segment",)
    assert ds["ltp"].dims == ("total_segments", "segment")
    assert ds["time"].values[0] == 0.0 and ds["time"].values[-1] == pytest.approx(40.0)
    for name in ("calcium", "ip3", "gamma_s", "x_a", "u_s", "x_s", "gliotransmitter"):
        assert ds[name].dims == ("time",)
    for attr in PROVENANCE:
        assert attr in ds.attrs, attr
    assert ds.attrs["model"] == "tripartite" and ds.attrs["codegen"] == "numpy"
    assert ds.attrs["dt_s"] == pytest.approx(0.01)
    params = json.loads(ds.attrs["model_params"])
    assert params["O_G"] == pytest.approx(100.0)
    assert json.loads(ds.attrs["protocol"])["n_segments"] == 4


def test_ltp_is_nan_beyond_each_total(tripartite_short):
    ltp = tripartite_short["ltp"]
    end = tripartite_short["ltp_end"].values
    np.testing.assert_array_equal(ltp.sel(total_segments=4).values, end)
    np.testing.assert_array_equal(ltp.sel(total_segments=2).values[:2], end[:2])
    assert np.isnan(ltp.sel(total_segments=2).values[2:]).all()


def test_trace_samples_segment_ends(tripartite_short):
    ds = tripartite_short
    at_ends = ds["gamma_s"].sel(time=[10.0, 20.0, 30.0, 40.0]).values
    np.testing.assert_array_equal(at_ends, ds["ltp_end"].values)


@pytest.mark.parametrize(
    "segments, fragment",
    [
        (0, ">= 1"),
        ((4, -1), ">= 1"),
        ((2.5,), "whole number"),
        ("16", "segment count"),
        ((True,), "whole number"),
        ((), "empty"),
        ((MAX_SEGMENTS + 1,), "exceeds the limit"),
    ],
)
def test_bad_segment_counts(segments, fragment):
    with pytest.raises(SimulationInputError, match=fragment):
        simulate(segments, codegen="numpy", progress=False)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"model": "hodgkin"}, "unknown model"),
        ({"codegen": "gpu"}, "unknown codegen"),
        ({"params": [("O_G", 1.0)]}, "params must be a dict"),
        ({"params": {"nope": 1.0}}, "unknown tripartite parameter"),
        ({"params": {"Omega_c": -40.0}}, "Omega_c"),
        ({"dt_s": 0.0}, "dt_s"),
        ({"protocol": {"n_segments": 2}}, "SegmentProtocol"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_inputs(kwargs, fragment):
    with pytest.raises(SimulationInputError, match=fragment):
        simulate((2,), **{"codegen": "numpy", "progress": False, **kwargs})


def test_protocol_n_segments_follows_request(capsys):
    """A given protocol keeps its timing; its n_segments becomes max(total_segments).
    Also runs the progress-bar path (Brian2 report callback -> tqdm on stderr)."""
    proto = SegmentProtocol(n_segments=1, segment_period_s=5.0, warmup_s=0.0, stimulate=False)
    ds = simulate((2,), protocol=proto, codegen="numpy", dt_s=0.01, progress=True)
    assert "simulated s" in capsys.readouterr().err
    assert ds.sizes["segment"] == 2
    assert json.loads(ds.attrs["protocol"])["segment_period_s"] == 5.0


def test_import_does_not_load_brian2():
    code = "import sys, neuro_sim, neuro_sim.simulate; print('brian2' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert neuro_sim.MODELS == ("tripartite", "astro_rate")


def test_codegen_resolution_and_cache_dir(monkeypatch, tmp_path):
    assert codegen.resolve("numpy") == "numpy"
    assert codegen.resolve("auto") in ("cpp_standalone", "cython", "numpy")
    with pytest.raises(SimulationInputError, match="unknown codegen"):
        codegen.resolve("jax")
    monkeypatch.delenv(codegen.CACHE_ENV, raising=False)
    assert codegen.cache_dir() == Path(neuro_sim.__file__).resolve().parents[1] / ".brian_cache"
    monkeypatch.setenv(codegen.CACHE_ENV, str(tmp_path))
    assert codegen.cache_dir() == tmp_path


def test_protocol_spike_trains():
    proto = SegmentProtocol(n_segments=3, n_synapses=4, burst_rate_hz=20.0, burst_duration_s=2.0)
    index, times = proto.spike_trains()
    assert len(times) == 3 * 4 * 40  # 40 spikes per synapse and burst
    for s in range(3):
        in_seg = (times >= s * 10.0) & (times < (s + 1) * 10.0)
        assert in_seg.sum() == 160 and times[in_seg].max() < s * 10.0 + 2.0
    first = [times[index == i].min() for i in range(4)]
    np.testing.assert_allclose(first, [0.0, 0.0125, 0.025, 0.0375])  # phases spread over the ISI
    assert len(SegmentProtocol(n_segments=3, stimulate=False).spike_trains()[1]) == 0
