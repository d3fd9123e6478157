"""Macro model: a closed-form saturating curve f(t) fitted to the simulated LTP trace.

The simulator returns the LTP variable at the end of each segment, y_t for t = 1..n.  The
retention factors are built from the increments of a *smooth* f(t) fitted to those points
(see ``retention.factors``), so this module fits several saturating families, all with
f(0) = 0 and f(t) -> A as t -> infinity, and selects one:

==========================  ==========================================  =================
family                      f(t)                                        parameters
==========================  ==========================================  =================
``exponential``             A (1 - exp(-k t))                           A, k
``stretched_exponential``   A (1 - exp(-(k t)^beta))                    A, k, beta
``hill``                    A t^n / (K^n + t^n)                         A, K, n
``logistic``                A (1 - exp(-r t)) / (1 + exp(-r (t - t0)))  A, r, t0
==========================  ==========================================  =================

The exponential is also the *derived* form for the tripartite model: one gliotransmitter
release per segment moves Gamma_S a fixed fraction of the way to its ceiling and Gamma_S
decays by exp(-Omega_G T_period) in between, i.e. the leaky integrator
f(t) = q f(t-1) + (1 - q) A with constant per-segment retention q = exp(-k)
(SPEC section 2: k = Omega_G T_period - ln(1 - a)).  Its solution with f(0) = 0 is exactly
A (1 - q^t).

The logistic is the ordinary logistic 1 / (1 + exp(-r (t - t0))) shifted and rescaled so
that f(0) = 0 and f(inf) = A; after simplification it is the form in the table above
(numerically stable: no difference of two nearly equal sigmoids).  It contains the
exponential as the limit t0 -> -inf and is sigmoidal for t0 > 0.

**Selection criterion: BIC** (Schwarz 1978) for Gaussian residuals,
``BIC = n ln(RSS / n) + p ln(n)``, with p the number of curve parameters (the noise
variance, common to all families, is left out because it cancels in comparisons).  The
family with the lowest BIC wins.  RSS is floored at ``n (1e-10 max|y|)^2`` so that curves a
family reproduces to rounding error (an exact exponential) compare by their parameter
count instead of by log(0).  A family needs at least p + 2 points (two residual degrees of
freedom, so that the noise variance, the covariance and BIC are defined); with fewer it
is skipped and the reason recorded, as it is when the optimiser fails.

Parameter standard errors are the square roots of the diagonal of ``curve_fit``'s
covariance, scaled by the residual variance (``absolute_sigma=False``): the simulator
gives no per-point noise level.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit

from retention.errors import RetentionTableError

#: Relative floor on the residual scale used in BIC (see the module docstring).
RSS_RELATIVE_FLOOR = 1e-10


@dataclass(frozen=True)
class Family:
    """One candidate family: ``curve(t, *params)`` and its complement ``A - curve``.

    ``remaining(t, *params) = A - f(t)`` is kept separately because increments late on the
    plateau, f(t) - f(t-1) = remaining(t-1) - remaining(t), lose all precision when computed
    as a difference of two values close to A.
    """

    name: str
    formula: str
    param_names: tuple[str, ...]
    curve: Callable[..., np.ndarray]
    remaining: Callable[..., np.ndarray]
    # (t, y) -> list of starting points; the best fit over all starts is kept
    starts: Callable[[np.ndarray, np.ndarray], list[tuple[float, ...]]]
    # (t, y) -> (lower, upper) bounds
    bounds: Callable[[np.ndarray, np.ndarray], tuple[tuple[float, ...], tuple[float, ...]]]

    @property
    def n_params(self) -> int:
        return len(self.param_names)


# ----------------------------------------------------------------------------- families


def _exp_curve(t, A, k):
    return A * -np.expm1(-k * t)


def _exp_remaining(t, A, k):
    return A * np.exp(-k * t)


def _stretched_curve(t, A, k, beta):
    return A * -np.expm1(-np.power(k * t, beta))


def _stretched_remaining(t, A, k, beta):
    return A * np.exp(-np.power(k * t, beta))


def _hill_curve(t, A, K, n):
    # t^n / (K^n + t^n) = 1 / (1 + (K/t)^n), written to avoid overflow of t^n
    with np.errstate(divide="ignore"):
        return A / (1.0 + np.power(K / np.asarray(t, dtype=float), n))


def _hill_remaining(t, A, K, n):
    with np.errstate(divide="ignore"):
        return A / (1.0 + np.power(np.asarray(t, dtype=float) / K, n))


def _logistic_curve(t, A, r, t0):
    with np.errstate(over="ignore"):
        return A * -np.expm1(-r * t) / (1.0 + np.exp(-r * (t - t0)))


def _logistic_remaining(t, A, r, t0):
    # A - f = A exp(-r t) (1 + exp(r t0)) / (1 + exp(r (t0 - t))), in logs: no overflow for r t0 >> 1
    t = np.asarray(t, dtype=float)
    return A * np.exp(-r * t + np.logaddexp(0.0, r * t0) - np.logaddexp(0.0, r * (t0 - t)))


def _half_time(t: np.ndarray, y: np.ndarray) -> float:
    """First t at which y reaches half its maximum (a scale-free rate guess)."""
    idx = int(np.argmax(y >= 0.5 * y.max()))
    return float(max(t[idx], 0.5))


def _amp_guesses(y: np.ndarray) -> list[float]:
    top = float(y.max())
    return [1.05 * top, 1.5 * top]


def _exp_starts(t, y):
    k0 = math.log(2.0) / _half_time(t, y)
    return [(A, k) for A in _amp_guesses(y) for k in (k0, 0.3 * k0)]


def _stretched_starts(t, y):
    k0 = math.log(2.0) / _half_time(t, y)
    return [(A, k0, beta) for A in _amp_guesses(y) for beta in (0.6, 1.0, 1.6)]


def _hill_starts(t, y):
    K0 = _half_time(t, y)
    return [(A, K0, n) for A in _amp_guesses(y) for n in (0.8, 1.5, 3.0)]


def _logistic_starts(t, y):
    th = _half_time(t, y)
    r0 = 4.0 / max(float(t.max()), 1.0)
    return [(A, r, t0) for A in _amp_guesses(y) for r, t0 in ((r0, th), (2.0 * r0, 0.5 * th), (r0, -th))]


def _amp_bounds(y: np.ndarray) -> tuple[float, float]:
    # A below the largest observation cannot fit a non-decreasing curve; 1e3 x keeps the
    # unsaturated (nearly linear) regime representable without letting A run to infinity.
    top = float(np.abs(y).max())
    return 0.5 * top, 1e3 * top


def _exp_bounds(t, y):
    lo, hi = _amp_bounds(y)
    return (lo, 1e-9), (hi, 50.0)


def _stretched_bounds(t, y):
    lo, hi = _amp_bounds(y)
    return (lo, 1e-9, 0.05), (hi, 50.0, 10.0)


def _hill_bounds(t, y):
    lo, hi = _amp_bounds(y)
    tmax = float(t.max())
    return (lo, 1e-6, 0.05), (hi, 1e4 * tmax, 20.0)


def _logistic_bounds(t, y):
    lo, hi = _amp_bounds(y)
    tmax = float(t.max())
    return (lo, 1e-9, -10.0 * tmax), (hi, 50.0, 10.0 * tmax)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("exponential", "A*(1-exp(-k*t))", ("A", "k"), _exp_curve, _exp_remaining,
               _exp_starts, _exp_bounds),
        Family("stretched_exponential", "A*(1-exp(-(k*t)**beta))", ("A", "k", "beta"),
               _stretched_curve, _stretched_remaining, _stretched_starts, _stretched_bounds),
        Family("hill", "A*t**n/(K**n+t**n)", ("A", "K", "n"), _hill_curve, _hill_remaining,
               _hill_starts, _hill_bounds),
        Family("logistic", "A*(1-exp(-r*t))/(1+exp(-r*(t-t0)))", ("A", "r", "t0"),
               _logistic_curve, _logistic_remaining, _logistic_starts, _logistic_bounds),
    )
}

#: Families tried by default, in the order they are reported.
DEFAULT_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FitResult:
    """One family fitted to one curve.

    ``params`` and ``stderr`` map parameter name -> value; ``t`` is in segments.
    """

    family: str
    params: dict[str, float]
    stderr: dict[str, float]
    rss: float
    r2: float
    bic: float
    n_points: int

    @property
    def formula(self) -> str:
        return FAMILIES[self.family].formula

    def _args(self) -> tuple[float, ...]:
        return tuple(self.params[name] for name in FAMILIES[self.family].param_names)

    def predict(self, t: ArrayLike) -> np.ndarray:
        """f(t) for segment index (or continuous time in segments) ``t``; f(0) = 0."""
        return FAMILIES[self.family].curve(np.asarray(t, dtype=float), *self._args())

    def increments(self, n: int) -> np.ndarray:
        """dp_t = f(t) - f(t-1) for t = 1..n, computed from A - f so late increments stay exact."""
        t = np.arange(n + 1, dtype=float)
        rem = FAMILIES[self.family].remaining(t, *self._args())  # (n+1,)
        return rem[:-1] - rem[1:]

    @property
    def amplitude(self) -> float:
        """Saturation level A = f(inf)."""
        return self.params["A"]

    @property
    def rate_k(self) -> float:
        """Half-saturation rate k_1/2 = ln 2 / t_1/2 (per segment), where f(t_1/2) = A/2.

        One rate comparable across families; for the exponential it *is* k.
        """
        p = self.params
        if self.family == "exponential":
            return p["k"]
        if self.family == "stretched_exponential":
            return math.log(2.0) * p["k"] / math.log(2.0) ** (1.0 / p["beta"])
        if self.family == "hill":
            return math.log(2.0) / p["K"]
        # logistic: (1 - e^{-r t}) / (1 + e^{-r (t - t0)}) = 1/2, solved by bisection
        lo, hi = 0.0, 1.0
        while self.predict(hi) < 0.5 * p["A"]:
            hi *= 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.predict(mid) < 0.5 * p["A"] else (lo, mid)
        return math.log(2.0) / (0.5 * (lo + hi))

    def as_dict(self) -> dict:
        """JSON-serialisable summary (for table provenance)."""
        return {
            "family": self.family,
            "formula": self.formula,
            "params": dict(self.params),
            "stderr": dict(self.stderr),
            "rss": self.rss,
            "r2": self.r2,
            "bic": self.bic,
            "n_points": self.n_points,
            "rate_k_half": self.rate_k,
        }


@dataclass(frozen=True)
class ModelSelection:
    """Every family's fit to one curve, the BIC winner and why other families were skipped."""

    best: FitResult
    fits: dict[str, FitResult]
    skipped: dict[str, str] = field(default_factory=dict)
    criterion: str = "BIC = n*ln(RSS/n) + p*ln(n); lowest wins"

    def ranking(self) -> list[FitResult]:
        """Fitted families from best to worst BIC."""
        return sorted(self.fits.values(), key=lambda f: f.bic)

    def as_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "selected": self.best.family,
            "candidates": {name: fit.as_dict() for name, fit in self.fits.items()},
            "skipped": dict(self.skipped),
        }


