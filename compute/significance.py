"""The significance rule's tests, numpy-free and dependency-free: McNemar's paired test, Holm's adjustment
and the verdict. Here, in the compute stage, so the summary a run prints marks what the dashboard marks
(compute never imports the read library); ``analysis.stats`` builds the rest of the rule (the bootstrap, its
p-value, the wording) on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05  # family-wise error rate of the Holm-adjusted tests
# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25


def mcnemar(only_first: int, only_second: int) -> tuple[float, float, str]:
    """McNemar's test of paired correctness. -> (statistic, two-sided p, method).

    only_first: pairs right under the first condition only (b); only_second: right under the second only
    (c). Exact binomial test below EXACT_BELOW discordant pairs (statistic = min(b, c)), otherwise the
    chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), on one degree of freedom.
    """
    b, c = int(only_first), int(only_second)
    n = b + c
    if n == 0:
        return 0.0, 1.0, "none discordant"
    if n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return float(k), min(1.0, 2 * tail), "exact binomial"
    chi2 = (abs(b - c) - 1) ** 2 / n
    return chi2, math.erfc(math.sqrt(chi2 / 2)), "chi-square (continuity corrected)"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a set of p-values (controls the family-wise error rate over the set).
    NaN (a test that could not be made yet) stays NaN and is not counted in the set."""
    p = [float(x) for x in pvalues]
    present = [k for k, x in enumerate(p) if not math.isnan(x)]
    order = sorted(present, key=lambda k: p[k])  # stable: ties keep their order
    adjusted = [math.nan] * len(p)
    m, running = len(order), 0.0
    for rank, k in enumerate(order):
        running = max(running, (m - rank) * p[k])
        adjusted[k] = min(1.0, running)
    return adjusted


def verdict(change: float | None, p_holm: float | None, alpha: float = ALPHA) -> int:
    """-1 significantly lower, +1 significantly higher, 0 not significant (or not tested)."""
    if p_holm is None or math.isnan(p_holm) or p_holm >= alpha or change is None or math.isnan(change):
        return 0
    return -1 if change < 0 else (1 if change > 0 else 0)
