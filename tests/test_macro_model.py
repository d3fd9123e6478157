"""Macro-model fit: each family is recovered from a noisy synthetic curve and BIC picks it."""

import json
import math

import numpy as np
import pytest

from retention import FAMILIES, RetentionTableError, fit_family, fit_macro_model

T = np.arange(1, 33, dtype=float)  # 32 segments, as a --segments 32 run would give
NOISE = 0.003  # ~0.5 % of the plateau, the order of the simulator's event-timing jitter

TRUE = {
    "exponential": {"A": 0.607, "k": 0.209},  # SPEC section 2 tripartite numbers
    "stretched_exponential": {"A": 0.6, "k": 0.15, "beta": 0.5},
    "hill": {"A": 0.6, "K": 6.0, "n": 2.5},
    "logistic": {"A": 0.6, "r": 0.4, "t0": 8.0},
}


def _curve(family: str, t=T, noise=NOISE, seed=0) -> np.ndarray:
    clean = FAMILIES[family].curve(t, *TRUE[family].values())
    return clean + np.random.default_rng(seed).normal(0.0, noise, t.size)


@pytest.mark.parametrize("family", list(TRUE))
def test_recovers_parameters_and_bic_picks_true_family(family):
    selection = fit_macro_model(_curve(family))
    assert selection.best.family == family
    fit = selection.fits[family]
    for name, true in TRUE[family].items():
        # within 3 reported standard errors: the errors are honest, not just small
        assert abs(fit.params[name] - true) <= 3.0 * fit.stderr[name], (name, fit.params, fit.stderr)
        assert 0 < fit.stderr[name] < abs(true)
    assert fit.r2 > 0.999
    assert fit.rss == pytest.approx(np.sum((fit.predict(T) - _curve(family)) ** 2))
    n, p = T.size, len(TRUE[family])
    assert fit.bic == pytest.approx(n * math.log(fit.rss / n) + p * math.log(n))
    assert [f.bic for f in selection.ranking()] == sorted(f.bic for f in selection.fits.values())


def test_exact_exponential_prefers_fewest_parameters():
    # stretched (beta = 1) and logistic (t0 -> -inf) contain the exponential: they fit as
    # well, so the parameter penalty must decide, not log(0) of a rounding-level RSS
    y = 0.607 * (1 - np.exp(-0.209 * T))
    selection = fit_macro_model(y)
    assert selection.best.family == "exponential"
    assert selection.best.params["A"] == pytest.approx(0.607, rel=1e-9)
    assert selection.best.params["k"] == pytest.approx(0.209, rel=1e-9)
    assert selection.best.r2 == pytest.approx(1.0)


def test_exponential_is_the_leaky_integrator():
    # f(t) = q f(t-1) + (1 - q) A with q = exp(-k): the tripartite model's derived form
    fit = fit_family("exponential", _curve("exponential"))
    A, q = fit.params["A"], math.exp(-fit.params["k"])
    f = [0.0]
    for _ in T:
        f.append(q * f[-1] + (1 - q) * A)
    np.testing.assert_allclose(fit.predict(np.arange(0, T.size + 1)), f, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("family", list(TRUE))
def test_predict_increments_and_rate(family):
    fit = fit_family(family, _curve(family))
    t = np.arange(0, 41, dtype=float)
    f = fit.predict(t)
    assert f[0] == 0.0 and np.all(np.diff(f) > 0) and f[-1] < fit.amplitude
    np.testing.assert_allclose(np.cumsum(fit.increments(40)), f[1:], rtol=1e-10)
    # k_1/2 = ln 2 / t_1/2 is the rate at which f reaches half its plateau; = k for the exponential
    assert fit.predict(math.log(2) / fit.rate_k) == pytest.approx(fit.amplitude / 2, rel=1e-6)
    json.dumps(fit.as_dict())  # provenance must serialise


def test_late_increments_stay_exact_on_the_plateau():
    # A - f(t) is used, so dp_t keeps full relative precision where f(t) == A in float64
    fit = fit_family("exponential", 0.6 * (1 - np.exp(-0.5 * T)))
    A, k = fit.params["A"], fit.params["k"]
    dp = fit.increments(200)
    t = np.arange(1, 201)
    np.testing.assert_allclose(dp, A * np.exp(-k * (t - 1)) * (1 - np.exp(-k)), rtol=1e-9)
    assert np.all(dp > 0)


def test_too_few_points_skips_with_reason():
    selection = fit_macro_model(_curve("exponential", t=T[:4]))
    assert selection.best.family == "exponential"
    assert set(selection.skipped) == {"stretched_exponential", "hill", "logistic"}
    assert "needs at least 5 points, got 4" in selection.skipped["hill"]
    with pytest.raises(RetentionTableError, match="needs at least 4 points"):
        fit_family("exponential", [0.1, 0.2])


@pytest.mark.parametrize(
    "y, message",
    [
        ([0.1, np.nan, 0.3, 0.35, 0.4], "NaN"),
        ([0.0] * 8, "never rises above 0"),
        ([], "empty"),
    ],
)
def test_bad_curves_raise(y, message):
    with pytest.raises(RetentionTableError, match=message):
        fit_macro_model(y)


def test_unknown_family():
    with pytest.raises(RetentionTableError, match="unknown macro-model family gompertz; choose from exponential"):
        fit_macro_model(_curve("exponential"), families=("gompertz",))
