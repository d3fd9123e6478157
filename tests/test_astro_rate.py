"""The ``astro_rate`` neuron–astrocyte rate network: Brian2 (numpy target) against SciPy.

Brian2 vs SciPy tolerances (default dt = 2 ms, 3 segments):

* LTP (``ltp_end`` and the p_l traces): max |Brian2 - SciPy| <= 1e-3 x the LTP level reached.
  Brian2 integrates each group with RK4 but holds the other groups' variables fixed during
  a step, so the coupling lags by up to one step and the error is first order in dt:
  measured 1.4e-4 / 2.9e-4 / 7.7e-4 of the level at dt = 1 / 2 / 5 ms.  In the LTP's time
  integral the lag largely cancels between burst onset and offset.
* Other traces: max |Brian2 - SciPy| <= 2.5 % of the trace's peak.  During the 20-ms onset
  transients a lag of dt/2 = 1 ms against tau_n = 20 ms shifts x_post by up to
  (dt/2)/tau_n = 5 % of its jump; measured 1.4 % (x_post), 0.3 % (s), 0.1 % (p_s).

Brian2 runs are the expensive part (numpy target, ~0.5 ms per step): four short runs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neuro_sim import astro_rate, astro_rate_scipy, spatial
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

PROTOCOL = SegmentProtocol(n_segments=3)  # default 10 s segments with a 2 s burst
STATES = ("x_pre", "x_post", "s", "p_s", "p_l")
LTP_TOL = 1e-3  # of the LTP level, see the module docstring
TRACE_TOL = 0.025  # of each trace's peak, see the module docstring


@pytest.fixture(scope="module")
def brian():
    return astro_rate.run(PROTOCOL, codegen="numpy", dt_s=None, progress=False, seed=0)


@pytest.fixture(scope="module")
def reference():
    return astro_rate_scipy.run(PROTOCOL)


@pytest.fixture(scope="module")
def long_reference():
    return astro_rate_scipy.run(SegmentProtocol(n_segments=6))


# ----------------------------------------------------------------------------- agreement


def test_brian2_agrees_with_scipy(brian, reference):
    np.testing.assert_allclose(brian.time, reference.time, atol=1e-9)
    level = float(reference.ltp_end.max())
    assert level > 0.04  # the protocol does potentiate: the comparison is not 0 == 0
    assert float(np.abs(brian.ltp_end - reference.ltp_end).max()) <= LTP_TOL * level
    assert float(np.abs(brian.p_l_end - reference.p_l_end).max()) <= LTP_TOL * level
    assert float(np.abs(brian.p_l - reference.p_l).max()) <= LTP_TOL * level
    for name in ("x_pre", "x_post", "s", "p_s"):
        peak = float(reference[name].max())
        assert peak > 0.1, name
        assert float(np.abs(brian[name] - reference[name]).max()) <= TRACE_TOL * peak, name


def test_dataset_layout(brian):
    assert dict(brian.sizes) == {"segment": 3, "synapse": 9, "time": 601, "pre_neuron": 3, "post_neuron": 3}
    for name, var in {**brian.data_vars, **brian.coords}.items():
        assert "units" in var.attrs and "long_name" in var.attrs, name
    assert json.loads(brian.attrs["model_params"]) == astro_rate.default_params()
    assert brian.attrs["codegen"] == "numpy" and brian.attrs["dt_s"] == astro_rate.DEFAULT_DT_S
    # segment ends are trace samples, and ltp_end is the synapse mean of p_l there
    np.testing.assert_array_equal(brian.p_l_mean.sel(time=brian.segment_end_s.values), brian.ltp_end)
    np.testing.assert_allclose(brian.p_l_end.mean("synapse"), brian.ltp_end)


# ----------------------------------------------------------------------------- sanity


@pytest.mark.parametrize("which", ["brian", "reference"])
def test_finite_and_bounded(which, request):
    ds = request.getfixturevalue(which)
    bounds = astro_rate.state_bounds(astro_rate.params_from_dict(None), PROTOCOL)
    for name in STATES:
        values = ds[name].values
        assert np.isfinite(values).all(), name
        # the exact solution is >= 0; DOP853's dense output undershoots by ~1e-8 in the fast decays
        assert values.min() >= -1e-6 * bounds[name], name
        assert values.max() <= bounds[name] * (1 + 1e-9), name  # x_pre reaches b/lam to rounding


@pytest.mark.parametrize("which", ["brian", "long_reference"])
def test_ltp_saturates(which, request):
    ltp = request.getfixturevalue(which).ltp_end.values
    increments = np.diff(np.concatenate([[0.0], ltp]))
    assert (increments > 0).all()
    assert (np.diff(increments) < 0).all()


def test_ltp_is_a_leaky_integrator(long_reference):
    """STP relaxes within the segment, so each segment adds the same input and p_l decays by
    exp(-gamma_l P / tau_pl) in between: successive increments have exactly that ratio."""
    p = astro_rate.params_from_dict(None)
    q = math.exp(-p.gamma_l * PROTOCOL.segment_period_s / p.tau_pl)
    increments = np.diff(np.concatenate([[0.0], long_reference.ltp_end.values]))
    np.testing.assert_allclose(increments[1:] / increments[:-1], q, rtol=1e-4)
    # STP is fast: back at rest (< 1e-3 of its peak) by the end of every segment
    p_s = long_reference.p_s_mean
    assert float(p_s.sel(time=long_reference.segment_end_s.values).max()) < 1e-3 * float(p_s.max())


def test_no_stimulation_no_ltp():
    # The rest state is an exact fixed point, so short segments suffice for Brian2 ...
    short = SegmentProtocol(n_segments=2, segment_period_s=2.0, burst_duration_s=0.5, stimulate=False)
    runs = [astro_rate.run(short, codegen="numpy", dt_s=None, progress=False),
            astro_rate_scipy.run(SegmentProtocol(n_segments=3, stimulate=False))]  # ... and SciPy runs the default
    for ds in runs:
        for name in STATES:
            assert not ds[name].values.any(), name
        assert not ds.ltp_end.values.any()


def test_no_astrocyte_input_no_ltp():
    """kappa_gain = 0 (no synapse -> astrocyte signal) is the analogue of O_G = 0."""
    ds = astro_rate_scipy.run(PROTOCOL, {"kappa_gain": 0.0})
    assert float(ds.s.max()) > 0.1  # the synapses are active ...
    assert not ds.p_l.values.any() and not ds.p_s.values.any()  # ... the astrocyte is not


def test_prefix_property(brian):
    one = astro_rate.run(SegmentProtocol(n_segments=1), codegen="numpy", dt_s=None, progress=False)
    assert one.ltp_end.values[0] == brian.ltp_end.values[0]
    for name in STATES:
        np.testing.assert_array_equal(one[name].values, brian[name].sel(time=one.time).values)


def test_halving_dt_changes_curve_by_less_than_one_percent(brian):
    coarse = astro_rate.run(PROTOCOL, codegen="numpy", dt_s=2 * astro_rate.DEFAULT_DT_S, progress=False)
    relative = np.abs(coarse.ltp_end.values / brian.ltp_end.values - 1.0)
    assert relative.max() < 0.01


# ----------------------------------------------------------------------------- geometry


def test_coupling_matrix_is_normalised():
    p = astro_rate.params_from_dict({"scale": 1.5, "coupling": 0.3})
    T = astro_rate.coupling_matrix(p)
    d = astro_rate.distance_matrix()
    assert T.shape == (9, 9) and np.allclose(T, T.T) and not np.diag(T).any()
    assert math.isclose(T.sum(axis=1).max(), 0.3)
    assert np.abs(np.linalg.eigvalsh(T)).max() <= 0.3 + 1e-12
    off = ~np.eye(9, dtype=bool)
    np.testing.assert_allclose(T[off] / np.exp(-1.5 * d[off]), T[0, 1] / math.exp(-1.5))
    assert sorted(set(np.round(d[0], 6))) == [0.0, 1.0, 1.414214, 2.0, 2.236068, 2.828427]


# ----------------------------------------------------------------------------- spatial


@pytest.fixture(scope="module")
def response():
    return spatial.spatial_response(spatial.PAPER_SCALES)


def test_spatial_response_decreases_with_distance(response):
    assert response.p_s.dims == ("scale", "distance")
    assert (response.n_synapses > 0).all()  # the corner source sees every distance
    assert (np.diff(response.p_s.values, axis=1) < 0).all()


def test_spatial_response_falls_faster_for_larger_scale(response):
    far = response.p_s_relative.sel(distance=response.distance > 1.0).values  # (scale, distance)
    assert (np.diff(far, axis=0) < 0).all()
    assert (np.diff(response.effective_scale.values) > 0).all()
    # with short-range coupling the STP decay follows the coupling's exp(-scale d)
    small = response.sel(scale=1.0)
    np.testing.assert_allclose(small.p_s_relative[1:], small.attention_decay_relative[1:], rtol=0.1)


def test_steady_state_response():
    ds = spatial.spatial_response((1.0, 5.0), at="steady_state", source=(1, 1))
    assert list(ds.n_synapses.values) == [1, 4, 4, 0, 0, 0]  # the centre sees distances 0, 1, sqrt 2
    assert np.isnan(ds.p_s.sel(distance=2.0)).all()
    assert (ds.p_s.sel(distance=1.0) > ds.p_s.sel(distance=math.sqrt(2), method="nearest")).all()


def test_positional_decay_helper():
    decay = spatial.positional_decay([2.0], [0.0, 1.0, 3.0])
    np.testing.assert_allclose(decay.sel(scale=2.0).values, np.exp([-0.0, -2.0, -6.0]))


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "params, message",
    [
        ({"tau_q": 1.0}, "unknown astro_rate parameter"),
        ({"tau_n": -0.02}, "must be > 0"),
        ({"tau_pl": float("nan")}, "finite"),
        ({"beta": "fast"}, "must be a number"),
        ({"drive_weight_1": -1.0}, "must be >= 0"),
        ({"coupling": 1.2}, "must be < gamma_s"),
        ({"psi_gain": 1.0}, "stable"),
    ],
)
def test_bad_params_raise(params, message):
    with pytest.raises(SimulationInputError, match=message):
        astro_rate.run(PROTOCOL, params, codegen="numpy", dt_s=None, progress=False)
    with pytest.raises(SimulationInputError, match=message):
        astro_rate_scipy.run(PROTOCOL, params)


@pytest.mark.parametrize(
    "dt_s, message", [(0.003, "whole number of time steps"), (0.02, "too coarse"), (-1.0, "positive")]
)
def test_bad_dt_raises(dt_s, message):
    with pytest.raises(SimulationInputError, match=message):
        astro_rate.run(PROTOCOL, None, codegen="numpy", dt_s=dt_s, progress=False)


def test_bad_codegen_raises():
    with pytest.raises(SimulationInputError, match="unknown codegen"):
        astro_rate.run(PROTOCOL, None, codegen="fortran", dt_s=None, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"source": (3, 0)}, "source"), ({"at": "peak"}, "at must be"), ({"hebbian_drive": 2.0}, "hebbian_drive"),
     ({"params": {"scale": 3.0}}, "scales")],
)
def test_bad_spatial_request_raises(kwargs, message):
    with pytest.raises(SimulationInputError, match=message):
        spatial.spatial_response((1.0,), **kwargs)
