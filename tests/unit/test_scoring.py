"""The selection, decided once (compute.scoring.select), against a plain per-row reference; a batch scored
(compute.scoring.score_batch) against the selection of every ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.scoring import BatchScoring, LogitScale, cosine_logits, score_batch, select, truth_matrix

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


def test_score_batch_scores_the_pending_ablations_judged_by_the_baseline():
    """The one per-batch scorer of the local sweep, the Ray actor and rescore: the kept ablations' selection
    equals the selection of every ablation then sliced, score_baseline judged by ablation 0 even when ablation
    0 is not kept; embeddings kept in the run's dtype, and none for "none"."""
    rng = np.random.default_rng(1)
    emb = torch.from_numpy(rng.normal(size=(3, 4, 8)).astype(np.float32))  # (n, A, E)
    text = torch.from_numpy(rng.normal(size=(4, 8)).astype(np.float32))
    text = text / text.norm(dim=-1, keepdim=True)
    truth = truth_matrix(LABELS, PROMPT_LABELS)
    scale = LogitScale(50.0, -2.0)
    whole = select(cosine_logits(emb, text, scale), truth, emb[:, 0], text)  # every ablation, the plain way
    for keep in ([0, 1, 2, 3], [1, 3], [2]):
        got = score_batch(BatchScoring(text, scale, keep, "float16"), [7, 8, 9], truth, emb, errors=[(6, "load", "x")],
                          attempted=[6, 7, 8, 9]).result()
        assert got.image_ids.tolist() == [7, 8, 9] and got.ablation_ids.tolist() == keep
        assert got.errors == [(6, "load", "x")] and got.attempted == [6, 7, 8, 9]
        for name in ("logits", "probs", "confidence", "margin", "score_baseline"):
            np.testing.assert_allclose(getattr(got.selection, name), getattr(whole, name)[:, keep], atol=1e-5)
        np.testing.assert_array_equal(got.selection.prompt_id, whole.prompt_id[:, keep])
        assert got.embeddings.dtype == np.float16
        np.testing.assert_allclose(got.embeddings, emb[:, keep].numpy(), atol=1e-2)
    lean = score_batch(BatchScoring(text, scale, [0, 1]), [7, 8, 9], truth, emb).result()
    assert lean.embeddings is None


def test_score_batch_takes_the_plain_methods_own_logits():
    rng = np.random.default_rng(2)
    emb = torch.from_numpy(rng.normal(size=(3, 2, 8)).astype(np.float32))
    own = torch.from_numpy(rng.normal(size=(3, 2, 4)).astype(np.float32))  # not the cosine logits of emb
    text = torch.eye(4, 8)
    got = score_batch(BatchScoring(text, LogitScale(1.0), [1]), [1, 2, 3], truth_matrix(LABELS, PROMPT_LABELS), emb,
                      own).result()
    np.testing.assert_array_equal(got.selection.logits, own[:, [1]].numpy())
