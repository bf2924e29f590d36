"""The dashboard's pure parts on small inputs: bootstrap intervals, McNemar, Holm, filter slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import slices, stats


def test_bootstrap_interval_covers_the_mean_and_pairs_the_change():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.7).astype(float)
    b = np.where(rng.random(400) < 0.9, a, 1 - a)  # mostly the same images right
    values = np.stack([a, b, b - a], axis=1)
    mean, low, high = stats.bootstrap_means(values)
    assert np.allclose(mean, values.mean(axis=0))
    assert np.all(low <= mean) and np.all(mean <= high)
    # pairing: the interval of the mean change is far narrower than of an unpaired difference
    unpaired = math.sqrt(a.var() / 400 + b.var() / 400) * 2 * 1.96
    assert high[2] - low[2] < 0.75 * unpaired
    with_gaps = values.copy()
    with_gaps[:100, 1] = np.nan
    assert np.isclose(stats.bootstrap_means(with_gaps)[0][1], b[100:].mean())
    assert np.isnan(stats.bootstrap_means(np.full((5, 1), np.nan))[1][0])


@pytest.mark.parametrize(("b", "c", "p", "method"), [
    (0, 0, 1.0, "none discordant"),
    (3, 10, 0.0923, "exact binomial"),  # 2 * P(X <= 3), X ~ Bin(13, 1/2)
    (0, 6, 0.03125, "exact binomial"),
    (30, 60, 0.00224, "chi-square (continuity corrected)"),
])
def test_mcnemar_exact_below_25_discordant_pairs_chi_square_above(b, c, p, method):
    _, got, used = stats.mcnemar(b, c)
    assert used == method and math.isclose(got, p, rel_tol=2e-3)


def test_holm_and_p_formatting():
    assert np.allclose(stats.holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    assert [stats.format_p(p) for p in (0.5, 0.0342, 0.0004)] == ["0.50", "0.034", "< 0.001"]


def test_slices_say_what_they_select_and_bind_their_values():
    where = slices.ablation(4, "identity:4") & slices.outcome("flip") & slices.true_label("cat") & slices.true_label("")
    assert where.params == (4, "cat")
    assert where.caption == ("ablation identity:4; correctness flips against baseline; images labelled 'cat'; "
                             "any true label")
    assert "?" in where.sql and "cat" not in where.sql
    with pytest.raises(ValueError, match="unknown outcome"):
        slices.outcome("drop table")


# --------------------------------------------------------------------------------------------------
# Against independent, straightforward implementations (scipy and statsmodels when they are installed).


def test_bootstrap_interval_and_standard_error_equal_a_plain_loop_over_the_same_draws():
    rng = np.random.default_rng(3)
    values = np.stack([rng.random(57), (rng.random(57) < 0.4).astype(float)], axis=1)
    values[5, 0] = np.nan  # a missing pair: each resample averages the values it drew
    mean, low, high, se = stats.bootstrap(values, n_boot=300, seed=7)
    draws = np.random.default_rng(7).integers(0, 57, size=(300, 57))  # the draws resample_weights makes
    boot = np.array([[np.nanmean(values[d, k]) for k in range(2)] for d in draws])  # (300, 2), loop by loop
    assert np.allclose(mean, np.nanmean(values, axis=0))
    assert np.allclose(low, np.percentile(boot, 2.5, axis=0), atol=1e-6)
    assert np.allclose(high, np.percentile(boot, 97.5, axis=0), atol=1e-6)
    assert np.allclose(se, boot.std(axis=0, ddof=1), atol=1e-6)


def test_bootstrap_interval_near_scipys_when_installed():
    scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is not installed here")
    values = (np.random.default_rng(4).random(200) < 0.6).astype(float)
    res = scipy_stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    _, low, high, _ = stats.bootstrap(values[:, None], n_boot=4000)
    assert abs(res.confidence_interval.low - low[0]) < 0.01 and abs(res.confidence_interval.high - high[0]) < 0.01


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down procedure as textbooks write it: sort, multiply by (m - rank), carry the maximum."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def test_holm_equals_the_textbook_procedure_and_skips_tests_not_made():
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = list(rng.random(int(rng.integers(1, 30))) ** 3)
        assert np.allclose(stats.holm(np.array(p)), _holm_by_hand(p))
    got = stats.holm(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(got[1]) and np.allclose(got[[0, 2]], _holm_by_hand([0.01, 0.04]))
    multitest = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels is not installed here")
    p = rng.random(12) ** 2
    assert np.allclose(stats.holm(p), multitest.multipletests(p, method="holm")[1])


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 1), (3, 0), (7, 12), (2, 20), (24, 0)])
def test_exact_mcnemar_equals_the_binomial_tail_summed_by_hand(b, c):
    n = b + c
    # two-sided: the probability of a split at least as uneven as (b, c) under Bin(n, 1/2)
    tail = sum(math.comb(n, k) for k in range(n + 1) if abs(k - n / 2) >= abs(b - n / 2)) / 2**n
    assert math.isclose(stats.mcnemar(b, c)[1], min(1.0, tail), rel_tol=1e-12)


def test_mcnemar_against_statsmodels_when_installed():
    contingency = pytest.importorskip("statsmodels.stats.contingency_tables",
                                      reason="statsmodels is not installed here")
    for b, c in [(3, 10), (30, 60), (12, 40), (0, 6)]:
        exact = b + c < stats.EXACT_BELOW
        want = contingency.mcnemar([[5, b], [c, 5]], exact=exact, correction=True).pvalue
        assert math.isclose(stats.mcnemar(b, c)[1], want, rel_tol=1e-9)


def test_bootstrap_p_and_the_verdict():
    assert math.isclose(stats.bootstrap_p(1.96, 1.0), 0.05, rel_tol=1e-3)  # two-sided normal
    assert stats.bootstrap_p(0.0, 0.0) == 1.0 and stats.bootstrap_p(0.2, 0.0) == 0.0
    assert math.isnan(stats.bootstrap_p(float("nan"), 1.0))
    assert [stats.verdict(-0.1, 0.01), stats.verdict(0.1, 0.01), stats.verdict(-0.1, 0.2),
            stats.verdict(-0.1, float("nan"))] == [-1, 1, 0, 0]
