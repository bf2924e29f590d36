"""The Embeddings page's maths on small arrays: PCA of the baseline embeddings, movement, label centroids."""

from __future__ import annotations

import numpy as np

from analysis import projection


def test_pca_matches_the_eigenvectors_of_the_covariance_and_fixes_the_frame_on_baseline():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])  # (n, E), known spread
    proj = projection.pca(base)
    x = projection.unit(base)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))  # independent: the covariance's eigenvectors
    top = vectors[:, ::-1][:, :2].T  # (2, E), largest first
    assert np.allclose(np.abs((proj.axes * top).sum(axis=1)), 1, atol=1e-8)  # the same directions, up to sign
    assert np.allclose(proj.explained, values[::-1][:2] / values.sum())
    assert np.allclose(proj(base), centred @ proj.axes.T)
    # Unchanged embeddings do not move; the cosine of an image with itself is 1.
    moves, _ = projection.movement(list(range(80)), np.stack([base, base], axis=1), {})
    assert np.allclose(moves[["x0", "y0"]].to_numpy(), moves[["x1", "y1"]].to_numpy())
    assert np.allclose(moves["cosine"], 1)
    # A changed image moves in the baseline's frame; the frame itself stays (fitted on baseline alone).
    moved = base.copy()
    moved[0] = -moved[0]
    moves, again = projection.movement(list(range(80)), np.stack([base, moved], axis=1), {})
    assert np.allclose(again.axes, proj.axes) and np.isclose(moves["cosine"].iloc[0], -1)


def test_centroid_accuracy_counts_images_nearest_their_own_labels_centroid():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    base = np.stack([a, a, b, b])
    labels = ["a", "a", "b", "b"]
    assert projection.centroid_accuracy(np.stack([base, base], axis=1), labels) == 1.0
    swapped = np.stack([b, a, b, b])  # the first image now looks like a "b"
    assert projection.centroid_accuracy(np.stack([base, swapped], axis=1), labels) == 0.75
    assert np.isnan(projection.centroid_accuracy(np.stack([base, base], axis=1), ["a"] * 4))
