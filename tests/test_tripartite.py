"""Tripartite synapse model: bounds, saturation, controls, step size and SPEC section 2 figures."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from neuro_sim import SimulationInputError, simulate, tripartite
from neuro_sim.protocol import SegmentProtocol
from neuro_sim.tripartite import TripartiteParams

# SPEC section 2, prototype at dt = 1 ms: end-of-segment Gamma_S for t = 1..4, 16, 32.
SPEC_FIRST = np.array([0.113, 0.206, 0.282, 0.344])
SPEC_T16, SPEC_T32 = 0.587, 0.607
SPEC_RATIO, SPEC_K = 0.81, 0.209
DT = 0.01  # numpy-target step (tests/conftest.py TEST_DT_S)


# --- parameters ----------------------------------------------------------------------


def test_default_params_are_si_floats_with_units():
    p = tripartite.default_params()
    assert all(isinstance(v, float) for v in p.values())
    assert p["O_G"] == pytest.approx(100.0)  # 0.1 /uM/s in SI (m^3/mol/s)
    assert p["Omega_G"] == pytest.approx(1 / 120)
    for f in dataclasses.fields(TripartiteParams):
        assert f.metadata["unit"] and f.metadata["kind"] in ("nonneg", "positive", "fraction")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"O_GG": 1.0}, "unknown tripartite parameter"),
        ({"Omega_G": -1.0}, "Omega_G"),
        ({"U_A": 1.5}, "U_A"),
        ({"K_P": 0.0}, "K_P"),
        ({"O_G": float("nan")}, "finite"),
        ({"C_0": 1.0}, "conservation bound"),
    ],
)
def test_bad_params_raise(override, fragment, short_protocol):
    with pytest.raises(SimulationInputError, match=fragment):
        tripartite.run(short_protocol, override, codegen="numpy", progress=False)


@pytest.mark.parametrize("dt_s", [0.0, -1e-3, float("inf"), 0.05, 0.003])
def test_bad_dt_raises(dt_s, short_protocol):
    # 0.003 s does not divide the 10 s period; 0.05 s is too coarse for the Ca2+ dynamics.
    with pytest.raises(SimulationInputError, match="dt_s"):
        tripartite.run(short_protocol, None, codegen="numpy", dt_s=dt_s, progress=False)


def test_release_jump_is_the_exact_pulse_integral():
    """The per-release jump equals integrating dGamma_S/dt = O_G G_A (1-Gamma_S) - Omega_G Gamma_S
    with G_A(t) = dG exp(-Omega_e t) resolved finely (up to the Omega_G decay, ~1e-4)."""
    p = TripartiteParams()
    for gamma0, x_a in [(0.0, 1.0), (0.4, 0.7), (0.9, 0.2)]:
        dg = p.rho_e * p.G_T * p.U_A * x_a
        rhs = lambda t, g: p.O_G * dg * np.exp(-p.Omega_e * t) * (1 - g) - p.Omega_G * g  # noqa: E731
        t_end = 0.5  # 30 clearance time constants
        sol = solve_ivp(rhs, (0, t_end), [gamma0], rtol=1e-10, atol=1e-12)
        jumped = tripartite.release_jump(gamma0, x_a, p) * math.exp(-p.Omega_G * t_end)
        assert sol.y[0, -1] == pytest.approx(float(jumped), abs=2e-5)
    assert p.release_gain == pytest.approx(1 - math.exp(-0.13), rel=1e-9)  # ~0.12 per release
    # The examples' O_G = 1.5 /uM/s: one release already drives Gamma_S to ~0.86 (SPEC 2).
    assert TripartiteParams(O_G=1.5e3).release_gain == pytest.approx(0.86, abs=0.005)


# --- one shared numpy run (4 segments) -------------------------------------------------


def test_no_nan_and_bounds(tripartite_short):
    ds = tripartite_short
    bound_uM = float(ds.attrs["ca_bound_uM"])
    for name, var in ds.data_vars.items():
        values = np.asarray(var.values, dtype=float)
        finite = values[~np.isnan(values)] if name == "ltp" else values
        assert np.all(np.isfinite(finite)), name
        assert var.attrs.get("units") and var.attrs.get("long_name"), name
    gs = ds["gamma_s"].values
    assert np.all(gs >= 0) and np.all(gs < 1)
    assert np.all(ds["calcium"].values > 0) and np.all(ds["calcium"].values < bound_uM)
    for frac in ("h", "gamma_a", "x_a", "u_s", "x_s"):
        v = ds[frac].values
        assert np.all(v >= -1e-12) and np.all(v <= 1 + 1e-12), frac
    for conc in ("ip3", "glutamate", "gliotransmitter"):
        assert np.all(ds[conc].values >= 0), conc


def test_saturating_curve_one_release_per_segment(tripartite_short):
    ltp = tripartite_short["ltp_end"].values
    inc = np.diff(np.concatenate([[0.0], ltp]))
    assert np.all(inc > 0)  # non-decreasing (strictly: every segment adds)
    assert np.all(np.diff(inc) <= 0)  # increments non-increasing
    assert tripartite_short["release_count"].values.tolist() == [1, 1, 1, 1]


def test_spec_figures_first_segments(tripartite_short):
    """SPEC: 0.113, 0.206, 0.282, 0.344 for t = 1..4 (tolerance 0.001: they are given to 3 decimals)."""
    np.testing.assert_allclose(tripartite_short["ltp_end"].values, SPEC_FIRST, atol=1e-3)


def test_prefix_property(tripartite_short, short_protocol):
    """The curve for T = 2 equals the first two points of the T = 4 run (causality)."""
    ds2 = tripartite.run(
        dataclasses.replace(short_protocol, n_segments=2), None, codegen="numpy", dt_s=DT, progress=False
    )
    np.testing.assert_allclose(ds2["ltp_end"].values, tripartite_short["ltp_end"].values[:2], rtol=1e-12)


def test_halving_dt_changes_curve_less_than_1_percent(tripartite_short, short_protocol):
    """10 ms -> 5 ms (the default).  Measured over 32 segments, 1-10 ms agree to ~1e-4:
    the exact release jump leaves only the ms-scale release timing to the step."""
    fine = tripartite.run(short_protocol, None, codegen="numpy", dt_s=DT / 2, progress=False)
    coarse = tripartite_short["ltp_end"].values
    assert fine.attrs["dt_s"] == tripartite.DEFAULT_DT_S
    assert np.max(np.abs(coarse - fine["ltp_end"].values) / fine["ltp_end"].values) < 0.01


# --- controls --------------------------------------------------------------------------


def test_no_stimulation_no_ltp():
    """Without input the astrocyte fires only once, during the warm-up: no LTP after it."""
    proto = SegmentProtocol(n_segments=2, warmup_s=30.0, stimulate=False)
    ds = tripartite.run(proto, None, codegen="numpy", dt_s=DT, progress=False)
    assert np.all(ds["ltp_end"].values == 0.0)
    assert ds["release_count"].values.sum() == 0


def test_no_warmup_spontaneous_release_would_count():
    """Why the warm-up exists: from the initial state the astrocyte fires on its own (~17 s)."""
    proto = SegmentProtocol(n_segments=2, segment_period_s=10.0, warmup_s=0.0, stimulate=False)
    ds = tripartite.run(proto, None, codegen="numpy", dt_s=DT, progress=False)
    assert ds["release_count"].values.tolist() == [0, 1]
    assert 15.0 < float(ds["release_time"].values[0]) < 19.0
    assert ds["ltp_end"].values[1] > 0.1


def test_zero_binding_rate_no_ltp():
    proto = SegmentProtocol(n_segments=2, warmup_s=30.0)
    ds = tripartite.run(proto, {"O_G": 0.0}, codegen="numpy", dt_s=DT, progress=False)
    assert ds["release_count"].values.sum() >= 1  # the astrocyte still releases ...
    assert np.all(ds["ltp_end"].values == 0.0)  # ... but nothing binds


# --- the real configuration: 32 segments, compiled, default dt ------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_spec_figures_full_run_compiled():
    """SPEC section 2 figures from the default (compiled) configuration.

    Tolerances: 0.001 absolute on each value (SPEC gives 3 decimals), 0.01 on the mean
    increment ratio, 0.005 on the exponential fit's k.
    """
    from scipy.optimize import curve_fit

    ds = simulate((16, 32), codegen="cpp_standalone", progress=False)
    ltp = ds["ltp_end"].values
    np.testing.assert_allclose(ltp[:4], SPEC_FIRST, atol=1e-3)
    assert ltp[15] == pytest.approx(SPEC_T16, abs=1e-3)
    assert ltp[31] == pytest.approx(SPEC_T32, abs=1e-3)
    assert ds["release_count"].values.tolist() == [1] * 32
    inc = np.diff(np.concatenate([[0.0], ltp]))
    assert np.mean(inc[1:16] / inc[:15]) == pytest.approx(SPEC_RATIO, abs=0.01)
    t = ds["segment"].values.astype(float)
    (amp, k), _ = curve_fit(lambda t, a, k: a * (1 - np.exp(-k * t)), t, ltp, p0=(0.6, 0.2))
    assert k == pytest.approx(SPEC_K, abs=0.005)
    np.testing.assert_array_equal(ds["ltp"].sel(total_segments=16).values[:16], ltp[:16])
    assert np.isnan(ds["ltp"].sel(total_segments=16).values[16:]).all()
