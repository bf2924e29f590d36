"""Pure Altair chart builders: DataFrames in, charts out. The pages draw them; the export saves them.

Inputs are already aggregated in DuckDB (Altair's save refuses more than 5,000 rows, and a chart is no
place for raw rows). Discrete axes keep the store's order (ablation_id, prompt_id), not alphabetical.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from analysis.stats import ALPHA
from analysis.tables import METRIC_TITLES, METRICS, has_captions

# Charts get aggregates only (at most labels x labels cells). Altair's 5,000-row guard exists to stop raw
# rows being embedded in a spec; here it would only refuse a confusion matrix of a large label set.
alt.data_transformers.disable_max_rows()

TOOLTIP_FORMAT = ".4f"

SLANTED = alt.Axis(labelAngle=-60, labelOverlap=False, labelLimit=240)  # every ablation label, whole
FULL_LABELS = alt.Axis(labelOverlap=False, labelLimit=400)  # prompts and labels never cut to "a photo of a…"
# The one significance rule (analysis.stats), as chart colours and legends.
SIG_TITLE = f"Holm-adjusted p < {ALPHA}"
SIG_NAMES = {-1: "significantly lower", 0: "not significant", 1: "significantly higher"}
SIG_SCALE = alt.Scale(domain=list(SIG_NAMES.values()), range=["#d62728", "#7f7f7f", "#2ca02c"])


def _summary_long(summary: pd.DataFrame, prefix: str = "", metrics: list[str] | None = None) -> pd.DataFrame:
    """Table 1 in long form: ablation, ablation_id, metric, mean, lo, hi, change (one row per ablation x
    metric); ``change`` names the metric's significance verdict (SIG_NAMES)."""
    metrics = metrics or [m for m in METRICS if m != "caption_score" or has_captions(summary)]
    parts = []
    for name in metrics:
        parts.append(pd.DataFrame({
            "ablation": summary["ablation"], "ablation_id": summary["ablation_id"],
            "images": summary["images"], "metric": METRIC_TITLES[name],
            "mean": summary[prefix + name], "lo": summary[prefix + name + "_lo"],
            "hi": summary[prefix + name + "_hi"],
            "p_holm": summary["p_holm_" + name], "change": summary["sig_" + name].map(SIG_NAMES),
        }))
    return pd.concat(parts, ignore_index=True)


def _panels(layered: alt.LayerChart, summary: pd.DataFrame, metrics: list[str] | None, width, title: str):
    """One panel per metric side by side (a facet), or with a single metric a plain layer chart, which
    can take ``width="container"`` and so never overflows the page."""
    if metrics is not None and len(metrics) == 1:
        return layered.properties(width=width, height=alt.Step(16), title=_title(METRIC_TITLES[metrics[0]], title))
    return (
        layered.properties(width=width, height=alt.Step(16))
        .facet(column=alt.Column("metric:N", sort=_metric_order(summary, metrics), title=None))
        .resolve_scale(x="independent")
        .properties(title=_title(title))
    )


def _metric_order(summary: pd.DataFrame, metrics: list[str] | None = None) -> list[str]:
    return [METRIC_TITLES[m] for m in (metrics or [m for m in METRICS if m != "caption_score" or has_captions(summary)])]


def _title(text: str, *notes: str) -> alt.TitleParams:
    """A short title; the notes on lines of their own below it (a long single line is cut on narrow screens)."""
    return alt.TitleParams(text=text, subtitle=list(notes)) if notes else alt.TitleParams(text=text)


def _tooltip(*fields: tuple[str, str]) -> list[alt.Tooltip]:
    return [alt.Tooltip(f"{f}:{t}", format=TOOLTIP_FORMAT) if t == "Q" else alt.Tooltip(f"{f}:{t}") for f, t in fields]


