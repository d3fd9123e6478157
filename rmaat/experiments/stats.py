"""Summary statistics of an experiment's runs: mean, standard deviation and a 95% confidence
interval of the mean (Student's t, from scipy.stats), per grid point.

A metric has a range (an accuracy lies in [0, 1], bits per byte and losses are >= 0), and with
three seeds far apart a t-interval leaves it: (0.80, 0.18, 0.17) gives [-0.524, 1.289]. The
interval is therefore clipped to the metric's range (:data:`METRIC_RANGES`); results.md says so.
Clipping keeps the t-interval's coverage where it is inside the range and says no more than the
range itself where it is not (a small-n interval that wide is the honest answer: inconclusive)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The range of each metric the experiments report (a 95% interval is clipped to it).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "test_accuracy": (0.0, 1.0), "val_accuracy": (0.0, 1.0), "final_val_accuracy": (0.0, 1.0),
    "test_bpb": (0.0, math.inf), "val_bpb": (0.0, math.inf), "final_val_bpb": (0.0, math.inf),
    "test_loss": (0.0, math.inf), "val_loss": (0.0, math.inf),
}


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


def summarise(values: Sequence[float], confidence: float = 0.95,
              bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """Summary of ``values``; with one value the spread and interval are NaN. The interval is
    clipped to ``bounds`` (the metric's range, :data:`METRIC_RANGES`)."""
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
    return Summary(mean, std, int(x.size), max(float(low), bounds[0]), min(float(high), bounds[1]))
