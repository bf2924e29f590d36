"""Pure Altair chart builders: DataFrames in, charts out. The pages draw them; the export saves them.

Inputs are already aggregated in DuckDB (Altair's save refuses more than 5,000 rows, and a chart is no
place for raw rows). Discrete axes keep the store's order (ablation_id, prompt_id), not alphabetical.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from dashboard.heads import TARGET_ORDER
from dashboard.tables import METRIC_TITLES, METRICS, has_captions

# Charts get aggregates only (at most labels x labels cells). Altair's 5,000-row guard exists to stop raw
# rows being embedded in a spec; here it would only refuse a confusion matrix of a large label set.
alt.data_transformers.disable_max_rows()

TOOLTIP_FORMAT = ".4f"

SLANTED = alt.Axis(labelAngle=-60, labelOverlap=False)  # every ablation label shown, none overlapping


def _summary_long(summary: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """Table 1 in long form: ablation, ablation_id, metric, mean, lo, hi (one row per ablation x metric)."""
    metrics = [m for m in METRICS if m != "caption_score" or has_captions(summary)]
    parts = []
    for name in metrics:
        parts.append(pd.DataFrame({
            "ablation": summary["ablation"], "ablation_id": summary["ablation_id"],
            "images": summary["images"], "metric": METRIC_TITLES[name],
            "mean": summary[prefix + name], "lo": summary[prefix + name + "_lo"],
            "hi": summary[prefix + name + "_hi"],
        }))
    return pd.concat(parts, ignore_index=True)


def _metric_order(summary: pd.DataFrame) -> list[str]:
    return [METRIC_TITLES[m] for m in METRICS if m != "caption_score" or has_captions(summary)]


def _tooltip(*fields: tuple[str, str]) -> list[alt.Tooltip]:
    return [alt.Tooltip(f"{f}:{t}", format=TOOLTIP_FORMAT) if t == "Q" else alt.Tooltip(f"{f}:{t}") for f, t in fields]


def table1_chart(summary: pd.DataFrame) -> alt.FacetChart:
    """Per ablation, each metric's mean with its 95% bootstrap interval (one panel per metric)."""
    long = _summary_long(summary)
    order = list(summary["ablation"])
    base = alt.Chart().encode(y=alt.Y("ablation:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False)))
    bars = base.mark_bar(opacity=0.8).encode(
        x=alt.X("mean:Q", title=None),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
    return (
        alt.layer(bars, whiskers, data=long)
        .properties(width=220, height=alt.Step(16))
        .facet(column=alt.Column("metric:N", sort=_metric_order(summary), title=None))
        .resolve_scale(x="independent")
        .properties(title="Per ablation: mean and 95% bootstrap interval")
    )


def change_chart(summary: pd.DataFrame) -> alt.FacetChart:
    """Per ablation, each metric's change against baseline with its paired 95% interval."""
    long = _summary_long(summary, prefix="d_")
    long["change"] = "unclear"
    long.loc[long["hi"] < 0, "change"] = "lower"
    long.loc[long["lo"] > 0, "change"] = "higher"
    order = list(summary["ablation"])
    base = alt.Chart().encode(y=alt.Y("ablation:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False)))
    points = base.mark_point(filled=True).encode(
        x=alt.X("mean:Q", title=None),
        color=alt.Color("change:N", title="95% interval",
                        scale=alt.Scale(domain=["lower", "unclear", "higher"], range=["#d62728", "#7f7f7f", "#2ca02c"])),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
    zero = alt.Chart().mark_rule(strokeDash=[4, 3], color="#555").encode(x=alt.datum(0))
    return (
        alt.layer(zero, whiskers, points, data=long)
        .properties(width=220, height=alt.Step(16))
        .facet(column=alt.Column("metric:N", sort=_metric_order(summary), title=None))
        .resolve_scale(x="independent")
        .properties(title="Change against baseline, paired on images, with 95% interval")
    )


def _one_metric(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return pd.DataFrame({
        "ablation": summary["ablation"], "ablation_id": summary["ablation_id"], "kind": summary["kind"],
        "n_layers": summary["n_layers"], "first_layer": summary["first_layer"], "images": summary["images"],
        "mean": summary[metric], "lo": summary[metric + "_lo"], "hi": summary[metric + "_hi"],
    })


def _baseline_rule(summary: pd.DataFrame, metric: str, axis: str = "y") -> alt.Chart:
    base = summary.loc[summary["kind"] == "baseline", metric]
    values = [float(base.iloc[0])] if len(base) and pd.notna(base.iloc[0]) else []  # none before it is computed
    rule = alt.Chart(pd.DataFrame({"baseline": values}, dtype=float)).mark_rule(strokeDash=[6, 4], color="#444")
    return rule.encode(**{axis: alt.Y("baseline:Q") if axis == "y" else alt.X("baseline:Q")},
                       tooltip=_tooltip(("baseline", "Q")))


def layer_curve(summary: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Single-layer ablations: ``metric`` against the layer (line, 95% band), one colour per kind; the
    dashed line is baseline."""
    data = _one_metric(summary, metric)
    # whole single layers only: one point per kind and layer (head-level and knockout ablations have their
    # own views, Heads and Flow)
    whole = (summary["n_heads"] == 0) & (summary["target"] == "") if "n_heads" in summary else True
    data = data[(data["n_layers"] == 1) & whole].rename(columns={"first_layer": "layer"})
    base = alt.Chart(data).encode(
        x=alt.X("layer:O", title="ablated layer"),
        color=alt.Color("kind:N", title="kind"),
    )
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=METRIC_TITLES[metric]), y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q"),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    return alt.layer(band, line, _baseline_rule(summary, metric)).properties(
        title=f"{METRIC_TITLES[metric]} per single ablated layer (95% band; dashed: baseline)", height=260)


def block_bars(summary: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Ablations of several layers at once (blocks, all layers): ``metric`` with its 95% interval."""
    data = _one_metric(summary, metric)
    data = data[data["n_layers"] > 1]
    order = list(data["ablation"])
    base = alt.Chart(data).encode(x=alt.X("ablation:N", sort=order, title=None, axis=SLANTED))
    bars = base.mark_bar(opacity=0.8).encode(
        y=alt.Y("mean:Q", title=METRIC_TITLES[metric]),
        color=alt.Color("kind:N", title="kind"),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=METRIC_TITLES[metric]), y2="hi:Q")
    return alt.layer(bars, whiskers, _baseline_rule(summary, metric)).properties(
        title=f"{METRIC_TITLES[metric]} per block of layers (95% interval; dashed: baseline)", height=260)


def label_heatmap(label_accuracy: pd.DataFrame, ablations: pd.DataFrame) -> alt.LayerChart:
    """Accuracy per ablation (columns, sweep order) x true label (rows)."""
    data = label_accuracy.merge(ablations[["ablation_id", "ablation"]], on="ablation_id")
    order = list(ablations["ablation"])
    base = alt.Chart(data).encode(
        x=alt.X("ablation:N", sort=order, title=None, axis=SLANTED),
        y=alt.Y("label:N", title="true label"),
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
    return alt.layer(*layers).properties(title="Accuracy per ablation x true label")


def confusion_chart(confusion: pd.DataFrame, ablation: str) -> alt.LayerChart:
    """Images per true label (rows) x selected label (columns) under one ablation."""
    base = alt.Chart(confusion).encode(
        x=alt.X("selected_label:N", title="selected label", axis=SLANTED),
        y=alt.Y("true_label:N", title="true label"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues"), title="images"),
        tooltip=_tooltip(("true_label", "N"), ("selected_label", "N"), ("images", "N")),
    )
    layers = [cells]
    if max(confusion["true_label"].nunique(), confusion["selected_label"].nunique(), 0) <= 12:
        layers.append(base.mark_text(fontSize=10).encode(text="images:Q"))
    return alt.layer(*layers).properties(title=f"True x selected label under {ablation}")


def logit_heatmap(scores: pd.DataFrame, selections: pd.DataFrame) -> alt.LayerChart:
    """One image: the logit of every prompt (rows) under every ablation (columns); outlined: selected."""
    order = list(dict.fromkeys(scores.sort_values("ablation_id")["ablation"]))
    prompts = list(dict.fromkeys(scores.sort_values("prompt_id")["prompt"]))
    picked = selections[["ablation", "selected_prompt"]].rename(columns={"selected_prompt": "prompt"})
    picked = picked.merge(scores, on=["ablation", "prompt"])
    enc = {
        "x": alt.X("ablation:N", sort=order, title=None, axis=SLANTED),
        "y": alt.Y("prompt:N", sort=prompts, title=None),
    }
    cells = alt.Chart(scores).mark_rect().encode(
        **enc,
        color=alt.Color("logit:Q", scale=alt.Scale(scheme="viridis"), title="logit"),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("label", "N"), ("logit", "Q"), ("prob", "Q")),
    )
    outline = alt.Chart(picked).mark_rect(fillOpacity=0, stroke="#e45756", strokeWidth=2).encode(**enc)
    return alt.layer(cells, outline).properties(
        title="Logit per prompt under every ablation (outlined: the selected prompt)")


def logit_bars(scores: pd.DataFrame, ablations: list[str], top: int = 12) -> alt.Chart:
    """One image: logits of the ``top`` prompts (by their highest logit) under a few ablations, grouped."""
    data = scores[scores["ablation"].isin(ablations)]
    keep = data.groupby("prompt")["logit"].max().nlargest(top).index
    data = data[data["prompt"].isin(keep)]
    prompts = list(dict.fromkeys(data.sort_values("prompt_id")["prompt"]))
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("prompt:N", sort=prompts, title=None),
        x=alt.X("logit:Q", title="logit"),
        color=alt.Color("ablation:N", sort=ablations, title=None),
        yOffset=alt.YOffset("ablation:N", sort=ablations),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("logit", "Q"), ("prob", "Q")),
    ).properties(title=f"Logits of the top {len(keep)} prompts: " + " vs ".join(ablations))


def compare_chart(compare_labels: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    """Per true label, accuracy of B minus accuracy of A on the images both computed."""
    data = compare_labels.assign(a=name_a, b=name_b)
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort="x", title="true label"),
        x=alt.X("difference:Q", title="accuracy of B minus A"),
        color=alt.condition("datum.difference < 0", alt.value("#d62728"), alt.value("#2ca02c")),
        tooltip=_tooltip(("label", "N"), ("images", "N"), ("accuracy_a", "Q"), ("accuracy_b", "Q"),
                         ("difference", "Q")),
    ).properties(title=f"Per-label accuracy: B ({name_b}) minus A ({name_a})")


def lab_accuracy_chart(accuracy: pd.DataFrame) -> alt.Chart:
    """Prompt lab: accuracy of the typed prompts under every ablation (bars, sweep order)."""
    return alt.Chart(accuracy).mark_bar().encode(
        x=alt.X("ablation:N", sort=list(accuracy["ablation"]), title=None, axis=SLANTED),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
        tooltip=_tooltip(("ablation", "N"), ("accuracy", "Q"), ("change", "Q")),
    ).properties(title="Accuracy of these prompts per ablation")


# --------------------------------------------------------------------------------------------------
# Heads and token flow (data from dashboard.heads).

HOLDS_NOTE = "outlined: holds after Holm's correction of McNemar's test"


def head_heatmap(cells: pd.DataFrame, metric: str = "accuracy", family: str = "identity") -> alt.LayerChart:
    """Layer (rows, 1 at the top) x head (columns): the change of ``metric`` against baseline when that one
    head is ablated; outlined cells hold after Holm's correction. A point selection named "cell" carries
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
        title={"text": f"{title}: {family} on one head at a time", "subtitle": f"{HOLDS_NOTE}; click a cell "
               "to open its failures"},
        width=alt.Step(44), height=alt.Step(22))


def flow_chart(cells: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Per layer, the change of ``metric`` against baseline when one flow of information is knocked out in
    that layer alone, with its 95% paired interval; filled points hold after Holm's correction."""
    data = cells.assign(holds_text=cells["holds"].map({True: "yes", False: "no"}))
    targets = [t for t in TARGET_ORDER if t in set(data["target"])]
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