def table1_chart(summary: pd.DataFrame, metrics: list[str] | None = None, width: int | str = 220):
    """Per ablation, each metric's mean with its 95% bootstrap interval (one panel per metric, or the one
    metric asked for)."""
    long = _summary_long(summary, metrics=metrics)
    order = list(summary["ablation"])
    base = alt.Chart().encode(y=alt.Y("ablation:N", sort=order, title=None, axis=FULL_LABELS))
    bars = base.mark_bar(opacity=0.8).encode(
        x=alt.X("mean:Q", title=None),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
    return _panels(alt.layer(bars, whiskers, data=long), summary, metrics, width,
                   "mean, 95% interval")


def change_chart(summary: pd.DataFrame, metrics: list[str] | None = None, width: int | str = 220):
    """Per ablation, each metric's change against baseline with its paired 95% interval, coloured by the
    significance rule (Holm-adjusted McNemar for accuracy, the paired t-test for the scores)."""
    long = _summary_long(summary, prefix="d_", metrics=metrics).dropna(subset=["mean"])  # baseline: no change
    order = [a for a in summary["ablation"] if a in set(long["ablation"])]
    base = alt.Chart().encode(y=alt.Y("ablation:N", sort=order, title=None, axis=FULL_LABELS))
    points = base.mark_point(filled=True, size=50).encode(
        x=alt.X("mean:Q", title=None),
        color=alt.Color("change:N", title=SIG_TITLE, scale=SIG_SCALE,
                        legend=alt.Legend(orient="bottom", direction="vertical")),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q"),
                         ("p_holm", "Q"), ("change", "N")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
    zero = alt.Chart().mark_rule(strokeDash=[4, 3], color="#555").encode(x=alt.datum(0))
    return _panels(alt.layer(zero, whiskers, points, data=long), summary, metrics, width,
                   "change vs baseline, 95% interval")


def _one_metric(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return pd.DataFrame({
        "ablation": summary["ablation"], "ablation_id": summary["ablation_id"], "kind": summary["kind"],
        "n_layers": summary["n_layers"], "first_layer": summary["first_layer"], "images": summary["images"],
        "mean": summary[metric], "lo": summary[metric + "_lo"], "hi": summary[metric + "_hi"],
        "change": summary["sig_" + metric].map(SIG_NAMES),
    })


def _baseline_rule(summary: pd.DataFrame, metric: str, axis: str = "y") -> alt.Chart:
    base = summary.loc[summary["kind"] == "baseline", metric]
    values = [float(base.iloc[0])] if len(base) and pd.notna(base.iloc[0]) else []  # none before it is computed
    rule = alt.Chart(pd.DataFrame({"baseline": values}, dtype=float)).mark_rule(strokeDash=[6, 4], color="#444")
    return rule.encode(**{axis: alt.Y("baseline:Q") if axis == "y" else alt.X("baseline:Q")},
                       tooltip=_tooltip(("baseline", "Q")))


def layer_curve(summary: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Single-layer ablations: ``metric`` against the layer (line, 95% band), one colour per kind; filled
    points are significant changes against baseline (the rule), hollow ones are not; the dashed line is
    baseline."""
    data = _one_metric(summary, metric)
    # whole single layers only: one point per kind and layer (head-level and knockout ablations have their
    # own views, Heads and Flow)
    whole = (summary["n_heads"] == 0) & (summary["target"] == "") if "n_heads" in summary else True
    data = data[(data["n_layers"] == 1) & whole].rename(columns={"first_layer": "layer"})
    data = data.assign(significant=data["change"] != SIG_NAMES[0])
    base = alt.Chart(data).encode(
        x=alt.X("layer:O", title="ablated layer"),
        color=alt.Color("kind:N", title="kind"),
    )
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=METRIC_TITLES[metric]), y2="hi:Q")
    line = base.mark_line().encode(y=alt.Y("mean:Q"))
    points = base.mark_point(size=45, strokeWidth=1.5).encode(
        y=alt.Y("mean:Q"),
        fill=alt.condition("datum.significant", alt.Fill("kind:N", legend=None), alt.value("white")),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q"),
                         ("change", "N")),
    )
    return alt.layer(band, line, points, _baseline_rule(summary, metric)).properties(
        title=_title(f"{METRIC_TITLES[metric]} per ablated layer", "95% band; filled: p (Holm) < 0.05", "dashed: baseline"),
        height=260)


def block_bars(summary: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Ablations of several layers at once (blocks, all layers): ``metric`` with its 95% interval; a star
    marks a significant change against baseline (the rule)."""
    data = _one_metric(summary, metric)
    data = data[data["n_layers"] > 1]
    data = data.assign(mark=(data["change"] != SIG_NAMES[0]).map({True: "*", False: ""}))
    order = list(data["ablation"])
    base = alt.Chart(data).encode(x=alt.X("ablation:N", sort=order, title=None, axis=SLANTED))
    bars = base.mark_bar(opacity=0.8).encode(
        y=alt.Y("mean:Q", title=METRIC_TITLES[metric]),
        color=alt.Color("kind:N", title="kind"),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q"),
                         ("change", "N")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=METRIC_TITLES[metric]), y2="hi:Q")
    stars = base.mark_text(dy=-8, fontSize=14, fontWeight="bold").encode(y=alt.Y("hi:Q"), text="mark:N")
    return alt.layer(bars, whiskers, stars, _baseline_rule(summary, metric)).properties(
        title=_title(f"{METRIC_TITLES[metric]} per block", "95% interval; *: p (Holm) < 0.05", "dashed: baseline"),
        height=340)


def label_heatmap(label_accuracy: pd.DataFrame, ablations: pd.DataFrame) -> alt.LayerChart:
    """Accuracy per ablation (columns, sweep order) x true label (rows)."""
    data = label_accuracy.merge(ablations[["ablation_id", "ablation"]], on="ablation_id")
    order = list(ablations["ablation"])
    base = alt.Chart(data).encode(
        x=alt.X("ablation:N", sort=order, title=None, axis=SLANTED),
        y=alt.Y("label:N", title="true label", axis=FULL_LABELS),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="accuracy"),
        tooltip=_tooltip(("ablation", "N"), ("label", "N"), ("images", "N"), ("accuracy", "Q")),
    )
    layers = [cells]
    if data["label"].nunique() <= 12:  # numbers stay legible only on small grids
        layers.append(base.mark_text(fontSize=9).encode(
            text=alt.Text("accuracy:Q", format=".2f"),
            color=alt.condition("datum.accuracy > 0.6", alt.value("black"), alt.value("white"))))
    return alt.layer(*layers).properties(title=_title("accuracy per ablation x true label"))


def confusion_chart(confusion: pd.DataFrame, ablation: str) -> alt.LayerChart:
    """Images per true label (rows) x selected label (columns) under one ablation; each image counts once
    (a wrong pick of an image with k labels adds 1/k to each of its rows; see queries.CONFUSION)."""
    base = alt.Chart(confusion).encode(
        x=alt.X("selected_label:N", title="selected label", axis=SLANTED),
        y=alt.Y("true_label:N", title="true label", axis=FULL_LABELS),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues"), title="images"),
        tooltip=[alt.Tooltip("true_label:N"), alt.Tooltip("selected_label:N"), alt.Tooltip("images:Q", format=".3~f")],
    )
    layers = [cells]
    if max(confusion["true_label"].nunique(), confusion["selected_label"].nunique(), 0) <= 12:
        layers.append(base.mark_text(fontSize=10).encode(text=alt.Text("images:Q", format=".3~f")))
    return alt.layer(*layers).properties(title=_title(f"true x selected label: {ablation}", "each image counted once"))


def logit_heatmap(scores: pd.DataFrame, selections: pd.DataFrame, highlight: str | None = None) -> alt.LayerChart:
    """One image: the logit of every prompt (rows, full text) under every ablation (columns); outlined: the
    selected prompt; ``highlight``: an ablation whose column is framed and whose label is bold."""
    order = list(dict.fromkeys(scores.sort_values("ablation_id")["ablation"]))
    prompts = list(dict.fromkeys(scores.sort_values("prompt_id")["prompt"]))
    picked = selections[["ablation", "selected_prompt"]].rename(columns={"selected_prompt": "prompt"})
    picked = picked.merge(scores, on=["ablation", "prompt"])
    x_axis = alt.Axis(labelAngle=-60, labelOverlap=False, labelLimit=240,
                      labelFontWeight=alt.ExprRef(f"datum.value === {_js(highlight)} ? 'bold' : 'normal'")
                      if highlight else "normal")
    enc = {
        "x": alt.X("ablation:N", sort=order, title=None, axis=x_axis),
        "y": alt.Y("prompt:N", sort=prompts, title=None, axis=FULL_LABELS),
    }
    cells = alt.Chart(scores).mark_rect().encode(
        **enc,
        color=alt.Color("logit:Q", scale=alt.Scale(scheme="viridis"), title="logit"),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("label", "N"), ("logit", "Q"), ("prob", "Q")),
    )
    outline = alt.Chart(picked).mark_rect(fillOpacity=0, stroke="#e45756", strokeWidth=2).encode(**enc)
    layers = [cells, outline]
    notes = ["outlined: the selected prompt"]
    if highlight and highlight in order:
        column = scores[scores["ablation"] == highlight].drop_duplicates("ablation")
        layers.append(alt.Chart(column).mark_rect(fillOpacity=0, stroke="black", strokeWidth=2.5).encode(
            x=enc["x"], y=alt.value(0), y2=alt.value("height")))
        notes.append(f"framed: {highlight}")
    return alt.layer(*layers).properties(title=_title("logit per prompt and ablation", *notes))


def _js(text: str | None) -> str:
    """A JavaScript string literal for a Vega expression (JSON's escaping is JavaScript's)."""
    return json.dumps(text)


def logit_bars(scores: pd.DataFrame, ablations: list[str], top: int = 12) -> alt.Chart:
    """One image: logits of the ``top`` prompts (by their highest logit) under a few ablations, grouped."""
    data = scores[scores["ablation"].isin(ablations)]
    keep = data.groupby("prompt")["logit"].max().nlargest(top).index
    data = data[data["prompt"].isin(keep)]
    prompts = list(dict.fromkeys(data.sort_values("prompt_id")["prompt"]))
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("prompt:N", sort=prompts, title=None, axis=FULL_LABELS),
        x=alt.X("logit:Q", title="logit"),
        color=alt.Color("ablation:N", sort=ablations, title=None, legend=alt.Legend(orient="bottom")),
        yOffset=alt.YOffset("ablation:N", sort=ablations),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("logit", "Q"), ("prob", "Q")),
    ).properties(title=_title(f"logits of the top {len(keep)} prompts", " vs ".join(ablations)))


