"""Statistics the pages report: paired bootstrap confidence intervals, McNemar's test, Holm's adjustment.
numpy only (the tests themselves: compute.significance).

One significance rule for every page, chart, count and export (``significance``): a change against
baseline is significant when its Holm-adjusted p-value, over the run's ablations, is below ALPHA. The
p-value of a change in accuracy comes from McNemar's paired test; that of a change in a score from the
paired bootstrap (its standard error over resamples, normal approximation). Intervals are 95%
percentile intervals of the same resamples; they describe, the rule decides.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

# McNemar's test, Holm's adjustment and the verdict live in the compute stage (its summary marks what the pages
# mark); they are part of this module's interface.
from compute.significance import ALPHA, EXACT_BELOW, mcnemar, verdict  # noqa: F401
from compute.significance import holm as _holm

N_BOOT = 1000
SEED = 0


@functools.lru_cache(maxsize=8)  # pages redraw the same slice often; the draws depend on n only
def resample_weights(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``n_boot`` resamples with replacement.

    -> (n_boot, n) float32. A mean over a resample is then one row of a matrix product, so every column
    of a (n, k) matrix is resampled with the same draws: that is what makes differences paired.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n), dtype=np.int32)  # (n_boot, n) item indices
    offsets = (np.arange(n_boot, dtype=np.int64) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n)
    weights = counts.reshape(n_boot, n).astype(np.float32)
    weights.flags.writeable = False  # shared through the cache
    return weights


def bootstrap_means(values: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile confidence interval of each column of ``values``, resampling rows (images).

    values: (n, k), NaN where a row has no value for a column (a pair not computed yet, no caption):
    each resample averages the values present. Returns (mean, low, high), each (k,); NaN for an empty
    column.
    """
    mean, low, high, _ = bootstrap(values, n_boot, seed, level)
    return mean, low, high


def bootstrap(values: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``bootstrap_means`` and the bootstrap standard error of each column's mean: (mean, low, high, se)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, k = values.shape
    present = ~np.isnan(values)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), np.nan)
    if n == 0:
        return mean, mean.copy(), mean.copy(), mean.copy()
    # float32 products: three times faster than float64, and exact for the counts and 0/1 accuracies
    w = resample_weights(n, n_boot, seed)  # (n_boot, n)
    sums = (w @ np.where(present, values, 0.0).astype(np.float32)).astype(np.float64)  # (n_boot, k)
    counts = np.full_like(sums, n)  # every resample holds n draws: the count wherever nothing is missing
    gaps = ~present.all(axis=0)
    if gaps.any():
        counts[:, gaps] = w @ present[:, gaps].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = sums / counts  # NaN where a resample drew no value of that column
    alpha = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column without values: NaN, said by count
        se = np.nanstd(boot, axis=0, ddof=1)
    return mean, _column_quantile(boot, alpha), _column_quantile(boot, 1 - alpha), se


def _column_quantile(x: np.ndarray, q: float) -> np.ndarray:
    """np.nanquantile(x, q, axis=0) with linear interpolation, vectorised (nanquantile loops per column)."""
    ordered = np.sort(x, axis=0)  # NaN sort last
    count = (~np.isnan(x)).sum(axis=0)
    pos = q * np.maximum(count - 1, 0)
    below = np.floor(pos).astype(int)
    above = np.ceil(pos).astype(int)
    cols = np.arange(x.shape[1])
    frac = pos - below
    value = ordered[below, cols] * (1 - frac) + ordered[above, cols] * frac
    return np.where(count > 0, value, np.nan)


def bootstrap_p(mean: float, se: float) -> float:
    """Two-sided p-value of a paired change ``mean`` with bootstrap standard error ``se`` (normal
    approximation): how often a change this large would appear if the true change were zero."""
    if mean is None or se is None or math.isnan(mean) or math.isnan(se):
        return math.nan
    if se == 0:  # every resample gives the same change: exactly zero, or the same shift for every image
        return 1.0 if mean == 0 else 0.0
    return math.erfc(abs(mean / se) / math.sqrt(2))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """compute.significance.holm as an array: Holm-adjusted p-values, NaN where a test could not be made."""
    return np.asarray(_holm(np.asarray(pvalues, dtype=np.float64).ravel()), dtype=np.float64).reshape(np.shape(pvalues))


RULE = ("Significant: Holm-adjusted p < 0.05 over the run's ablations; McNemar's paired test for accuracy, "
        "a paired bootstrap over images (1,000 resamples) for the scores. Intervals: 95% bootstrap "
        "percentile intervals, paired on images for changes.")


def format_p(p: float) -> str:
    """A p-value as people read it: three significant digits, or a bound when tiny."""
    if p is None or math.isnan(p):
        return "—"
    if p < 0.001:
        return "< 0.001"
    if p >= 0.1:
        return f"{p:.2f}"
    return f"{p:.3f}"
