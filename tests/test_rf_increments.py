"""RF(t, T) and r_t against increments computed by hand from a curve that is not geometric.

For the exponential dp_{t+1} = q dp_t, so RF(t, T) = q^(t-1) (1 - q) / (1 - q^T) and r_t = q^(t-1)
come out the same whether the increments start at dp_1 or at dp_2: an off-by-one in the increments
passes every exponential check. A Hill curve's increment ratios change with t, so a shift shows.
SPEC section 2: dp_t = f(t) - f(t-1) with f(0) = 0, RF(t, T) = dp_t / sum_{i<=T} dp_i, r_t = dp_t / dp_1.
"""

import json

import numpy as np
import pytest
import xarray as xr

from retention import FitResult, build_table, factor_matrix, fit_macro_model

A, K, N = 0.6, 3.0, 0.8  # Hill f(t) = A t^n / (K^n + t^n), concave for n <= 1: falling increments
S = 12


def hill(t: int, a: float = A, k: float = K, n: float = N) -> float:
    return a * t**n / (k**n + t**n)


def by_hand(curve, T: int) -> tuple[list[float], list[float]]:
    """(RF(., T), r_.) from f(1..T) with plain Python arithmetic."""
    f = [0.0] + [curve(t) for t in range(1, T + 1)]
    dp = [f[t] - f[t - 1] for t in range(1, T + 1)]
    return [d / sum(dp) for d in dp], [d / dp[0] for d in dp]


def test_the_curve_is_not_geometric():
    """The premise: the Hill increments do not fall by a constant ratio (else a shift is invisible)."""
    _, r = by_hand(hill, 4)  # r_t = dp_t / dp_1
    ratios = [r[1] / r[0], r[2] / r[1], r[3] / r[2]]
    assert max(ratios) - min(ratios) > 0.05


@pytest.mark.parametrize("T", [1, 2, 3, 7, S])
def test_factors_of_a_fitted_hill_curve_equal_the_hand_computed_ones(T):
    """factor_matrix on FitResult.increments, the path build_table takes, against dp_t = f(t) - f(t-1)."""
    fit = FitResult(family="hill", params={"A": A, "K": K, "n": N}, stderr={}, rss=0.0, r2=1.0, bic=0.0, n_points=S)
    dp = fit.increments(S)
    rf, r = by_hand(hill, T)
    np.testing.assert_allclose(factor_matrix(dp, [T], S, "paper")[0, :T], rf, rtol=1e-12)
    np.testing.assert_allclose(factor_matrix(dp, [T], S, "streaming")[0, :T], r, rtol=1e-12)


def test_table_rows_equal_the_hand_computed_factors_of_the_simulated_curve():
    """A table built from a simulated (noiseless) Hill saturation curve: each row RF(., T) and
    r_t equals what the curve's own increments give, from the fitted parameters (to rounding) and
    from the simulated points themselves (to the fit's error)."""
    seg = np.arange(1, S + 1)
    sim = xr.Dataset({"ltp_end": ("segment", [hill(t) for t in seg], {"units": "1"})},
                     coords={"segment": seg}, attrs={"model": "test"})
    ds = build_table(sim, fit_macro_model(sim["ltp_end"].values), [3, 8, S])
    assert ds.attrs["macro_model_family"] == "hill"
    fitted = json.loads(ds.attrs["macro_model_params"])
    for T in (3, 8, S):
        row = ds["retention_factor"].sel(total_segments=T).values[:T]
        streaming = ds["retention_factor_streaming"].sel(total_segments=T).values[:T]
        rf_fit, r_fit = by_hand(lambda t: hill(t, fitted["A"], fitted["K"], fitted["n"]), T)
        np.testing.assert_allclose(row, rf_fit, rtol=1e-10)
        np.testing.assert_allclose(streaming, r_fit, rtol=1e-10)
        rf_sim, r_sim = by_hand(hill, T)
        np.testing.assert_allclose(row, rf_sim, rtol=1e-4)
        np.testing.assert_allclose(streaming, r_sim, rtol=1e-4)