def compare_chart(compare_labels: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    """Per true label, accuracy of B minus accuracy of A on the images both computed."""
    data = compare_labels.assign(a=name_a, b=name_b)
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort="x", title="true label", axis=FULL_LABELS),
        x=alt.X("difference:Q", title="accuracy of B minus A"),
        color=alt.condition("datum.difference < 0", alt.value("#d62728"), alt.value("#2ca02c")),
        tooltip=_tooltip(("label", "N"), ("images", "N"), ("accuracy_a", "Q"), ("accuracy_b", "Q"),
                         ("difference", "Q")),
    ).properties(title=_title("per-label accuracy, B minus A", f"A: {name_a}", f"B: {name_b}"))


def lab_accuracy_chart(accuracy: pd.DataFrame) -> alt.Chart:
    """Prompt lab: accuracy of the typed prompts under every ablation (bars, sweep order)."""
    return alt.Chart(accuracy).mark_bar().encode(
        x=alt.X("ablation:N", sort=list(accuracy["ablation"]), title=None, axis=SLANTED),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
        tooltip=_tooltip(("ablation", "N"), ("accuracy", "Q"), ("change", "Q")),
    ).properties(title=_title("accuracy of these prompts per ablation"))


def embedding_chart(moves: pd.DataFrame, colour: str, colour_title: str, ablation: str,
                    baseline: str = "baseline") -> alt.LayerChart:
    """Images in the 2-D frame of the baseline embeddings' PCA: a hollow point at baseline, a filled one
    under ``ablation``, a line between them; coloured by the column ``colour``."""
    colour_enc = alt.Color(f"{colour}:N", title=colour_title, legend=alt.Legend(orient="bottom", columns=4,
                                                                                   labelLimit=240))
    tooltip = [alt.Tooltip("image_id:N"), alt.Tooltip("label:N", title="true label"),
               alt.Tooltip(f"{colour}:N", title=colour_title), alt.Tooltip("cosine:Q", format=".3f")]
    lines = alt.Chart(moves).mark_rule(opacity=0.35, strokeWidth=0.8, color="#888").encode(
        x=alt.X("x0:Q", title="PC 1 (of baseline)"), y=alt.Y("y0:Q", title="PC 2 (of baseline)"), x2="x1:Q", y2="y1:Q")
    before = alt.Chart(moves).mark_point(size=30, filled=False, opacity=0.7).encode(
        x="x0:Q", y="y0:Q", color=colour_enc, tooltip=tooltip)
    after = alt.Chart(moves).mark_point(size=30, filled=True, opacity=0.85).encode(
        x="x1:Q", y="y1:Q", color=colour_enc, tooltip=tooltip)
    return alt.layer(lines, before, after).properties(
        height=460, title=_title("image embeddings, PCA of baseline", f"hollow: {baseline}; filled: {ablation}"))


