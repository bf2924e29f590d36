"""How good the attribution estimate is, where the run also holds the exact effects (compute.attribution).

For one spec (a kind, or kind:target) the inputs are, per (image, head-level ablation), the estimate and the
exact effect on the margin M (store.estimated_and_exact). The figures, each of estimate against exact:
- Spearman's rho (ranks with ties averaged, then Pearson's correlation of the ranks);
- top-k recall of the most harmful heads: of the k heads whose exact effect is lowest (M falls most), the
  share that are among the k lowest estimates (k = 5 and 10, or all heads when fewer);
- sign agreement: the share of heads whose estimate has the exact effect's sign;
at two levels: **per head** (each head's mean over the images: which heads matter on the dataset) and **per
image** (each image's figures over its heads, then their mean over the images: which heads matter for one
image), with the rho of every (image, head) pair pooled beside them. The largest misses are the heads, and
the (image, head) pairs, whose estimate is farthest from the exact effect.

Plain numpy, no model and no store: the run's summary (compute.lifecycle), the dashboard and the export
(analysis.attribution) compute the same figures here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOP_K = (5, 10)


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (scipy.stats.rankdata's "average")."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]  # a new value starts here
    group = np.cumsum(first) - 1  # (n,) group of each sorted position
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    out = np.empty(len(x))
    out[order] = average[group]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two equally long vectors; NaN when either is constant or shorter than 2."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_k_recall(estimate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Of the k lowest exact effects (the most harmful), the share among the k lowest estimates (k is cut to
    the number of heads); NaN for none."""
    k = min(k, len(exact))
    if k == 0:
        return float("nan")
    want = set(np.argsort(exact, kind="mergesort")[:k].tolist())
    got = set(np.argsort(estimate, kind="mergesort")[:k].tolist())
    return len(want & got) / k


def sign_agreement(estimate: np.ndarray, exact: np.ndarray) -> float:
    """The share of entries whose estimate has the exact effect's sign (zero a sign of its own); NaN for none."""
    if len(exact) == 0:
        return float("nan")
    return float(np.mean(np.sign(estimate) == np.sign(exact)))


@dataclass
class Figures:
    """rho, top-k recall and sign agreement of one set of heads (or their mean over images)."""

    rho: float
    recall: dict[int, float]
    sign: float

    @classmethod
    def of(cls, estimate: np.ndarray, exact: np.ndarray, ks: tuple[int, ...] = TOP_K) -> Figures:
        return cls(spearman(estimate, exact), {k: top_k_recall(estimate, exact, k) for k in ks},
                   sign_agreement(estimate, exact))


