"""The derived tables pages and the export share: Table 1 with bootstrap intervals and the one significance
rule (``analysis.stats``), McNemar's tests, and Table 1's renderings (a sortable frame for the page,
Markdown; LaTeX is analysis.latex). Pure functions of an open connection (or of a DataFrame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import queries, stats
from analysis.slices import EVERYTHING, Slice
from analysis.text import md_cell

METRICS = ("accuracy", "score_baseline", "caption_score")
METRIC_TITLES = {
    "accuracy": "accuracy",
    "score_baseline": "selected-prompt score",
    "caption_score": "generated-caption score",
}
MINUS = "\u2212"  # typographic minus: "−0.017", not "-0.017"
MARK = "*"  # after a change that is significant under the rule (stats.RULE)
DIGITS = 3
FOOTNOTE = ("Means over images with 95% bootstrap intervals; Δ: change against baseline, paired on images; "
            f"{MARK} Holm-adjusted p < {stats.ALPHA} over the run's ablations (McNemar's test for accuracy, the "
            "paired t-test for the scores).")


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


def has_captions(summary_frame: pd.DataFrame) -> bool:
    return bool(summary_frame["caption_score"].notna().any())


def metrics_of(summary_frame: pd.DataFrame) -> list[str]:
    """The metrics a run has values for (the caption score only with a captioner)."""
    return [m for m in METRICS if m != "caption_score" or has_captions(summary_frame)]


def summary(con: queries.Con, run_id: int, where: Slice = EVERYTHING, seed: int = stats.SEED) -> pd.DataFrame:
    """The study's Table 1, generalised: one row per ablation of the run, with the significance rule applied.

    Columns: those of queries.ablations, images, and for each metric in METRICS its mean, ``_lo`` / ``_hi``
    (95% bootstrap interval over images), ``d_`` + the same for its change against baseline (paired: each
    resample draws the same images for the ablation and baseline), ``p_`` (the change's p-value: McNemar for
    accuracy, the paired t-test for scores), ``p_holm_`` (Holm-adjusted over the run's other ablations)
    and ``sig_`` (-1 significantly lower, 0 not significant, +1 higher; stats.verdict). McNemar's counts:
    ``pairs`` (images computed under the ablation and baseline), ``only_baseline``, ``only_ablation``,
    ``mcnemar_statistic``, ``mcnemar_method``. Baseline's own change columns are NaN (nothing to test).
    ``seed`` draws the bootstrap's resamples: it moves the intervals a little and never a verdict.
    """
    ab = queries.ablations(con, run_id)
    m = queries.selection_matrix(con, run_id, where)
    return summary_of(ab, m, seed)


def summary_of(ab: pd.DataFrame, m: pd.DataFrame, seed: int = stats.SEED) -> pd.DataFrame:
    """``summary`` from the frames it reads: queries.ablations and queries.selection_matrix."""
    out = ab.copy()
    n_abl = len(ab)
    if m.empty or n_abl == 0:
        out["images"] = 0
        for name in METRICS:
            for prefix in ("", "d_"):
                for suffix in ("", "_lo", "_hi"):
                    out[prefix + name + suffix] = np.nan
            out["p_" + name] = out["p_holm_" + name] = np.nan
            out["sig_" + name] = 0
        for col in ("pairs", "only_baseline", "only_ablation"):
            out[col] = 0
        out["mcnemar_statistic"], out["mcnemar_method"] = np.nan, ""
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
    mean, low, high = (x.reshape(2, n_abl, len(METRICS)) for x in stats.bootstrap(flat, seed=seed)[:3])
    out["images"] = (~np.isnan(values[:, :, 0])).sum(axis=0)
    others = np.arange(n_abl) != base
    for k, name in enumerate(METRICS):
        for p, prefix in enumerate(("", "d_")):
            out[prefix + name] = mean[p, :, k]
            out[prefix + name + "_lo"] = low[p, :, k]
            out[prefix + name + "_hi"] = high[p, :, k]
        out.loc[~others, ["d_" + name, "d_" + name + "_lo", "d_" + name + "_hi"]] = np.nan
    _mcnemar_columns(out, values[:, :, 0], base)
    for k, name in enumerate(METRICS[1:], start=1):
        p = stats.paired_t(change[:, :, k])  # (ablations,): deterministic, whatever the seed
        p[base] = np.nan
        out["p_" + name] = p
    for name in METRICS:
        out["p_holm_" + name] = stats.holm(out["p_" + name].to_numpy(dtype=np.float64))
        out["sig_" + name] = [stats.verdict(d, p) for d, p in zip(out["d_" + name], out["p_holm_" + name],
                                                                  strict=True)]
    return out


def _mcnemar_columns(out: pd.DataFrame, correct: np.ndarray, base: int) -> None:
    """McNemar's counts and test of every ablation against baseline, from per-image correctness.

    correct: (images, ablations) 1.0 / 0.0, NaN where the pair is not computed. Writes pairs,
    only_baseline, only_ablation, mcnemar_statistic, mcnemar_method and p_accuracy (NaN without pairs).
    """
    both = ~np.isnan(correct) & ~np.isnan(correct[:, [base]])  # (images, ablations)
    right = np.nan_to_num(correct) > 0.5
    out["pairs"] = both.sum(axis=0)
    out["only_baseline"] = (both & right[:, [base]] & ~right).sum(axis=0)
    out["only_ablation"] = (both & ~right[:, [base]] & right).sum(axis=0)
    tests = [stats.mcnemar(b, c) if j != base and n else (np.nan, np.nan, "")
             for j, (n, b, c) in enumerate(zip(out["pairs"], out["only_baseline"], out["only_ablation"], strict=True))]
    out["mcnemar_statistic"] = [t[0] for t in tests]
    out["mcnemar_method"] = [t[2] for t in tests]
    out["p_accuracy"] = [t[1] for t in tests]


def mcnemar(con: queries.Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """Per ablation, McNemar's paired test of correctness against baseline, with Holm-adjusted p-values
    (21 ablations are 20 tests: some small p-values are expected by chance alone)."""
    return mcnemar_of(summary(con, run_id, where))


def mcnemar_of(summary_frame: pd.DataFrame) -> pd.DataFrame:
    """The McNemar columns of a ``summary`` frame: the very numbers its significance marks come from."""
    tested = summary_frame[summary_frame["p_accuracy"].notna()]
    return pd.DataFrame({
        "ablation_id": tested["ablation_id"], "ablation": tested["ablation"], "pairs": tested["pairs"],
        "only_baseline": tested["only_baseline"], "only_ablation": tested["only_ablation"],
        "statistic": tested["mcnemar_statistic"], "method": tested["mcnemar_method"], "p": tested["p_accuracy"],
        "p_holm": tested["p_holm_accuracy"], "significant": tested["sig_accuracy"] != 0,
    }).reset_index(drop=True)


def single_layers(frame: pd.DataFrame) -> pd.Series:
    """Rows (of a summary or queries.ablations) that ablate one whole layer: no head, no knockout target. The
    points of a curve per layer (head-level and knockout ablations have their own pages, Heads and Flow)."""
    whole = (frame["n_heads"] == 0) & (frame["target"] == "") if "n_heads" in frame else True
    return (frame["n_layers"] == 1) & whole & (frame["kind"] != "baseline")


def blocks(frame: pd.DataFrame) -> pd.Series:
    """Rows that ablate several layers at once (blocks, all layers)."""
    return frame["n_layers"] > 1


def depth_curve(summary_frame: pd.DataFrame, run: str, n_layers: int) -> pd.DataFrame:
    """A run's accuracy per single ablated layer at the layer's relative depth (layer / n_layers), so runs of
    models with 12 and 24 layers share an axis: run, ablation, kind, layer, n_layers, depth, accuracy, lo,
    hi, baseline (the run's unablated accuracy)."""
    rows = summary_frame[single_layers(summary_frame)]
    base = summary_frame.loc[summary_frame["kind"] == "baseline", "accuracy"]
    return pd.DataFrame({
        "run": run, "ablation": rows["ablation"], "kind": rows["kind"], "layer": rows["first_layer"].astype(int),
        "n_layers": int(n_layers), "depth": rows["first_layer"].astype(float) / float(n_layers),
        "accuracy": rows["accuracy"], "lo": rows["accuracy_lo"], "hi": rows["accuracy_hi"],
        "baseline": float(base.iloc[0]) if len(base) else np.nan,
    }).reset_index(drop=True)


def compare_runs(con: queries.Con, run_a: int, run_b: int) -> pd.DataFrame:
    """Two runs over the same images (a rescored prompt variant, another model) ablation by ablation: per
    ablation both have, accuracy under A and under B, B minus A, McNemar's paired test of B against A on the
    images both computed, its p-value Holm-adjusted over these ablations and the verdict of the one rule
    (``verdict``: -1 B significantly lower, +1 higher, 0 not)."""
    return compare_runs_of(queries.run_pairs(con, run_a, run_b))


def compare_runs_of(pairs: pd.DataFrame) -> pd.DataFrame:
    """``compare_runs`` from queries.run_pairs' frame."""
    tests = [stats.mcnemar(a, b) for a, b in zip(pairs["only_a"], pairs["only_b"], strict=True)]
    out = pairs.assign(difference=pairs["accuracy_b"] - pairs["accuracy_a"],
                       statistic=[t[0] for t in tests], method=[t[2] for t in tests], p=[t[1] for t in tests])
    out["p_holm"] = stats.holm(out["p"].to_numpy(dtype=np.float64)) if len(out) else []
    out["verdict"] = [stats.verdict(d, p) for d, p in zip(out["difference"], out["p_holm"], strict=True)]
    return out.reset_index(drop=True)


def reliably_worse(summary_frame: pd.DataFrame, metric: str = "accuracy") -> int:
    """Ablations whose ``metric`` is significantly lower than baseline's under the rule."""
    return int((summary_frame["sig_" + metric] < 0).sum())


def select_ablations(frame: pd.DataFrame, names: Sequence[str] | None) -> pd.DataFrame:
    """The rows of ``frame`` (anything with an ``ablation`` column) for ``names``, in that order; all rows
    when ``names`` is None. Significance is decided on the whole run first: choosing fewer ablations for a
    figure does not change a mark."""
    if names is None:
        return frame
    order = {name: k for k, name in enumerate(names)}
    kept = frame[frame["ablation"].isin(order)]
    return kept.iloc[np.argsort([order[a] for a in kept["ablation"]], kind="stable")].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Renderings of Table 1: numbers as numbers, 3 decimals, typographic minus, significance marks.


def number(x: float, digits: int = DIGITS, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals and a typographic minus; "−0.000" and "+0.000" are "0.000"; NaN is "—"."""
    if x is None or pd.isna(x):
        return "—"
    x = round(float(x), digits) + 0.0  # + 0.0: no negative zero
    text = f"{x:+.{digits}f}" if sign and x != 0 else f"{x:.{digits}f}"  # zero has one form: "0.000"
    return text.replace("-", MINUS)


def styled(frame: pd.DataFrame, digits: int = DIGITS):
    """``frame`` as a pandas Styler that shows numbers as Table 1 does (``digits`` decimals, typographic minus)
    and "—" in a cell without a value, one where the column does not apply. Streamlit's grid shows a missing cell
    as "None" whatever a Styler says, so a column with missing cells becomes text, formatted here; the other
    columns stay numbers, so the page's table sorts by them."""
    out = frame.copy()
    for column in out.columns:
        gaps = out[column].isna()  # None, NaN, NA; a list is a value
        if gaps.any():
            out[column] = ["—" if gap else number(x, digits) if isinstance(x, float | np.floating) else str(x)
                           for x, gap in zip(out[column], gaps, strict=True)]
    floats = list(out.select_dtypes("float").columns)
    return out.style.format(lambda x: number(x, digits), subset=floats)


def interval(lo: float, hi: float, digits: int = DIGITS) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return ""
    return f"[{number(lo, digits)}, {number(hi, digits)}]"


def change(row: pd.Series, name: str, digits: int = DIGITS) -> str:
    """The change against baseline with its mark: "−0.017*"; "—" for baseline itself."""
    d = row["d_" + name]
    if pd.isna(d):
        return "—"
    return number(d, digits, sign=True) + (MARK if row["sig_" + name] != 0 else "")


def title(metric: str) -> str:
    text = METRIC_TITLES[metric]
    return text[0].upper() + text[1:]


def table1_page(summary_frame: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for the page: human column names, numeric values (they sort as numbers), intervals in their
    own columns; ``table1_style`` formats it. Baseline's own change is 0 and its p-value 1 (they sort as
    such), shown as "—"."""
    base = (summary_frame["kind"] == "baseline").to_numpy()
    out = {"Ablation": summary_frame["ablation"], "Images": summary_frame["images"]}
    for name in metrics_of(summary_frame):
        t = title(name)
        out[t] = summary_frame[name]
        out[f"{t} low"] = summary_frame[name + "_lo"]
        out[f"{t} high"] = summary_frame[name + "_hi"]
        out[f"Δ {METRIC_TITLES[name]}"] = np.where(base, 0.0, summary_frame["d_" + name])
        out[f"p (Holm), {METRIC_TITLES[name]}"] = np.where(base, 1.0, summary_frame["p_holm_" + name])
    return pd.DataFrame(out).reset_index(drop=True)


def table1_style(summary_frame: pd.DataFrame):
    """``table1_page`` as a pandas Styler: 3 decimals, typographic minus, the mark after a significant
    change, "—" for baseline's own change. The values stay numbers, so the page's table sorts by them."""
    frame = table1_page(summary_frame)
    base = (summary_frame["kind"] == "baseline").to_numpy()
    style = frame.style.format(precision=DIGITS)
    for name in metrics_of(summary_frame):
        t = title(name)
        style = style.format(number, subset=[t, f"{t} low", f"{t} high"])
        columns = [f"Δ {METRIC_TITLES[name]}", f"p (Holm), {METRIC_TITLES[name]}"]
        marked = summary_frame["sig_" + name].to_numpy() != 0
        groups = ((marked & ~base, lambda x: number(x, sign=True) + MARK, stats.format_p),
                  (~marked & ~base, lambda x: number(x, sign=True), stats.format_p),
                  (base, lambda x: "—", lambda x: "—"))
        for rows, change_text, p_text in groups:
            index = frame.index[rows]
            if len(index):
                style = style.format(change_text, subset=pd.IndexSlice[index, [columns[0]]])
                style = style.format(p_text, subset=pd.IndexSlice[index, [columns[1]]])
    return style


def table1_cells(summary_frame: pd.DataFrame, digits: int = DIGITS) -> tuple[list[str], list[list[str]]]:
    """Table 1 as text cells for Markdown, LaTeX and the figure pack: (header, rows). Per metric: mean,
    its 95% interval, the change against baseline with its mark."""
    metrics = metrics_of(summary_frame)
    header = ["Ablation", "Images"]
    for name in metrics:
        header += [title(name), "95% CI", f"Δ {METRIC_TITLES[name]}"]
    rows = []
    for _, r in summary_frame.iterrows():
        cells = [str(r["ablation"]), f"{int(r['images']):,}"]
        for name in metrics:
            cells += [number(r[name], digits), interval(r[name + "_lo"], r[name + "_hi"], digits),
                      change(r, name, digits)]
        rows.append(cells)
    return header, rows


def summary_markdown(summary_frame: pd.DataFrame, digits: int = DIGITS) -> str:
    header, rows = table1_cells(summary_frame, digits)
    cell = md_cell  # an ablation label, escaped: a "|" in a label cannot split the table
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if c == "Ablation" else "---:" for c in header) + "|"]
    lines += ["| " + " | ".join(cell(v) if k == 0 else v for k, v in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + FOOTNOTE + "\n"