# ----------------------------------------------------------------------------- fitting


def _validate_curve(t: np.ndarray, y: np.ndarray) -> None:
    if y.ndim != 1 or t.shape != y.shape:
        raise RetentionTableError(
            f"the LTP curve must be 1-D with one time per point, got shapes {y.shape} and {t.shape}"
        )
    if y.size == 0 or not np.all(np.isfinite(y)) or not np.all(np.isfinite(t)):
        raise RetentionTableError(
            "the LTP curve is empty or contains NaN/inf; check the simulation output (ltp_end)"
        )
    if np.any(t <= 0):
        raise RetentionTableError("segment times must be > 0 (f(0) = 0 is built into every family)")
    if float(y.max()) <= 0.0:
        raise RetentionTableError(
            "the LTP curve never rises above 0 (no plasticity): nothing to fit; check the "
            "protocol stimulates and the LTP coupling is non-zero"
        )


def _bic(rss: float, n: int, p: int, scale: float) -> float:
    floor = n * (RSS_RELATIVE_FLOOR * scale) ** 2
    return n * math.log(max(rss, floor) / n) + p * math.log(n)


def fit_family(name: str, y: ArrayLike, t: ArrayLike | None = None) -> FitResult:
    """Fit family ``name`` to the curve ``y`` at segment times ``t`` (default 1..n).

    Tries a few starting points (the fits are small) and keeps the lowest RSS.  Raises
    ``RetentionTableError`` for an unknown family, too few points or a failed fit.
    """
    if name not in FAMILIES:
        raise RetentionTableError(
            f"unknown macro-model family {name!r}; choose from {', '.join(FAMILIES)}"
        )
    family = FAMILIES[name]
    y = np.asarray(y, dtype=float)
    t = np.arange(1, y.size + 1, dtype=float) if t is None else np.asarray(t, dtype=float)
    _validate_curve(t, y)
    n, p = y.size, family.n_params
    if n < p + 2:
        raise RetentionTableError(
            f"{name} has {p} parameters and needs at least {p + 2} points, got {n}"
        )
    lower, upper = family.bounds(t, y)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    last_error = "no start converged"
    for start in family.starts(t, y):
        x0 = np.clip(np.asarray(start, dtype=float), lower, upper)
        try:
            with warnings.catch_warnings():
                # a parameter pinned at a bound gives an infinite variance: reported as inf
                warnings.simplefilter("ignore", OptimizeWarning)
                with np.errstate(all="ignore"):
                    popt, pcov = curve_fit(
                        family.curve, t, y, p0=x0, bounds=(lower, upper), method="trf",
                        max_nfev=20000, x_scale="jac",
                    )
        except (RuntimeError, ValueError) as error:
            last_error = str(error).splitlines()[0]
            continue
        rss = float(np.sum((family.curve(t, *popt) - y) ** 2))
        if np.isfinite(rss) and (best is None or rss < best[0]):
            best = (rss, popt, pcov)
    if best is None:
        raise RetentionTableError(f"fitting {name} failed: {last_error}")
    rss, popt, pcov = best
    variances = np.diag(pcov) if np.all(np.isfinite(pcov)) else np.full(p, np.inf)
    stderr = np.sqrt(np.where(variances >= 0, variances, np.inf))
    tss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - rss / tss if tss > 0 else float("nan")
    scale = float(np.abs(y).max())
    return FitResult(
        family=name,
        params={k: float(v) for k, v in zip(family.param_names, popt)},
        stderr={k: float(v) for k, v in zip(family.param_names, stderr)},
        rss=rss,
        r2=float(r2),
        bic=_bic(rss, n, p, scale),
        n_points=n,
    )


def fit_macro_model(
    y: ArrayLike,
    t: ArrayLike | None = None,
    families: Sequence[str] = DEFAULT_FAMILIES,
) -> ModelSelection:
    """Fit every family in ``families`` to ``y`` (values at t = 1..n by default); pick by BIC.

    Families that cannot be fitted (too few points, optimiser failure) are listed in
    ``ModelSelection.skipped`` with the reason; if none can, ``RetentionTableError``.
    """
    y = np.asarray(y, dtype=float)
    t = np.arange(1, y.size + 1, dtype=float) if t is None else np.asarray(t, dtype=float)
    _validate_curve(t, y)
    unknown = [name for name in families if name not in FAMILIES]
    if unknown or not families:
        raise RetentionTableError(
            f"unknown macro-model family {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(FAMILIES)}"
        )
    fits: dict[str, FitResult] = {}
    skipped: dict[str, str] = {}
    for name in families:
        try:
            fits[name] = fit_family(name, y, t)
        except RetentionTableError as error:
            skipped[name] = str(error)
    if not fits:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise RetentionTableError(f"no macro-model family could be fitted ({reasons})")
    best = min(fits.values(), key=lambda f: f.bic)
    return ModelSelection(best=best, fits=fits, skipped=skipped)
