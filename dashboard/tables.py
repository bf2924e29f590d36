"""The derived tables pages and the export share: Table 1 with bootstrap intervals, McNemar tests,
and their Markdown / LaTeX renderings. Pure functions of an open connection (or of a DataFrame).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard import queries, stats
from dashboard.slices import EVERYTHING, Slice

METRICS = ("accuracy", "score_baseline", "caption_score")
METRIC_TITLES = {
    "accuracy": "accuracy",
    "score_baseline": "selected-prompt score",
    "caption_score": "generated-caption score",
}


FAMILY_TEXT = {"clip": "CLIP vision tower (CLS token pooled)",
               "siglip": "SigLIP vision tower (no CLS token; attention-pooling head; logit bias)",
               "siglip2": "SigLIP 2 NaFlex vision tower (no CLS token; attention-pooling head; logit bias)"}


def family_text(family: object) -> str:
    """Which vision tower family a run used (the runs query's ``family``), in words."""
    name = str(family or "clip")
    return FAMILY_TEXT.get(name, f"{name} vision tower")


def baseline_id(ablations: pd.DataFrame) -> int:
    """The id of the unablated ablation (the sweep always starts with it)."""
    rows = ablations.loc[ablations["kind"] == "baseline", "ablation_id"]
    return int(rows.iloc[0]) if len(rows) else int(ablations["ablation_id"].iloc[0])


def baseline_name(ablations: pd.DataFrame) -> str:
    return str(ablations.loc[ablations["ablation_id"] == baseline_id(ablations), "ablation"].iloc[0])


def summary(con: queries.Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """The study's Table 1, generalised: one row per ablation of the run.

    Columns: those of queries.ablations, images, and for each metric in METRICS its mean,
    ``_lo`` / ``_hi`` (95% bootstrap interval over images) and ``d_`` + the same for its change against
    baseline, paired on images (each resample draws the same images for the ablation and baseline).
    """
    ab = queries.ablations(con, run_id)
    m = queries.selection_matrix(con, run_id, where)
    out = ab.copy()
    n_abl = len(ab)
    if m.empty or n_abl == 0:
        out["images"] = 0
        for name in METRICS:
            for prefix in ("", "d_"):
                for suffix in ("", "_lo", "_hi"):
                    out[prefix + name + suffix] = np.nan
        return out
    image_ids, rows = np.unique(m["image_id"].to_numpy(), return_inverse=True)
    col_of = {int(a): j for j, a in enumerate(ab["ablation_id"])}
    cols = m["ablation_id"].map(col_of).to_numpy()
    values = np.full((len(image_ids), n_abl, len(METRICS)), np.nan)  # (images, ablations, metrics)
    for k, name in enumerate(METRICS):
        values[rows, cols, k] = m[name].to_numpy(dtype=np.float64, na_value=np.nan)
    base = col_of[baseline_id(ab)]
    change = values - values[:, [base], :]  # paired: NaN unless both are present for the image
    flat = np.concatenate([values.reshape(len(image_ids), -1), change.reshape(len(image_ids), -1)], axis=1)
    mean, low, high = (x.reshape(2, n_abl, len(METRICS)) for x in stats.bootstrap_means(flat))
    out["images"] = (~np.isnan(values[:, :, 0])).sum(axis=0)
    for k, name in enumerate(METRICS):
        for p, prefix in enumerate(("", "d_")):
            out[prefix + name] = mean[p, :, k]
            out[prefix + name + "_lo"] = low[p, :, k]
            out[prefix + name + "_hi"] = high[p, :, k]
    return out


def has_captions(summary_frame: pd.DataFrame) -> bool:
    return bool(summary_frame["caption_score"].notna().any())


def mcnemar(con: queries.Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """Per ablation, McNemar's paired test of correctness against baseline, with Holm-adjusted p-values
    (21 ablations are 20 tests: some small p-values are expected by chance alone)."""
    ab = queries.ablations(con, run_id)
    base = baseline_id(ab)
    d = queries.discordant(con, run_id, base, where).merge(ab[["ablation_id", "ablation"]], on="ablation_id")
    d = d[d["ablation_id"] != base].reset_index(drop=True)
    tests = [stats.mcnemar(b, c) for b, c in zip(d["only_baseline"], d["only_ablation"], strict=True)]
    d["statistic"] = [t[0] for t in tests]
    d["p"] = [t[1] for t in tests]
    d["method"] = [t[2] for t in tests]
    d["p_holm"] = stats.holm(d["p"].to_numpy())
    return d[["ablation_id", "ablation", "pairs", "only_baseline", "only_ablation", "statistic", "method", "p",
              "p_holm"]]


# --------------------------------------------------------------------------------------------------
# Renderings of Table 1.


def _cell(row: pd.Series, name: str, digits: int) -> str:
    if pd.isna(row[name]):
        return "-"
    return f"{row[name]:.{digits}f} [{row[name + '_lo']:.{digits}f}, {row[name + '_hi']:.{digits}f}]"


def summary_display(summary_frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Table 1 as people read it: each value with its 95% interval in brackets."""
    metrics = [m for m in METRICS if m != "caption_score" or has_captions(summary_frame)]
    out = {"ablation": summary_frame["ablation"], "images": summary_frame["images"]}
    for name in metrics:
        out[name] = [_cell(r, name, digits) for _, r in summary_frame.iterrows()]
        out[f"Δ {name}"] = [_cell(r, "d_" + name, digits) for _, r in summary_frame.iterrows()]
    return pd.DataFrame(out)


def summary_markdown(summary_frame: pd.DataFrame, digits: int = 4) -> str:
    table = summary_display(summary_frame, digits)
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "ablation" else "---:" for c in table.columns) + "|"
    lines = [head, rule] + ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n\nValues are means over images with 95% bootstrap intervals in brackets; Δ is the " \
        "change against baseline, paired on images.\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}"}


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_head(column: str) -> str:
    if column.startswith("Δ "):
        return r"$\Delta$ " + _latex_escape(column[2:])
    return _latex_escape(column)


def summary_latex(summary_frame: pd.DataFrame, digits: int = 4) -> str:
    """A booktabs table: value and interval per metric, change against baseline beside it."""
    table = summary_display(summary_frame, digits)
    cols = ["ablation", "images"] + [c for c in table.columns if c not in ("ablation", "images")]
    spec = "lr" + "r" * (len(cols) - 2)
    head = " & ".join(_latex_head(c) for c in cols)
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule", head + r" \\", r"\midrule"]
    for row in table[cols].itertuples(index=False):
        lines.append(" & ".join(_latex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
