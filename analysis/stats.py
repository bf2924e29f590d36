"""Statistics the pages report: paired bootstrap confidence intervals, McNemar's test, the paired t-test,
Holm's adjustment. numpy only; McNemar's test, Holm's adjustment and the verdict live in
compute.significance, so that the summary a run prints marks what the pages mark (scipy and statsmodels
check them all in the tests).

One significance rule for every page, chart, count and export (``RULE``): a change against baseline is
significant when its Holm-adjusted p-value, over the run's ablations, is below ALPHA. The p-value of a
change in accuracy comes from McNemar's paired test; that of a change in a score (the selected prompt's, the
generated caption's) from the paired t-test on the per-image differences. Intervals are 95% percentile
intervals of a paired bootstrap over images; they describe, the rule decides.

Why a t-test and not the bootstrap for the verdict: a verdict shown as a fact must not depend on a random
seed. The bootstrap's p-value (the change over its standard error across 1,000 resamples, normal
approximation) is the same statistic as the t-test's with a Monte-Carlo standard error in place of the
exact one, and that error (about 2% of the standard error at 1,000 resamples) was enough to move a Holm p
from 0.026 to 0.107 over seeds on the demo (demo-heads, knockout:1/patches>patches, selected-prompt score):
the mark was a coin flip. The t-test is deterministic and, for a mean difference over hundreds of paired
images, its Student t reference is accurate (the central limit theorem: the differences are bounded
cosines, so heavy tails cannot spoil it). The Wilcoxon signed-rank test would answer another question: it
drops the zero differences (every image whose pick did not change) and tests a pseudo-median, not the mean
the tables report. More resamples would only shrink the Monte-Carlo error (as one over the square root of
their number), never remove it: a change near the threshold would still be decided by the seed.
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


def paired_t(differences: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the paired t-test of each column's mean difference against zero.

    differences: (n, k) per-image changes (ablation minus baseline), NaN where a pair is missing (each column
    uses the values present). -> (k,) p-values: NaN with fewer than 2 values; when every difference is the
    same (no spread), 1.0 if it is 0 and 0.0 otherwise. Equals scipy.stats.ttest_rel on the pairs present.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    out = np.full(d.shape[1], np.nan)
    for j in range(d.shape[1]):
        x = d[~np.isnan(d[:, j]), j]
        n = x.size
        if n < 2:
            continue
        mean = float(x.mean())
        sd = float(x.std(ddof=1))
        if sd == 0 or sd <= 1e-13 * abs(mean):  # no spread: the same change for every image
            out[j] = 1.0 if mean == 0 else 0.0
            continue
        out[j] = student_t_sf2(mean / (sd / math.sqrt(n)), n - 1)
    return out


def student_t_sf2(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: the regularised incomplete beta
    I_x(df/2, 1/2) at x = df / (df + t^2)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, _betainc(df / 2, 0.5, df / (df + t * t)))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz),
    taken on the side where it converges fast (Numerical Recipes, betai); relative error near 1e-15."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, steps: int = 10_000, eps: float = 1e-16) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, steps + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def holm(pvalues: np.ndarray) -> np.ndarray:
    """compute.significance.holm as an array: Holm-adjusted p-values, NaN where a test could not be made."""
    return np.asarray(_holm(np.asarray(pvalues, dtype=np.float64).ravel()), dtype=np.float64).reshape(np.shape(pvalues))


RULE = ("Significant: Holm-adjusted p < 0.05 over the run's ablations; McNemar's paired test for accuracy, "
        "the paired t-test over images for the scores. Intervals: 95% bootstrap percentile intervals "
        "(1,000 resamples), paired on images for changes.")


def format_p(p: float) -> str:
    """A p-value as people read it: three significant digits, or a bound when tiny."""
    if p is None or math.isnan(p):
        return "—"
    if p < 0.001:
        return "< 0.001"
    if p >= 0.1:
        return f"{p:.2f}"
    return f"{p:.3f}"