def movement_bars(shift: pd.DataFrame) -> alt.Chart:
    """Per ablation (sweep order), the mean cosine of each image's embedding under it with its baseline one."""
    return alt.Chart(shift).mark_bar().encode(
        x=alt.X("ablation:N", sort=list(shift["ablation"]), title=None, axis=SLANTED),
        y=alt.Y("cosine:Q", title="mean cosine with baseline", scale=alt.Scale(domain=[min(0.0, float(shift["cosine"].min())), 1])),
        tooltip=_tooltip(("ablation", "N"), ("cosine", "Q"), ("images", "N")),
    ).properties(title=_title("mean cosine with baseline", "1: the embeddings do not move"), height=360)



# --------------------------------------------------------------------------------------------------
# Heads and token flow (data from analysis.heads).

HOLDS_NOTE = "outlined: holds after Holm's correction of McNemar's test"


def head_heatmap(cells: pd.DataFrame, metric: str = "accuracy", group: str = "identity") -> alt.LayerChart:
    """Layer (rows, 1 at the top) x head (columns): the change of ``metric`` against baseline when that one
    head of ``group`` (heads.group_of) is ablated; outlined cells hold after Holm's correction. A point selection named "cell" carries
    the clicked cell's ablation (the Heads page opens the Failures page for it)."""
    data = cells.assign(head_label="h" + cells["head"].astype(str), holds_text=cells["holds"].map({True: "yes", False: "no"}))
    heads = [f"h{h}" for h in sorted(cells["head"].unique())]
    extent = float(np.nanmax(np.abs(data[["lo", "hi", "change"]].to_numpy()))) if len(data) else 0.0
    extent = extent if extent > 0 else 1e-3
    cell = alt.selection_point(name="cell", fields=["ablation"], on="click", clear=False)
    enc = {
        "x": alt.X("head_label:O", sort=heads, title="head", axis=alt.Axis(labelAngle=0, orient="top")),
        "y": alt.Y("layer:O", title="layer"),
    }
    title = f"Change in {METRIC_TITLES[metric]} against baseline"
    rects = alt.Chart(data).mark_rect(cursor="pointer").encode(
        **enc,
        color=alt.Color("change:Q", title=f"Δ {METRIC_TITLES[metric]}",
                        scale=alt.Scale(scheme="redblue", domain=[-extent, extent], domainMid=0)),
        tooltip=[alt.Tooltip("ablation:N"), alt.Tooltip("images:Q"),
                 alt.Tooltip("change:Q", format="+.4f", title=f"Δ {METRIC_TITLES[metric]}"),
                 alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
                 alt.Tooltip("hi:Q", format="+.4f", title="95% interval to"),
                 alt.Tooltip("p_holm:Q", format=".3g", title="McNemar p (Holm)"),
                 alt.Tooltip("holds_text:N", title="holds after Holm")],
    ).add_params(cell)
    holds = alt.Chart(data).transform_filter("datum.holds").mark_rect(
        fill=None, stroke="black", strokeWidth=2.5).encode(**enc)
    layers = [rects, holds]
    if len(heads) <= 16:  # numbers stay legible only on small grids
        layers.append(alt.Chart(data).mark_text(fontSize=9).encode(
            **enc, text=alt.Text("change:Q", format="+.2f"),
            color=alt.condition(f"abs(datum.change) > {extent * 0.6}", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(
        title={"text": f"{title}: {group} on one head at a time", "subtitle": f"{HOLDS_NOTE}; click a cell "
               "to open its failures"},
        width=alt.Step(44), height=alt.Step(22))


def flow_chart(cells: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Per layer, the change of ``metric`` against baseline when one flow of information is knocked out in
    that layer alone, with its 95% paired interval; filled points hold after Holm's correction."""
    # Imported here, not above: compute.ablations brings torch (1-2 s), which no other chart needs.
    from compute.kinds import TARGETS

    data = cells.assign(holds_text=cells["holds"].map({True: "yes", False: "no"}))
    targets = [t for t in TARGETS if t in set(data["target"])]
    base = alt.Chart(data).encode(
        x=alt.X("layer:O", title="layer knocked out", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("target:N", sort=targets),
        color=alt.Color("target:N", sort=targets, title="blocked flow (keys > queries)"),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=f"Δ {METRIC_TITLES[metric]}"), y2="hi:Q")
    tooltip = [alt.Tooltip("ablation:N"), alt.Tooltip("images:Q"),
               alt.Tooltip("change:Q", format="+.4f", title=f"Δ {METRIC_TITLES[metric]}"),
               alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
               alt.Tooltip("hi:Q", format="+.4f", title="95% interval to"),
               alt.Tooltip("p_holm:Q", format=".3g", title="McNemar p (Holm)"),
               alt.Tooltip("holds_text:N", title="holds after Holm")]
    # filled where the change holds after Holm, open elsewhere (two layers: one colour legend)
    held = base.transform_filter("datum.holds").mark_point(filled=True, size=70, opacity=1).encode(
        y=alt.Y("change:Q"), tooltip=tooltip)
    open_ = base.transform_filter("!datum.holds").mark_point(size=70, strokeWidth=2).encode(
        y=alt.Y("change:Q"), tooltip=tooltip)
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="zero:Q")
    return alt.layer(zero, whiskers, open_, held).properties(
        title={"text": f"Change in {METRIC_TITLES[metric]} when one flow is knocked out in one layer",
               "subtitle": "95% paired bootstrap intervals; filled: holds after Holm's correction of McNemar's test"},
        height=300)
