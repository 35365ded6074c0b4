"""Bootstrap confidence intervals for per-item scores (images, slots)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` items with its percentile-bootstrap interval [lo, hi]; `n` 0: nothing to measure."""

    mean: float
    lo: float
    hi: float
    n: int

    def format(self, digits: int = 2) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


NOT_MEASURED = Estimate(math.nan, math.nan, math.nan, 0)


def bootstrap(values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of `values` (NaN entries are items the metric does not apply to and are dropped) with the
    percentile bootstrap interval at `level`, from `resamples` resamples of a generator seeded by `seed`
    (the same scores always give the same interval)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return NOT_MEASURED
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(x.mean()), float(lo), float(hi), int(x.size))


def bootstrap_runs(strata: Sequence[Sequence[Sequence[float]]], resamples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> Estimate:
    """Two-level bootstrap over training runs and the items (images) of each run.

    `strata[s][r]` holds the per-item values of training run r of stratum s (e.g. one confusable pair trained
    with several seeds). Each resample draws, within every stratum, as many runs as it has with replacement,
    then within every drawn run as many items as it has with replacement, and takes the mean of all drawn
    items; the interval is the percentile interval of those means at `level`. NaN items are dropped, and so
    are runs left empty. With one run per stratum this is the plain bootstrap over items. The estimate is
    the mean over all items; `n` counts items."""
    runs = [[np.asarray([v for v in run if v is not None and not math.isnan(v)], dtype=np.float64) for run in stratum]
            for stratum in strata]
    runs = [[r for r in stratum if r.size] for stratum in runs]
    runs = [stratum for stratum in runs if stratum]
    if not runs:
        return NOT_MEASURED
    everything = np.concatenate([r for stratum in runs for r in stratum])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):
        total, count = 0.0, 0
        for stratum in runs:
            for k in rng.integers(0, len(stratum), size=len(stratum)):
                run = stratum[k]
                total += run[rng.integers(0, run.size, size=run.size)].sum()
                count += run.size
        means[i] = total / count
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(everything.mean()), float(lo), float(hi), int(everything.size))
