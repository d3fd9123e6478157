"""Retention factors: the paper's RF(t, T) and the streaming extension r_t."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention import (
    FitResult,
    RetentionTableError,
    factor_matrix,
    fit_family,
    increments,
    paper_factors,
    streaming_factors,
)

T_MAX = 64


def _fit(family: str, **params) -> FitResult:
    """A fitted macro model with given parameters (the factors use only the curve)."""
    nan = {k: float("nan") for k in params}
    return FitResult(family=family, params=params, stderr=nan, rss=0.0, r2=1.0, bic=0.0, n_points=T_MAX)


saturating_fits = st.one_of(
    st.builds(lambda A, k: _fit("exponential", A=A, k=k),
              st.floats(1e-3, 10.0), st.floats(0.01, 3.0)),
    # beta <= 1 and n <= 1 keep these concave, i.e. increments non-increasing
    st.builds(lambda A, k, beta: _fit("stretched_exponential", A=A, k=k, beta=beta),
              st.floats(1e-3, 10.0), st.floats(0.01, 3.0), st.floats(0.2, 1.0)),
    st.builds(lambda A, K, n: _fit("hill", A=A, K=K, n=n),
              st.floats(1e-3, 10.0), st.floats(0.5, 50.0), st.floats(0.2, 1.0)),
)


@settings(max_examples=60, deadline=None)
@given(fit=saturating_fits)
def test_paper_factors_properties(fit):
    dp = fit.increments(T_MAX)
    rf = factor_matrix(dp, range(1, T_MAX + 1))  # (T, S): row T-1 holds RF(., T)
    for T in (1, 2, 7, 16, T_MAX):
        row = rf[T - 1, :T]
        assert row.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(row > 0) and np.all(row <= 1)
        assert np.all(np.diff(row) <= 1e-15)  # falls (weakly) with t
        assert np.all(np.isnan(rf[T - 1, T:]))
    # for fixed t, RF(t, T) falls as T grows: each column is non-increasing down the rows
    lower = np.tril(np.ones((T_MAX, T_MAX), dtype=bool))  # entries with t <= T
    column_steps = np.diff(np.where(lower, rf, 0.0), axis=0)[lower[1:] & lower[:-1]]
    assert np.all(column_steps <= 1e-15)


@settings(max_examples=40, deadline=None)
@given(A=st.floats(1e-3, 10.0), k=st.floats(0.01, 3.0), T=st.integers(1, T_MAX))
def test_exponential_closed_forms(A, k, T):
    dp = _fit("exponential", A=A, k=k).increments(T_MAX)
    t = np.arange(1, T + 1)
    # RF(t, T) = q^(t-1) (1 - q) / (1 - q^T) with q = exp(-k), independent of A
    q = math.exp(-k)
    np.testing.assert_allclose(paper_factors(dp, T), q ** (t - 1) * (1 - q) / (1 - q**T), rtol=1e-9)
    # EXTENSION r_t = dp_t / dp_1 = exp(-k (t - 1)) = remaining capacity 1 - f(t-1)/A
    r = streaming_factors(dp, T)
    np.testing.assert_allclose(r, np.exp(-k * (t - 1)), rtol=1e-9)
    assert r[0] == 1.0
    np.testing.assert_array_equal(r, streaming_factors(dp, T_MAX)[:T])  # T-free


def test_increments_start_from_zero():
    np.testing.assert_allclose(increments([0.1, 0.25, 0.3]), [0.1, 0.15, 0.05])


def test_non_positive_increment_is_named():
    with pytest.raises(RetentionTableError, match="dp_3 = 0 is not positive"):
        paper_factors(increments([0.1, 0.15, 0.15, 0.16]), 4)
    with pytest.raises(RetentionTableError, match="dp_1 = -0.1 is not positive"):
        streaming_factors(increments([-0.1, 0.1]), 2)


def test_rising_increments_are_refused():
    # a sigmoidal (logistic) macro model writes more in segment 2 than in segment 1
    dp = _fit("logistic", A=0.6, r=0.5, t0=6.0).increments(16)
    with pytest.raises(RetentionTableError, match="increments rise at segment 2.*sigmoidal"):
        paper_factors(dp, 16)


def test_raw_noisy_increments_fail_where_the_fit_does_not():
    # why RF comes from the smooth fit: differencing noisy points breaks monotonicity
    t = np.arange(1, 33)
    y = 0.607 * (1 - np.exp(-0.209 * t)) + np.random.default_rng(1).normal(0, 0.003, t.size)
    with pytest.raises(RetentionTableError):
        paper_factors(increments(y), 32)
    rf = paper_factors(fit_family("exponential", y).increments(32), 32)
    assert np.all(np.diff(rf) < 0)


@pytest.mark.parametrize("T", [0, 17, 2.0, True])
def test_bad_total_segments(T):
    with pytest.raises(RetentionTableError, match="total_segments"):
        paper_factors(_fit("exponential", A=1.0, k=0.2).increments(16), T)


def test_unknown_variant():
    with pytest.raises(RetentionTableError, match="unknown factor variant"):
        factor_matrix(np.ones(3) / 3, [3], variant="online")
