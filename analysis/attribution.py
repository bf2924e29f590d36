"""Attribution's read side, Streamlit-free: each head's mean estimate (the Heads page's estimated heatmap) and
how good the estimates are where the run also holds the exact effects (the page's scatter and figures, the
export's table and figures).

The figures themselves are compute.attribution_quality's (the run's summary prints the same): Spearman's rho,
top-k recall of the most harmful heads and sign agreement, per head (means over images) and per image (each
image's figures over its heads, averaged), with the rho of every (image, head) pair pooled. Everything here
reads the run's whole set of images (no slice): the figures describe the estimate, not a subset of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import queries
from compute.attribution_quality import TOP_K, Quality, head_misses, pair_misses, quality

FOOTNOTE = ("Attribution patching's estimate of each head's ablation (one forward and one backward pass per image) "
            "against its exact effect on the margin M (the baseline's selected prompt's logit minus its runner-up's). "
            "per head: over the heads' means over images; per image: each image's figures over its heads, averaged "
            "over images; pooled rho: every (image, head) pair. Top-k recall: of the k heads whose exact ablation "
            "lowers M most, the share among the estimate's k lowest; sign agreement: the share of heads whose "
            "estimate has the exact sign.")
LEVELS = ("per head", "per image")  # what a row of the quality table describes (module docstring)
TABLE_COLUMNS = ["kind", "level", "heads", "images", "rho", *(f"top-{k} recall" for k in TOP_K), "sign agreement",
                 "pooled rho"]


@dataclass
class AttributionData:
    """What the page and the export read of a run's attribution (picklable, cacheable)."""

    specs: list[str]  # every spec the run estimated, in order
    quality: dict[str, Quality] = field(default_factory=dict)  # those with exact effects of two heads or more
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # ablation label -> (layer, head)

    @property
    def measured(self) -> list[str]:
        return [s for s in self.specs if s in self.quality]


def attribution_data(con: queries.Con, run_id: int) -> AttributionData:
    """The run's specs, and for those it also holds exact effects of (two heads or more), their Quality."""
    specs = queries.attribution_specs(con, run_id)
    if not specs:
        return AttributionData([])
    rows = queries.estimated_and_exact(con, run_id)
    found = {q.spec: q for q in quality(rows)} if len(rows["spec"]) else {}
    positions = {str(a): (int(layer), int(head))
                 for a, layer, head in zip(rows["ablation"], rows["layer"], rows["head"], strict=True)}
    return AttributionData(specs, {s: q for s, q in found.items() if q.heads >= 2}, positions)


def quality_table(data: AttributionData, digits: int | None = None) -> pd.DataFrame:
    """One row per measured spec and level (LEVELS): kind, level, heads, images, rho, top-k recalls, sign
    agreement, and the pooled rho (on the per image row). ``digits``: rounded for display."""
    rows = []
    for spec in data.measured:
        q = data.quality[spec]
        for level, f in zip(LEVELS, (q.per_head, q.per_image), strict=True):
            rows.append([spec, level, q.heads, q.images, f.rho, *(f.recall[k] for k in TOP_K), f.sign,
                         q.pooled_rho if level == "per image" else np.nan])
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return frame.round(digits) if digits is not None else frame


def head_points(data: AttributionData, spec: str) -> pd.DataFrame:
    """Per head of ``spec`` with an exact effect: ablation, layer, head, estimate and exact (means over images)."""
    q = data.quality[spec]
    with np.errstate(invalid="ignore"):
        est, exact = np.nanmean(q.estimate, axis=0), np.nanmean(q.exact, axis=0)
    layer_head = [data.positions[label] for label in q.labels]
    return pd.DataFrame({"ablation": q.labels, "layer": [lh[0] for lh in layer_head],
                         "head": [lh[1] for lh in layer_head], "estimate": est, "exact": exact})


def pair_bins(data: AttributionData, spec: str, bins: int = 40) -> pd.DataFrame:
    """Every (image, head) pair of ``spec`` counted in a bins x bins grid over one square range of exact and
    estimate (so the diagonal is the line of perfect estimates): x0, x1, y0, y1, pairs. Aggregated: a chart
    gets at most bins² rows however many pairs there are."""
    q = data.quality[spec]
    ok = ~np.isnan(q.estimate) & ~np.isnan(q.exact)
    x, y = q.exact[ok], q.estimate[ok]
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    counts, _, _ = np.histogram2d(x, y, bins=[edges, edges])
    i, j = np.nonzero(counts)
    return pd.DataFrame({"x0": edges[i], "x1": edges[i + 1], "y0": edges[j], "y1": edges[j + 1],
                         "pairs": counts[i, j].astype(int)})


def misses(data: AttributionData, spec: str, top: int = 5) -> pd.DataFrame:
    """The largest misses of ``spec``: the heads (means over images) and the (image, head) pairs whose estimate
    is farthest from the exact effect: level, image_id (None for a head), ablation, estimate, exact, gap."""
    q = data.quality[spec]
    rows = [("head", None, a, e, x) for a, e, x in head_misses(q, top)]
    rows += [("image x head", i, a, e, x) for i, a, e, x in pair_misses(q, top)]
    frame = pd.DataFrame(rows, columns=["level", "image_id", "ablation", "estimate", "exact"])
    # an id stays an integer beside the heads' missing ones (pandas would make the column float)
    return frame.assign(image_id=frame["image_id"].astype("Int64"), gap=frame["estimate"] - frame["exact"])


def figures_text(data: AttributionData, spec: str) -> str:
    """The figures of ``spec`` in one line, for a chart's subtitle and the page's caption."""
    q = data.quality[spec]

    def one(f) -> str:
        recall = ", ".join(f"top-{k} recall {f.recall[k]:.2f}" for k in TOP_K)
        return f"rho {f.rho:.2f}, {recall}, sign agreement {f.sign:.2f}"

    return (f"per head (mean over {q.images} images): {one(q.per_head)}; per image (mean over images): "
            f"{one(q.per_image)}; all {q.images} x {q.heads} pairs: rho {q.pooled_rho:.2f}")


def estimate_cells(con: queries.Con, run_id: int, spec: str) -> pd.DataFrame:
    """Per head of ``spec``: ablation, layer, head, images, estimate (its mean over the images attributed) and,
    where the run holds it, exact (the mean exact change of M over the images with both; NaN elsewhere)."""
    cells = queries.mean_estimates(con, run_id, spec)
    rows = queries.estimated_and_exact(con, run_id)
    keep = rows["spec"] == spec
    exact = pd.DataFrame({"ablation": rows["ablation"][keep], "exact": rows["exact"][keep].astype(float)})
    means = exact.groupby("ablation")["exact"].mean()
    return cells.assign(exact=[means.get(a, np.nan) for a in cells["ablation"]])
