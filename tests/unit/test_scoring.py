"""The selection, decided once (compute.scoring.select), against a plain per-row reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.scoring import cosine_logits, select, truth_matrix

LABELS = [("cat",), ("dog", "cat"), ("bird",)]
PROMPT_LABELS = ["dog", "cat", "car", "cat"]  # two prompts may carry one label


def reference(logits, labels, prompt_labels, base, text):
    """One (image, ablation) at a time, in float64 numpy: what the selection means."""
    n, a, _ = logits.shape
    out = {k: np.zeros((n, a)) for k in ("prompt_id", "correct", "confidence", "margin", "score")}
    for i in range(n):
        judge = base[i] / np.linalg.norm(base[i])
        for j in range(a):
            row = logits[i, j].astype(np.float64)
            k = int(np.argmax(row))  # first of equal maxima
            soft = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            top = np.sort(row)[::-1]
            out["prompt_id"][i, j] = k
            out["correct"][i, j] = prompt_labels[k] in labels[i]
            out["confidence"][i, j] = soft[k]
            out["margin"][i, j] = top[0] - top[1] if len(row) > 1 else np.nan
            out["score"][i, j] = judge @ text[k]
    return out


def test_select_equals_the_per_row_reference_with_ties_and_several_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32) * 10
    logits[0, 0] = [3.0, 3.0, 1.0, 0.0]  # a tie: the first prompt wins, margin 0
    base = rng.normal(size=(3, 8)).astype(np.float32)
    text = rng.normal(size=(4, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    got = select(torch.from_numpy(logits), truth_matrix(LABELS, PROMPT_LABELS), torch.from_numpy(base),
                 torch.from_numpy(text))
    want = reference(logits, LABELS, PROMPT_LABELS, base, text)
    assert got.prompt_id.dtype == np.int16 and got.correct.dtype == bool
    np.testing.assert_array_equal(got.prompt_id, want["prompt_id"])
    np.testing.assert_array_equal(got.correct, want["correct"].astype(bool))
    np.testing.assert_allclose(got.confidence, want["confidence"], rtol=1e-5)
    np.testing.assert_allclose(got.margin, want["margin"], atol=1e-5)
    np.testing.assert_allclose(got.score_baseline, want["score"], atol=1e-5)
    assert got.prompt_id[0, 0] == 0 and got.margin[0, 0] == 0
    np.testing.assert_allclose(got.probs.sum(axis=-1), 1, atol=1e-6)
    assert got.correct.any() and not got.correct.all()  # the check is not vacuous


def test_one_prompt_has_no_margin():
    got = select(torch.ones(2, 3, 1), truth_matrix([("cat",), ("dog",)], ["cat"]), torch.ones(2, 4),
                 torch.ones(1, 4) / 2)
    assert np.isnan(got.margin).all()
    assert got.correct[:, 0].tolist() == [True, False] and (got.confidence == 1).all()


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_cosine_logits_is_scale_times_cosine(scale):
    image = torch.tensor([[3.0, 4.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(cosine_logits(image, text, scale), scale * torch.tensor([[0.6, 0.8]]))
