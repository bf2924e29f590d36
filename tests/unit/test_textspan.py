"""TextSpan's greedy search (compute.textspan.textspan) on small random data: at every step the reconstruction
plus the remainder is the centred data, the chosen directions are orthogonal, the search is deterministic, and a
direction planted in the data is found first; the pool's order and the shipped list."""

from __future__ import annotations

import numpy as np
import pytest

from compute.textspan import described_heads, shipped_pool, text_pool, textspan


def pool(seed: int, n_texts: int = 40, e: int = 16) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    cands = rng.normal(size=(n_texts, e))
    return cands / np.linalg.norm(cands, axis=1, keepdims=True), [f"text {i}" for i in range(n_texts)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_step_keeps_the_data_whole_and_the_directions_orthogonal(seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(50, 16)) @ rng.normal(size=(16, 16)) + 3.0  # correlated, off-centre
    cands, texts = pool(seed)
    steps = []
    span = textspan(data.astype(np.float32), cands, texts, rank=8,
                    trace=lambda original, rec, rem: steps.append((original, rec, rem)))
    assert len(span.texts) == len(steps) == 8 and len(set(span.texts)) == 8
    centred = data - data.mean(axis=0)
    for original, rec, rem in steps:
        assert np.abs(original - centred).max() < 1e-5
        assert np.abs(rec + rem - original).max() < 1e-5
    gram = span.directions @ span.directions.T
    assert np.abs(gram - np.eye(8)).max() < 1e-5
    # the shares of variance are those of the parts removed, and add up to at most the whole
    total = (centred**2).sum() / len(centred)
    assert all(v >= 0 for v in span.variances) and sum(span.variances) <= 1 + 1e-9
    last_rec = steps[-1][1]
    assert sum(span.variances) == pytest.approx((last_rec**2).sum() / len(last_rec) / total, rel=1e-6)


def test_the_same_input_gives_the_same_texts_and_a_planted_direction_comes_first():
    rng = np.random.default_rng(3)
    cands, texts = pool(3)
    data = np.outer(rng.normal(size=200) * 5.0, cands[17]) + 0.05 * rng.normal(size=(200, 16))
    a = textspan(data, cands, texts, rank=5)
    b = textspan(data.copy(), cands.copy(), list(texts), rank=5)
    assert a.texts == b.texts and a.variances == b.variances
    assert a.texts[0] == "text 17" and a.variances[0] > 0.95


def test_the_search_stops_when_the_candidates_are_used_up():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(5, 16))  # centred rank 4: four directions, then nothing left to project onto
    cands, texts = pool(4)
    span = textspan(data, cands, texts, rank=10)
    assert len(span.texts) == 4
    assert sum(span.variances) == pytest.approx(1.0, abs=1e-9)


def test_the_pool_is_prompts_then_captions_then_the_shipped_list_without_repeats():
    shipped = shipped_pool()
    assert 300 <= len(shipped) == len(set(shipped))
    assert all(not line.startswith("#") and line == line.strip() for line in shipped)
    got = text_pool(["a photo of a dog", "zzz"], ["zzz", "a cat on a sink"])
    assert got[:3] == ["a photo of a dog", "zzz", "a cat on a sink"]
    assert got.count("a photo of a dog") == 1 and len(got) == 3 + len(shipped) - 1  # the dog prompt is shipped too
    assert described_heads(12, 2, 4) == [(layer, h) for layer in (9, 10, 11, 12) for h in (0, 1)]
    assert described_heads(3, 1, 4) == [(1, 0), (2, 0), (3, 0)]
