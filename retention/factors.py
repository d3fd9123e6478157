"""Retention factors from the per-segment increments of the LTP curve (SPEC section 2).

With f(t) the LTP level at the end of segment t and f(0) = 0:

    dp_t     = f(t) - f(t-1)                  increment written during segment t, t = 1..T
    RF(t, T) = dp_t / sum_{i=1..T} dp_i       the paper's factor (Appendix D), sum_t RF = 1
    r_t      = dp_t / dp_1                    EXTENSION, not in the paper: T-free streaming factor

RF needs the total segment count T in advance (the paper's open question 3).  The streaming
factor r_t does not: it is the share of a fresh episode's gain that segment t can still
write (for the exponential macro model r_t = exp(-k (t-1)) = remaining capacity
1 - f(t-1)/A), so r_1 = 1 and the factors need not sum to 1.

The factors are computed from the fitted macro model f(t), not from the raw simulated
points, because the raw increments carry the simulator's event-timing noise (a Ca2+ event
a few ms earlier or later, a segment with a weaker release): differencing amplifies it,
the normalisation by sum dp spreads it to every factor, and at late t, where dp_t is
small, the relative noise is large enough to make RF non-monotone.  The smooth fit gives
factors that fall monotonically as the biology says they should, and whose provenance is
a handful of parameters with standard errors.

Both factors require positive, non-increasing increments (a saturating curve that
integrates with constant or decreasing efficiency); anything else raises
``RetentionTableError`` naming the offending segment.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from retention.errors import RetentionTableError

#: Factor variants: the paper's normalised factor and the T-free streaming extension.
VARIANTS: tuple[str, ...] = ("paper", "streaming")

#: Relative slack when checking that increments do not increase (rounding in f(t) - f(t-1)).
MONOTONE_RTOL = 1e-9


def increments(f: ArrayLike) -> np.ndarray:
    """dp_t = f(t) - f(t-1) for t = 1..T, given f at t = 1..T (f(0) = 0 is implied)."""
    f = np.asarray(f, dtype=float)
    if f.ndim != 1 or f.size == 0:
        raise RetentionTableError(f"f must be a non-empty 1-D curve, got shape {f.shape}")
    return np.diff(f, prepend=0.0)  # (T,)


def validate_increments(dp: ArrayLike) -> np.ndarray:
    """Return ``dp`` as float64 if every increment is finite, positive and non-increasing."""
    dp = np.asarray(dp, dtype=float)
    if dp.ndim != 1 or dp.size == 0:
        raise RetentionTableError(f"increments must be a non-empty 1-D array, got shape {dp.shape}")
    bad = np.flatnonzero(~np.isfinite(dp) | (dp <= 0.0))
    if bad.size:
        t = int(bad[0]) + 1
        raise RetentionTableError(
            f"increment dp_{t} = {dp[t - 1]:.3g} is not positive: the LTP curve must rise in "
            "every segment; use a macro model that saturates more slowly or fewer segments"
        )
    rising = np.flatnonzero(dp[1:] > dp[:-1] * (1.0 + MONOTONE_RTOL))
    if rising.size:
        t = int(rising[0]) + 2
        raise RetentionTableError(
            f"increments rise at segment {t} (dp_{t} = {dp[t - 1]:.3g} > dp_{t - 1} = "
            f"{dp[t - 2]:.3g}): the selected macro model is sigmoidal, so the factors would not "
            "fall with t; choose a saturating family, e.g. `--family exponential`"
        )
    return dp


def _check_total(dp: np.ndarray, total_segments: int) -> int:
    if isinstance(total_segments, bool) or not isinstance(total_segments, (int, np.integer)):
        raise RetentionTableError(f"total_segments must be an integer, got {total_segments!r}")
    if not 1 <= total_segments <= dp.size:
        raise RetentionTableError(
            f"total_segments = {total_segments} needs increments for 1..{total_segments}, "
            f"but only {dp.size} are available"
        )
    return int(total_segments)


def paper_factors(dp: ArrayLike, total_segments: int) -> np.ndarray:
    """RF(t, T) = dp_t / sum_{i<=T} dp_i for t = 1..T (the paper's factor; sums to 1)."""
    dp = validate_increments(dp)
    T = _check_total(dp, total_segments)
    head = dp[:T]  # (T,)
    return head / head.sum()


def streaming_factors(dp: ArrayLike, total_segments: int) -> np.ndarray:
    """EXTENSION (not in the paper): r_t = dp_t / dp_1 for t = 1..T; independent of T."""
    dp = validate_increments(dp)
    T = _check_total(dp, total_segments)
    return dp[:T] / dp[0]


def factor_matrix(
    dp: ArrayLike, total_segments: Sequence[int], n_segments: int | None = None,
    variant: str = "paper",
) -> np.ndarray:
    """Factors for each T in ``total_segments`` as rows of a (len(total_segments), S) array.

    S = ``n_segments`` (default max(total_segments)); entries with t > T are NaN, the
    table's layout.
    """
    if variant not in VARIANTS:
        raise RetentionTableError(f"unknown factor variant {variant!r}; choose from {', '.join(VARIANTS)}")
    rows = [int(T) for T in total_segments]
    width = max(rows) if n_segments is None else int(n_segments)
    if width < max(rows):
        raise RetentionTableError(f"n_segments = {width} is smaller than the largest T = {max(rows)}")
    compute = paper_factors if variant == "paper" else streaming_factors
    out = np.full((len(rows), width), np.nan)  # (n_T, S)
    for i, T in enumerate(rows):
        out[i, :T] = compute(dp, T)
    return out