@dataclass
class Quality:
    """The estimate of one spec against the exact effects: per head (means over images), per image (each
    image's figures over its heads, averaged over images) and the rho of every (image, head) pair pooled."""

    spec: str
    heads: int
    images: int
    per_head: Figures
    per_image: Figures
    pooled_rho: float
    labels: list[str] = field(default_factory=list)  # the heads' ablation labels, in column order
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    estimate: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (images, heads), NaN: not stored
    exact: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def grids(rows: dict[str, np.ndarray], spec: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """One spec's rows as (head labels in first-seen order, image ids sorted, estimate and exact (images, heads)
    with NaN where a pair is not stored)."""
    keep = rows["spec"] == spec
    labels = list(dict.fromkeys(rows["ablation"][keep].tolist()))
    image_ids = np.unique(rows["image_id"][keep])
    col = {label: k for k, label in enumerate(labels)}
    i = np.searchsorted(image_ids, rows["image_id"][keep])
    j = np.array([col[label] for label in rows["ablation"][keep]], np.int64)
    estimate = np.full((len(image_ids), len(labels)), np.nan)
    exact = np.full_like(estimate, np.nan)
    estimate[i, j] = rows["estimate"][keep]
    exact[i, j] = rows["exact"][keep]
    return labels, image_ids, estimate, exact


def quality(rows: dict[str, np.ndarray], ks: tuple[int, ...] = TOP_K) -> list[Quality]:
    """Per spec of ``rows`` (store.estimated_and_exact's columns), its Quality; specs in first-seen order."""
    out = []
    for spec in dict.fromkeys(rows["spec"].tolist()):
        labels, image_ids, est, exact = grids(rows, spec)
        with np.errstate(invalid="ignore"):
            head = Figures.of(np.nanmean(est, axis=0), np.nanmean(exact, axis=0), ks)
        each = []
        for r in range(len(image_ids)):
            ok = ~np.isnan(est[r]) & ~np.isnan(exact[r])
            each.append(Figures.of(est[r, ok], exact[r, ok], ks))
        per_image = Figures(_mean([f.rho for f in each]), {k: _mean([f.recall[k] for f in each]) for k in ks},
                            _mean([f.sign for f in each]))
        ok = ~np.isnan(est) & ~np.isnan(exact)
        out.append(Quality(spec, len(labels), len(image_ids), head, per_image, spearman(est[ok], exact[ok]),
                           labels, image_ids, est, exact))
    return out


def _mean(values: list[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def head_misses(q: Quality, top: int = 5) -> list[tuple[str, float, float]]:
    """The heads whose mean estimate is farthest from their mean exact effect: (ablation, mean estimate, mean
    exact), farthest first."""
    with np.errstate(invalid="ignore"):
        est, exact = np.nanmean(q.estimate, axis=0), np.nanmean(q.exact, axis=0)
    order = np.argsort(-np.abs(est - exact), kind="mergesort")[:top]
    return [(q.labels[j], float(est[j]), float(exact[j])) for j in order]


def pair_misses(q: Quality, top: int = 5) -> list[tuple[int, str, float, float]]:
    """The (image, head) pairs whose estimate is farthest from the exact effect: (image_id, ablation, estimate,
    exact), farthest first."""
    gap = np.abs(q.estimate - q.exact)
    flat = np.where(np.isnan(gap), -1.0, gap).reshape(-1)
    order = np.argsort(-flat, kind="mergesort")[:top]
    heads = q.estimate.shape[1]
    return [(int(q.image_ids[f // heads]), q.labels[f % heads], float(q.estimate.flat[f]), float(q.exact.flat[f]))
            for f in order if flat[f] >= 0]


def _figures_text(f: Figures) -> str:
    recall = ", ".join(f"top-{k} recall {v:.2f}" for k, v in f.recall.items())
    return f"rho {f.rho:.2f}, {recall}, sign {f.sign:.2f}"


def summary_lines(rows: dict[str, np.ndarray], attributed: dict[str, int]) -> list[str]:
    """The run summary's lines on attribution: per spec estimated (``attributed``: {spec: images}), its quality
    against the exact effects where the run holds them, else that it has none to be measured against."""
    found = {q.spec: q for q in quality(rows)} if len(rows.get("spec", ())) else {}
    lines = []
    for spec, images in attributed.items():
        q = found.get(spec)
        if q is not None and q.heads < 2:
            lines.append(f"attribution of {spec}: every head estimated on {images:,} image(s); the run holds the exact "
                         f"effect of {q.heads} of those heads ({', '.join(q.labels)}), too few to rank")
            continue
        if q is None:
            kind, _, target = spec.partition(":")
            example = f"{kind}:1{'/' + target if target else ''}/h0"
            lines.append(f"attribution of {spec}: every head estimated on {images:,} image(s); the run holds no exact "
                         f"effect of those heads to measure the estimates against (the heads sweep is identity's; "
                         f"extras such as \"{example}\" add others)")
            continue
        lines.append(f"attribution of {spec} against the exact effects on the margin M ({q.heads} heads, {q.images:,} "
                     f"images): per head (mean over images) {_figures_text(q.per_head)}; per image (mean of each "
                     f"image's) {_figures_text(q.per_image)}; every (image, head) pooled: rho {q.pooled_rho:.2f}")
    return lines
