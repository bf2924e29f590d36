"""The attribution quality figures (compute.attribution_quality) against scipy and against their definitions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from compute.attribution_quality import quality, ranks, sign_agreement, spearman, summary_lines, top_k_recall

stats = pytest.importorskip("scipy.stats", reason="scipy is not installed here")


def test_ranks_and_spearman_equal_scipys_with_and_without_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 97):
        for tied in (False, True):
            a = rng.normal(size=n)
            b = a + rng.normal(size=n)
            if tied:
                a, b = np.round(a), np.round(b * 2) / 2
            assert np.array_equal(ranks(a), stats.rankdata(a))
            with warnings.catch_warnings():  # scipy warns on a constant (rounded) input, then gives nan
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                want = stats.spearmanr(a, b).statistic
            if np.isnan(want):
                assert np.isnan(spearman(a, b))
            else:
                assert spearman(a, b) == pytest.approx(want, abs=1e-12)
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # a constant has no ranking
    assert np.isnan(spearman([1.0], [2.0]))


def test_top_k_recall_and_sign_agreement_by_their_definitions():
    exact = np.array([-5.0, -4.0, -3.0, 1.0, 2.0, 0.0])
    estimate = np.array([-1.0, 0.5, -2.0, -3.0, 1.0, 0.0])
    # the 2 most harmful exact: heads 0, 1; the estimate's 2 lowest: heads 3, 2 -> none found
    assert top_k_recall(estimate, exact, 2) == 0.0
    # 3 most harmful: 0, 1, 2; estimate's 3 lowest: 3, 2, 0 -> 2 of 3
    assert top_k_recall(estimate, exact, 3) == pytest.approx(2 / 3)
    assert top_k_recall(estimate, exact, 10) == 1.0  # k past the number of heads: all of them
    assert sign_agreement(estimate, exact) == pytest.approx(4 / 6)  # heads 0, 2, 4 and the zero at 5
    assert np.isnan(top_k_recall(np.array([]), np.array([]), 5)) and np.isnan(sign_agreement(np.array([]), np.array([])))


def test_quality_per_head_and_per_image_equal_scipy_on_a_grid_with_a_missing_pair():
    rng = np.random.default_rng(1)
    images, heads = 7, 12
    exact = rng.normal(size=(images, heads))
    estimate = exact * 0.8 + rng.normal(scale=0.5, size=(images, heads))
    labels = [f"identity:{1 + h // 4}/h{h % 4}" for h in range(heads)]
    keep = np.ones((images, heads), bool)
    keep[3, 5] = False  # one pair not stored
    ii, hh = np.nonzero(keep)
    rows = {"spec": np.array(["identity"] * len(ii), dtype=object), "ablation": np.array([labels[h] for h in hh], dtype=object),
            "image_id": ii.astype(np.int64) + 100, "estimate": estimate[ii, hh], "exact": exact[ii, hh]}
    (q,) = quality(rows)
    assert (q.spec, q.heads, q.images) == ("identity", heads, images)
    est_m = np.array([estimate[keep[:, h], h].mean() for h in range(heads)])
    exa_m = np.array([exact[keep[:, h], h].mean() for h in range(heads)])
    assert q.per_head.rho == pytest.approx(stats.spearmanr(est_m, exa_m).statistic, abs=1e-12)
    assert q.per_head.sign == pytest.approx(np.mean(np.sign(est_m) == np.sign(exa_m)))
    for k in (5, 10):
        want = len(set(np.argsort(est_m)[:k]) & set(np.argsort(exa_m)[:k])) / k
        assert q.per_head.recall[k] == pytest.approx(want)
    per_image = [stats.spearmanr(estimate[i, keep[i]], exact[i, keep[i]]).statistic for i in range(images)]
    assert q.per_image.rho == pytest.approx(np.mean(per_image), abs=1e-12)
    recall5 = [len(set(np.argsort(estimate[i, keep[i]])[:5]) & set(np.argsort(exact[i, keep[i]])[:5])) / 5
               for i in range(images)]
    assert q.per_image.recall[5] == pytest.approx(np.mean(recall5))
    assert q.pooled_rho == pytest.approx(stats.spearmanr(estimate[keep], exact[keep]).statistic, abs=1e-12)
    (line,) = summary_lines(rows, {"identity": images})
    assert f"({heads} heads, {images} images)" in line and f"rho {q.per_head.rho:.2f}" in line
