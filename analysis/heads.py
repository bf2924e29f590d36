"""The Heads and Flow pages' tables, Streamlit-free (the figure export draws them too).

Both start from Table 1 (``tables.summary``: each ablation's change against baseline with its paired 95%
bootstrap interval, its p-value and its verdict under the one significance rule of every page: Holm-adjusted
p < 0.05 over the run's ablations, McNemar's test for accuracy and the paired t-test for scores) and keep
the cells a view shows, with McNemar's counts (``tables.mcnemar``) for the tooltip. A cell marked here is
marked on the Overview and in the exports too.
"""

from __future__ import annotations

import pandas as pd

TARGET_TITLES = {
    "patches>cls": "patches → CLS (CLS cannot read the patches)",
    "cls>patches": "CLS → patches (patches cannot read CLS)",
    "patches>patches": "patches → patches (a patch reads only itself and CLS)",
}


def target_title(target: str, cls: bool = True) -> str:
    """TARGET_TITLES, for a tower with a CLS token or (SigLIP) without one."""
    if not cls and target == "patches>patches":
        return "patches → patches (a patch reads only itself: this tower has no CLS token)"
    return TARGET_TITLES[target]


def group_of(kind: str, target: str) -> str:
    """A group of heatmap cells: the kind, with the knockout target when there is one (knockout:patches>cls)."""
    return f"{kind}:{target}" if target else kind


def head_groups(ablations: pd.DataFrame) -> list[str]:
    """Groups (``group_of``) with single-head, single-layer ablations in the run, in sweep order."""
    single = ablations[(ablations["n_layers"] == 1) & (ablations["n_heads"] == 1)]
    return list(dict.fromkeys(group_of(k, t) for k, t in zip(single["kind"], single["target"], strict=True)))


def _with_tests(cells: pd.DataFrame, tests: pd.DataFrame, metric: str) -> pd.DataFrame:
    """cells (rows of tables.summary) -> change, lo, hi, p, p_holm and holds of ``metric`` as the summary
    decided them, with McNemar's counts from ``tests``."""
    taken = ["only_baseline", "only_ablation"]  # from the tests (a summary frame may hold the counts too)
    out = cells.drop(columns=[c for c in taken if c in cells]).merge(tests[["ablation_id", *taken]], on="ablation_id",
                                                                     how="left")
    out = out.assign(change=out["d_" + metric], lo=out["d_" + metric + "_lo"], hi=out["d_" + metric + "_hi"],
                     p=out["p_" + metric], p_holm=out["p_holm_" + metric], holds=out["sig_" + metric] != 0)
    return out[out["images"] > 0].reset_index(drop=True)  # not computed yet


def head_cells(summary: pd.DataFrame, tests: pd.DataFrame, group: str, metric: str) -> pd.DataFrame:
    """One row per single-head ablation of ``group`` (``group_of``): layer, head, ablation, images, change (of ``metric``
    against baseline), lo, hi (95% paired bootstrap), p, p_holm and holds (the summary's rule)."""
    kind, _, target = group.partition(":")
    keep = ((summary["n_layers"] == 1) & (summary["n_heads"] == 1) & (summary["kind"] == kind)
            & (summary["target"] == target))
    cells = _with_tests(summary[keep], tests, metric)
    cells = cells.assign(layer=cells["first_layer"].astype(int), head=cells["first_head"].astype(int))
    return cells[["ablation_id", "ablation", "layer", "head", "images", "change", "lo", "hi", "only_baseline",
                  "only_ablation", "p", "p_holm", "holds"]]


def flow_cells(summary: pd.DataFrame, tests: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per whole-layer knockout of one layer: layer, target, ablation, images, change, lo, hi, p,
    p_holm, holds (the summary's rule)."""
    keep = (summary["kind"] == "knockout") & (summary["n_layers"] == 1) & (summary["n_heads"] == 0)
    cells = _with_tests(summary[keep], tests, metric)
    cells = cells.assign(layer=cells["first_layer"].astype(int))
    return cells[["ablation_id", "ablation", "layer", "target", "images", "change", "lo", "hi", "only_baseline",
                  "only_ablation", "p", "p_holm", "holds"]]


def picked_ablation(event: object, param: str = "cell") -> str | None:
    """The ablation a click on a chart chose: Streamlit's selection event holds the clicked datum's fields
    under the selection parameter's name."""
    try:
        points = event["selection"][param]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        if isinstance(point, dict) and point.get("ablation"):
            return str(point["ablation"])
    return None
