"""The Embeddings page's maths: stored image embeddings projected to 2-D, and how far an ablation moves
them from baseline. numpy only, Streamlit-free.

The projection is fitted on the baseline embeddings alone (unit length, centred on their mean) and applied
unchanged to the ablated ones, so every ablation is drawn in the same frame and an arrow from an image's
baseline point to its ablated point is a real movement, not a change of axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def unit(x: np.ndarray) -> np.ndarray:
    """(..., E) -> each vector of unit length (CLIP compares directions, not lengths)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (E,) the baseline embeddings' mean
    axes: np.ndarray  # (2, E) the first two principal directions of the baseline embeddings
    explained: np.ndarray  # (2,) share of the baseline embeddings' variance along each

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        """(n, E) embeddings -> (n, 2) coordinates in this frame."""
        return (unit(emb) - self.mean) @ self.axes.T


def pca(baseline: np.ndarray) -> Projection:
    """PCA of (n, E) embeddings (unit-normalised first) by SVD; components signed so that each one's
    largest loading is positive (a stable orientation from run to run)."""
    x = unit(np.asarray(baseline, dtype=np.float64))
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: (min(n, E), E)
    axes = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    axes[:k] = vt[:k]
    for i in range(k):
        if axes[i, np.argmax(np.abs(axes[i]))] < 0:
            axes[i] = -axes[i]
    var = sing**2
    explained = np.zeros(2)
    if var.sum() > 0:
        explained[:k] = var[:k] / var.sum()
    return Projection(mean, axes, explained)


def movement(image_ids: list[int], emb: np.ndarray, labels: dict[int, str]) -> tuple[pd.DataFrame, Projection]:
    """emb: (n, 2, E), baseline then ablation per image. -> one row per image: image_id, label, x0, y0
    (baseline), x1, y1 (ablated), cosine (of the two embeddings: 1 means not moved), and the projection."""
    proj = pca(emb[:, 0])
    before, after = proj(emb[:, 0]), proj(emb[:, 1])
    cosine = (unit(emb[:, 0]) * unit(emb[:, 1])).sum(axis=-1)
    frame = pd.DataFrame({
        "image_id": image_ids, "label": [labels.get(i, "") for i in image_ids],
        "x0": before[:, 0], "y0": before[:, 1], "x1": after[:, 0], "y1": after[:, 1], "cosine": cosine,
    })
    return frame, proj


def centroid_accuracy(emb: np.ndarray, labels: list[str]) -> float:
    """Share of images whose embedding is nearest (by cosine) to the baseline centroid of their own label,
    among the centroids of every label: how well the labels stay apart under an ablation.

    emb: (n, 2, E) baseline then ablation; centroids come from the baseline embeddings.
    """
    names = sorted(set(labels))
    if len(names) < 2:
        return float("nan")
    base = unit(emb[:, 0])
    index = np.array([names.index(label) for label in labels])
    centroids = unit(np.stack([base[index == k].mean(axis=0) for k in range(len(names))]))  # (labels, E)
    nearest = (unit(emb[:, 1]) @ centroids.T).argmax(axis=1)
    return float((nearest == index).mean())
