"""The dashboard's pure parts on small inputs: bootstrap intervals, McNemar, Holm, filter slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboard import slices, stats


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
