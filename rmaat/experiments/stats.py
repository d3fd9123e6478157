"""Summary statistics of an experiment's runs: mean, standard deviation and a 95% confidence
interval of the mean (Student's t, from scipy.stats), per grid point."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1), n and the 95% t-interval of the mean."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    def overlaps(self, other: "Summary") -> bool:
        """The two 95% intervals overlap (a difference is then called inconclusive)."""
        return not (self.ci_high < other.ci_low or other.ci_high < self.ci_low)


def summarise(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of ``values``; with one value the spread and interval are NaN."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    mean = float(x.mean())
    if x.size == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(mean, 0.0, int(x.size), mean, mean)
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=std / math.sqrt(x.size))
    return Summary(mean, std, int(x.size), float(low), float(high))
