"""Pure Altair chart builders: DataFrames in, charts out. The pages draw them; the export saves them.

Inputs are already aggregated in DuckDB (Altair's save refuses more than 5,000 rows, and a chart is no
place for raw rows). Discrete axes keep the store's order (ablation_id, prompt_id), not alphabetical.

One palette for the screen and the files (``PALETTE``, colour-blind safe): every colour a builder uses is
written into its spec, so neither Streamlit's theme nor Vega's defaults choose one. Significance is told by
colour, by the marker's shape (a triangle pointing the way of the change) and by its fill (filled: holds
under the rule; hollow, white-filled: it does not), so it reads in grey print and for colour-blind readers.
Accuracy axes zoom to the data unless asked for 0 to 1 (``full``).

Long because it is every chart of every page in one place, where the palette and the marks are decided once.
"""

from __future__ import annotations

import json
import math
from functools import partial

import altair as alt
import numpy as np
import pandas as pd

from analysis.stats import ALPHA
from analysis.subsets import MAX_LABELS
from analysis.tables import DIGITS, METRIC_TITLES, METRICS, blocks, has_captions, number, single_layers
from compute.kinds import TARGETS

# Charts get aggregates only (at most labels x labels cells). Altair's 5,000-row guard exists to stop raw
# rows being embedded in a spec; here it would only refuse a confusion matrix of a large label set.
alt.data_transformers.disable_max_rows()

TOOLTIP_FORMAT = ".4f"

# Okabe & Ito's colour-blind-safe palette (Wong, Nature Methods 8:441, 2011), blue first: every categorical
# colour on screen and in the exported files (analysis.figures) comes from here, in this order.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GREY = "#8C8C8C"
# Seven marker shapes: with eight colours, 56 (colour, shape) pairs before one repeats (7 and 8 are coprime).
SHAPES = ["circle", "square", "triangle-up", "diamond", "cross", "triangle-down", "wedge"]
HOLLOW = "white"  # the fill of a marker that does not hold: opaque, so a rule behind it cannot hide it

SLANTED = alt.Axis(labelAngle=-60, labelOverlap=False, labelLimit=240)  # every ablation label, whole
# Ablations across a heatmap: upright labels take the least width (a label's height, ~11 px a column), so up to
# analysis.subsets.MAX_LABELS columns stay apart on an 800 px screen too.
UPRIGHT = alt.Axis(labelAngle=-90, labelOverlap=False, labelLimit=240, labelFontSize=10)
BOTTOM = alt.Legend(orient="bottom")  # a legend under a heatmap leaves its width to the cells
FULL_LABELS = alt.Axis(labelOverlap=False, labelLimit=400)  # prompts and labels never cut to "a photo of a…"
# The one significance rule (analysis.stats), as chart colours and legends.
SIG_TITLE = f"Holm-adjusted p < {ALPHA}"
SIG_NAMES = {-1: "significantly lower", 0: "not significant", 1: "significantly higher"}
SIG_COLOURS = [PALETTE[3], GREY, PALETTE[0]]  # lower: vermillion, not significant: grey, higher: blue
SIG_SHAPES = ["triangle-down", "circle", "triangle-up"]
SIG_SCALE = alt.Scale(domain=list(SIG_NAMES.values()), range=SIG_COLOURS)
SIG_SHAPE_SCALE = alt.Scale(domain=list(SIG_NAMES.values()), range=SIG_SHAPES)
SIG_NOTE = "filled ▼ lower, ▲ higher: p (Holm) < 0.05; hollow ○: not significant"


def category_scale(domain: list | None = None) -> alt.Scale:
    """The palette as a nominal scale (``domain``: the categories in the order their colours go)."""
    return alt.Scale(range=PALETTE) if domain is None else alt.Scale(domain=list(domain), range=PALETTE)


def shape_scale(domain: list | None = None) -> alt.Scale:
    return alt.Scale(range=SHAPES) if domain is None else alt.Scale(domain=list(domain), range=SHAPES)


def zoom(values, metric: str = "accuracy", full: bool = False) -> alt.Scale:
    """An axis over ``values`` with a little room (accuracy kept inside 0-1), or with ``full`` an accuracy axis
    from 0 to 1: a 0-1 axis squeezes 0.84-1.00 into its top sixth."""
    if full and metric == "accuracy":
        return alt.Scale(domain=[0, 1])
    v = pd.to_numeric(pd.Series(list(values), dtype=float), errors="coerce").dropna()
    if v.empty:
        return alt.Scale(zero=False)
    lo, hi = float(v.min()), float(v.max())
    pad = max((hi - lo) * 0.08, 0.005)
    lo, hi = lo - pad, hi + pad
    if metric == "accuracy":
        lo, hi = max(0.0, lo), min(1.0, hi)
    return alt.Scale(domain=[round(lo, 4), round(hi, 4)], zero=False, nice=False)


def axis_note(metric: str, full: bool) -> str:
    return "axis 0 to 1" if full and metric == "accuracy" else "axis zoomed to the data"


def _significance(base: alt.Chart, field: str, colour: alt.Color | None = None, size: int = 60, **encoding):
    """A point per row marked by the one rule: ``field`` holds SIG_NAMES; its shape says the direction, a
    filled marker holds, a hollow (white-filled) one does not. Colour: ``colour`` (e.g. the kind), else the
    verdict's own, with one legend for shape and colour. With another colour the chart's subtitle says what
    the shapes mean (SIG_NOTE): a Vega legend of shapes alone would draw its symbols without colour or fill."""
    legend = alt.Legend(orient="bottom", direction="vertical", title=SIG_TITLE) if colour is None else None
    shape = alt.Shape(f"{field}:N", scale=SIG_SHAPE_SCALE, legend=legend)
    stroke = colour if colour is not None else alt.Color(f"{field}:N", scale=SIG_SCALE, legend=legend)
    same = {k: v for k, v in stroke.to_dict().items() if k in ("field", "type", "scale", "sort")}
    fill = alt.condition(f"datum.{field} !== {_js(SIG_NAMES[0])}", alt.Fill(**same, legend=legend if colour is None else alt.Undefined), alt.value(HOLLOW))
    return base.mark_point(size=size, strokeWidth=1.8, opacity=1).encode(shape=shape, color=stroke, fill=fill,
                                                                         **encoding)


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
    bars = base.mark_bar(opacity=0.8, color=PALETTE[0]).encode(
        x=alt.X("mean:Q", title=None),
        tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"), ("hi", "Q")),
    )
    whiskers = base.mark_errorbar(ticks=True, color="black").encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
    return _panels(alt.layer(bars, whiskers, data=long), summary, metrics, width,
                   "mean, 95% interval")


def change_chart(summary: pd.DataFrame, metrics: list[str] | None = None, width: int | str = 220):
    """Per ablation, each metric's change against baseline with its paired 95% interval, marked by the
    significance rule (Holm-adjusted McNemar for accuracy, the paired t-test for the scores)."""
    long = _summary_long(summary, prefix="d_", metrics=metrics).dropna(subset=["mean"])  # baseline: no change
    order = [a for a in summary["ablation"] if a in set(long["ablation"])]
    base = alt.Chart().encode(y=alt.Y("ablation:N", sort=order, title=None, axis=FULL_LABELS))
    points = _significance(base, "change", x=alt.X("mean:Q", title=None),
                           tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"),
                                            ("hi", "Q"), ("p_holm", "Q"), ("change", "N")))
    whiskers = base.mark_errorbar(ticks=True, color=GREY).encode(x=alt.X("lo:Q", title=None), x2="hi:Q")
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


def _baseline_value(summary: pd.DataFrame, metric: str) -> list[float]:
    base = summary.loc[summary["kind"] == "baseline", metric]
    return [float(base.iloc[0])] if len(base) and pd.notna(base.iloc[0]) else []  # none before it is computed


def _baseline_rule(summary: pd.DataFrame, metric: str, axis: str = "y") -> alt.Chart:
    rule = alt.Chart(pd.DataFrame({"baseline": _baseline_value(summary, metric)}, dtype=float)).mark_rule(
        strokeDash=[6, 4], color="#444")
    return rule.encode(**{axis: alt.Y("baseline:Q") if axis == "y" else alt.X("baseline:Q")},
                       tooltip=_tooltip(("baseline", "Q")))


def layer_curve(summary: pd.DataFrame, metric: str = "accuracy", full: bool = False) -> alt.LayerChart:
    """Single-layer ablations: ``metric`` against the layer (line, 95% band), one colour per kind; each point
    marked by the rule (shape and fill); the dashed line is baseline. ``full``: an accuracy axis from 0 to 1
    instead of one zoomed to the data."""
    data = _one_metric(summary[single_layers(summary)], metric).rename(columns={"first_layer": "layer"})
    # whole single layers only: one point per kind and layer (head-level and knockout ablations have their
    # own views, Heads and Flow)
    kinds = list(dict.fromkeys(data["kind"]))
    y_scale = zoom([*data["lo"], *data["hi"], *_baseline_value(summary, metric)], metric, full)
    colour = alt.Color("kind:N", title="kind", scale=category_scale(kinds))
    base = alt.Chart(data).encode(x=alt.X("layer:O", title="ablated layer", axis=alt.Axis(labelAngle=0)),
                                  color=colour)
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title=METRIC_TITLES[metric], scale=y_scale), y2="hi:Q")
    line = base.mark_line().encode(y=alt.Y("mean:Q", scale=y_scale))
    points = _significance(base, "change", colour, y=alt.Y("mean:Q", scale=y_scale),
                           tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"),
                                            ("hi", "Q"), ("change", "N")))
    return alt.layer(band, line, _baseline_rule(summary, metric), points).properties(
        title=_title(f"{METRIC_TITLES[metric]} per ablated layer", f"95% band; {SIG_NOTE}",
                     f"dashed: baseline; {axis_note(metric, full)}"),
        height=280)


def block_bars(summary: pd.DataFrame, metric: str = "accuracy", full: bool = False) -> alt.LayerChart:
    """Ablations of several layers at once (blocks, all layers): ``metric`` with its 95% interval, one row
    per block (labels whole, however long), each point marked by the rule; dashed: baseline."""
    data = _one_metric(summary[blocks(summary)], metric)
    order = list(data["ablation"])
    kinds = list(dict.fromkeys(data["kind"]))
    x_scale = zoom([*data["lo"], *data["hi"], *_baseline_value(summary, metric)], metric, full)
    base = alt.Chart(data).encode(y=alt.Y("ablation:N", sort=order, title=None, axis=FULL_LABELS))
    whiskers = base.mark_errorbar(ticks=True, color=GREY).encode(
        x=alt.X("lo:Q", title=METRIC_TITLES[metric], scale=x_scale), x2="hi:Q")
    points = _significance(base, "change", alt.Color("kind:N", title="kind", scale=category_scale(kinds)),
                           size=70, x=alt.X("mean:Q", scale=x_scale),
                           tooltip=_tooltip(("ablation", "N"), ("images", "N"), ("mean", "Q"), ("lo", "Q"),
                                            ("hi", "Q"), ("change", "N")))
    return alt.layer(_baseline_rule(summary, metric, axis="x"), whiskers, points).properties(
        title=_title(f"{METRIC_TITLES[metric]} per block", f"95% interval; {SIG_NOTE}",
                     f"dashed: baseline; {axis_note(metric, full)}"),
        height=alt.Step(24))


def label_heatmap(label_accuracy: pd.DataFrame, ablations: pd.DataFrame) -> alt.LayerChart:
    """Accuracy per ablation (sweep order) x true label; the ablations run along the x axis, or down the y
    axis when there are more than fit across (labels whole either way)."""
    data = label_accuracy.merge(ablations[["ablation_id", "ablation"]], on="ablation_id")
    order = list(ablations["ablation"])
    ablation_axis = alt.Axis(labelOverlap=False, labelLimit=400)
    if len(order) > MAX_LABELS + 1:  # a subset and baseline fit across
        enc = {"y": alt.Y("ablation:N", sort=order, title=None, axis=ablation_axis),
               "x": alt.X("label:N", title="true label", axis=SLANTED)}
        size = {"height": alt.Step(16)}
    else:
        enc = {"x": alt.X("ablation:N", sort=order, title=None, axis=UPRIGHT),
               "y": alt.Y("label:N", title="true label", axis=FULL_LABELS)}
        size = {}
    base = alt.Chart(data).encode(**enc)
    cells = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="accuracy",
                        legend=BOTTOM),
        tooltip=_tooltip(("ablation", "N"), ("label", "N"), ("images", "N"), ("accuracy", "Q")),
    )
    layers = [cells]
    if data["label"].nunique() <= 12 and len(order) <= 30:  # numbers stay legible only on small grids
        layers.append(base.mark_text(fontSize=10).encode(
            text=alt.Text("accuracy:Q", format=".2f"),
            color=alt.condition("datum.accuracy > 0.6", alt.value("black"), alt.value("white"))))
    return alt.layer(*layers).properties(title=_title("accuracy per ablation x true label"), **size)


def confusion_chart(confusion: pd.DataFrame, ablation: str) -> alt.LayerChart:
    """Images per true label (rows) x selected label (columns) under one ablation; each image counts once
    (a wrong pick of an image with k labels adds 1/k to each of its rows; see queries.CONFUSION)."""
    base = alt.Chart(confusion).encode(
        x=alt.X("selected_label:N", title="selected label", axis=SLANTED),
        y=alt.Y("true_label:N", title="true label", axis=FULL_LABELS),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues"), title="images", legend=BOTTOM),
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
    x_axis = alt.Axis(labelAngle=-90, labelOverlap=False, labelLimit=240, labelFontSize=10,
                      labelFontWeight=alt.ExprRef(f"datum.value === {_js(highlight)} ? 'bold' : 'normal'")
                      if highlight else "normal")
    enc = {
        "x": alt.X("ablation:N", sort=order, title=None, axis=x_axis),
        "y": alt.Y("prompt:N", sort=prompts, title=None, axis=FULL_LABELS),
    }
    cells = alt.Chart(scores).mark_rect().encode(
        **enc,
        color=alt.Color("logit:Q", scale=alt.Scale(scheme="viridis"), title="logit", legend=BOTTOM),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("label", "N"), ("logit", "Q"), ("prob", "Q")),
    )
    outline = alt.Chart(picked).mark_rect(fillOpacity=0, stroke=PALETTE[3], strokeWidth=2).encode(**enc)
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
        color=alt.Color("ablation:N", sort=ablations, title=None, legend=alt.Legend(orient="bottom"),
                        scale=category_scale(ablations)),
        yOffset=alt.YOffset("ablation:N", sort=ablations),
        tooltip=_tooltip(("ablation", "N"), ("prompt", "N"), ("logit", "Q"), ("prob", "Q")),
    ).properties(title=_title(f"logits of the top {len(keep)} prompts", " vs ".join(ablations)))


def compare_chart(compare_labels: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    """Per true label, accuracy of B minus accuracy of A on the images both computed."""
    data = compare_labels.assign(a=name_a, b=name_b)
    # Symmetric about 0, never narrower than ±0.05: which side a bar is on reads at once, and labels that
    # all agree (every difference 0) leave a readable axis rather than one tick of 0.000000.
    extent = max(0.05, float(data["difference"].abs().max()) if len(data) else 0.0)
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort="x", title="true label", axis=FULL_LABELS),
        x=alt.X("difference:Q", title="accuracy of B minus A", scale=alt.Scale(domain=[-extent, extent]),
                axis=alt.Axis(format="+.2f")),
        color=alt.condition("datum.difference < 0", alt.value(SIG_COLOURS[0]), alt.value(SIG_COLOURS[2])),
        tooltip=_tooltip(("label", "N"), ("images", "N"), ("accuracy_a", "Q"), ("accuracy_b", "Q"),
                         ("difference", "Q")),
    ).properties(title=_title("per-label accuracy, B minus A", f"A: {name_a}", f"B: {name_b}",
                              "vermillion: B lower; blue: B higher"))


def paired_accuracy_chart(rows: pd.DataFrame, name_a: str, name_b: str, full: bool = False) -> alt.LayerChart:
    """Two sets of accuracies per ablation, side by side on one row each: A and B (a run and a rescored variant,
    or the Prompt lab's prompts and the run's own), joined by a line. ``rows``: ablation, accuracy_a,
    accuracy_b and ``change`` (SIG_NAMES: B against A under the rule; a hollow point where it does not hold)."""
    order = list(rows["ablation"])
    long = pd.concat([
        rows.assign(which=name_a, accuracy=rows["accuracy_a"], change=SIG_NAMES[0]),
        rows.assign(which=name_b, accuracy=rows["accuracy_b"]),
    ], ignore_index=True)
    x_scale = zoom([*rows["accuracy_a"], *rows["accuracy_b"]], "accuracy", full)
    y = alt.Y("ablation:N", sort=order, title=None, axis=FULL_LABELS)
    tooltip = [alt.Tooltip("ablation:N"), alt.Tooltip("which:N", title="prompts"),
               alt.Tooltip("accuracy:Q", format=TOOLTIP_FORMAT), alt.Tooltip("change:N", title=f"B vs A, {SIG_TITLE}")]
    lines = alt.Chart(rows).mark_rule(color=GREY).encode(y=y, x=alt.X("accuracy_a:Q", scale=x_scale), x2="accuracy_b:Q")
    colour = alt.Color("which:N", title=None, scale=category_scale([name_a, name_b]),
                       legend=alt.Legend(orient="bottom", labelLimit=400))
    points = _significance(alt.Chart(long), "change", colour, size=70, y=y,
                           x=alt.X("accuracy:Q", title="accuracy", scale=x_scale), tooltip=tooltip)
    return alt.layer(lines, points).properties(
        title=_title("accuracy per ablation", f"A: {name_a}", f"B: {name_b}",
                     f"B {SIG_NOTE} (McNemar, Holm over the ablations); {axis_note('accuracy', full)}"),
        height=alt.Step(20))


def relative_depth_chart(curves: pd.DataFrame, full: bool = False) -> alt.LayerChart:
    """Per-layer curves of runs with different depths on one axis: accuracy against the ablated layer's
    relative depth (layer / the run's layers), one colour per run, 95% intervals, dashed: each run's
    baseline. ``curves``: run, layer, n_layers, depth, accuracy, lo, hi, baseline, ablation."""
    runs = list(dict.fromkeys(curves["run"]))
    colour = alt.Color("run:N", title=None, scale=category_scale(runs), legend=alt.Legend(orient="bottom",
                                                                                           labelLimit=400))
    y_scale = zoom([*curves["lo"], *curves["hi"], *curves["baseline"]], "accuracy", full)
    base = alt.Chart(curves).encode(x=alt.X("depth:Q", title="relative depth of the ablated layer (layer / layers)",
                                            scale=alt.Scale(domain=[0, 1])), color=colour)
    tooltip = [alt.Tooltip("run:N"), alt.Tooltip("ablation:N"), alt.Tooltip("layer:Q"), alt.Tooltip("n_layers:Q"),
               alt.Tooltip("accuracy:Q", format=TOOLTIP_FORMAT), alt.Tooltip("lo:Q", format=TOOLTIP_FORMAT),
               alt.Tooltip("hi:Q", format=TOOLTIP_FORMAT)]
    band = base.mark_errorbar(ticks=False, opacity=0.6).encode(y=alt.Y("lo:Q", title="accuracy", scale=y_scale),
                                                              y2="hi:Q")
    line = base.mark_line(point=alt.OverlayMarkDef(size=40, filled=True)).encode(
        y=alt.Y("accuracy:Q", scale=y_scale), shape=alt.Shape("run:N", scale=shape_scale(runs), legend=None),
        tooltip=tooltip)
    baselines = alt.Chart(curves.drop_duplicates("run")).mark_rule(strokeDash=[6, 4]).encode(
        y=alt.Y("baseline:Q", scale=y_scale), color=colour)
    return alt.layer(band, baselines, line).properties(
        title=_title("accuracy per ablated layer, at its relative depth", "single whole-layer ablations; 95% intervals",
                     f"dashed: each run's baseline; {axis_note('accuracy', full)}"),
        height=320)


def lab_accuracy_chart(accuracy: pd.DataFrame, full: bool = False) -> alt.LayerChart:
    """Prompt lab: accuracy of the typed prompts under every ablation beside the run's own prompts
    (``accuracy``: ablation, accuracy, run_accuracy, verdict), one row per ablation."""
    rows = accuracy.rename(columns={"run_accuracy": "accuracy_a", "accuracy": "accuracy_b"})
    rows = rows.assign(change=rows["verdict"].map(SIG_NAMES) if "verdict" in rows else SIG_NAMES[0])
    return paired_accuracy_chart(rows, "the run's prompts", "these prompts", full)


def _equal_frame(moves: pd.DataFrame) -> tuple[list[float], list[float]]:
    """x and y domains of the same length, holding every point: one unit is as long across as up."""
    xs = pd.concat([moves["x0"], moves["x1"]])
    ys = pd.concat([moves["y0"], moves["y1"]])
    span = max(float(xs.max() - xs.min()), float(ys.max() - ys.min()), 1e-6) * 1.06
    cx, cy = float(xs.max() + xs.min()) / 2, float(ys.max() + ys.min()) / 2
    return [cx - span / 2, cx + span / 2], [cy - span / 2, cy + span / 2]


MAX_CATEGORIES = len(PALETTE) * len(SHAPES) - 1  # distinct (colour, shape) pairs; the rest are "other"
OTHER = "(other)"


def embedding_categories(values: pd.Series) -> pd.Series:
    """``values`` with the rarest categories past MAX_CATEGORIES lumped into OTHER: every category drawn then
    has a (colour, shape) pair of its own."""
    counts = values.value_counts()
    if len(counts) <= MAX_CATEGORIES:
        return values
    keep = set(counts.index[:MAX_CATEGORIES])
    return values.where(values.isin(keep), OTHER)


def embedding_chart(moves: pd.DataFrame, colour: str, colour_title: str, ablation: str,
                    baseline: str = "baseline", size: int = 400) -> alt.LayerChart:
    """Images in the 2-D frame of the baseline embeddings' PCA: a hollow point at baseline, a filled one
    under ``ablation``, a line between them; each category of the column ``colour`` has its own (colour,
    shape) pair. Square, one unit as long across as up (distances read true), ``size`` px a side."""
    data = moves.assign(**{colour: embedding_categories(moves[colour].astype(str))})
    categories = sorted(set(data[colour]) - {OTHER}) + ([OTHER] if OTHER in set(data[colour]) else [])
    # As many legend columns as fit under the plot (about 6 px a character), so the legend is never wider.
    entry = 28 + min(6 * max((len(c) for c in categories), default=1), size - 28)
    legend = alt.Legend(orient="bottom", columns=max(1, min(4, size // entry)), labelLimit=size - 28, symbolLimit=0,
                        title=colour_title)
    colour_enc = alt.Color(f"{colour}:N", scale=category_scale(categories), legend=legend)
    shape_enc = alt.Shape(f"{colour}:N", scale=shape_scale(categories), legend=legend)
    x_domain, y_domain = _equal_frame(data)
    x = alt.Scale(domain=x_domain, nice=False, zero=False)
    y = alt.Scale(domain=y_domain, nice=False, zero=False)
    tooltip = [alt.Tooltip("image_id:N"), alt.Tooltip("label:N", title="true label"),
               alt.Tooltip(f"{colour}:N", title=colour_title), alt.Tooltip("cosine:Q", format=".3f")]
    lines = alt.Chart(data).mark_rule(opacity=0.35, strokeWidth=0.8, color=GREY).encode(
        x=alt.X("x0:Q", title="PC 1 (of baseline)", scale=x), y=alt.Y("y0:Q", title="PC 2 (of baseline)", scale=y),
        x2="x1:Q", y2="y1:Q")
    before = alt.Chart(data).mark_point(size=36, filled=False, opacity=0.75, strokeWidth=1.2).encode(
        x=alt.X("x0:Q", scale=x), y=alt.Y("y0:Q", scale=y), color=colour_enc, shape=shape_enc, tooltip=tooltip)
    after = alt.Chart(data).mark_point(size=36, filled=True, opacity=0.85).encode(
        x=alt.X("x1:Q", scale=x), y=alt.Y("y1:Q", scale=y), color=colour_enc, shape=shape_enc, tooltip=tooltip)
    # "pad": the plot keeps its square, the legend below adds to the height (the default "fit" squeezes the plot
    # into the height with the legend).
    return alt.layer(lines, before, after).properties(
        width=size, height=size, autosize=alt.AutoSizeParams(type="pad", contains="padding"),
        title=_title("image embeddings, PCA of baseline", f"hollow: {baseline}; filled: {ablation}",
                     "equal axes: distances read true"))


def movement_bars(shift: pd.DataFrame) -> alt.Chart:
    """Per ablation (sweep order, one row each), how far it moves the image embeddings: 1 minus the mean cosine
    of each image's embedding under it with its baseline one. A bar from 0, so lengths compare; as a cosine
    from 0 to 1, moves of 0.001 to 0.01 (one head zeroed) were bars of one length."""
    data = shift.assign(distance=1 - shift["cosine"])
    return alt.Chart(data).mark_bar(color=PALETTE[0]).encode(
        y=alt.Y("ablation:N", sort=list(shift["ablation"]), title=None, axis=FULL_LABELS),
        x=alt.X("distance:Q", title="1 − mean cosine with baseline"),
        tooltip=_tooltip(("ablation", "N"), ("distance", "Q"), ("cosine", "Q"), ("images", "N")),
    ).properties(title=_title("how far the embeddings move: 1 − mean cosine with baseline",
                              "0: they do not move"), height=alt.Step(16))



# --------------------------------------------------------------------------------------------------
# Heads and token flow (data from analysis.heads).

HOLDS_NOTE = "outlined: holds after Holm's correction of McNemar's test"


def signed(x: float, digits: int = 2) -> str:
    """A change as a heatmap cell shows it: the tables' signed number (one form for zero, "0.00", a typographic
    minus), and no text where there is no value (the tables say "—")."""
    return "" if x is None or pd.isna(x) else number(x, digits, sign=True)


def cell_digits(values: pd.Series) -> int:
    """Decimals for a grid's cell labels: two significant digits of its largest value, 2 to 3 decimals (as the
    tables), so a small change still reads as one (one image of 600 is 0.0017: "−0.002", not "0.00" on a shaded
    cell)."""
    largest = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) if values.notna().any() else 0.0
    return 2 if largest == 0 else min(DIGITS, max(2, 1 - math.floor(math.log10(largest))))


def head_heatmap(cells: pd.DataFrame, metric: str = "accuracy", group: str = "identity") -> alt.LayerChart:
    """Layer (rows, 1 at the top) x head (columns): the change of ``metric`` against baseline when that one
    head of ``group`` (heads.group_of) is ablated; outlined cells hold after Holm's correction. A point selection named "cell" carries
    the clicked cell's ablation (the Heads page opens the Failures page for it)."""
    data = cells.assign(head_label="h" + cells["head"].astype(str), holds_text=cells["holds"].map({True: "yes", False: "no"}),
                        change_text=cells["change"].map(partial(signed, digits=cell_digits(cells["change"]))))
    heads = [f"h{h}" for h in sorted(cells["head"].unique())]
    extent = float(np.nanmax(np.abs(data[["lo", "hi", "change"]].to_numpy()))) if len(data) else 0.0
    extent = extent if extent > 0 else 1e-3
    cell = alt.selection_point(name="cell", fields=["ablation"], on="click", clear=False)
    enc = {
        "x": alt.X("head_label:O", sort=heads, title="head", axis=alt.Axis(labelAngle=0, orient="top", labelFontSize=12)),
        "y": alt.Y("layer:O", title="layer", axis=alt.Axis(labelFontSize=12)),
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
        layers.append(alt.Chart(data).mark_text(fontSize=12).encode(
            **enc, text=alt.Text("change_text:N"),
            color=alt.condition(f"abs(datum.change) > {extent * 0.6}", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(
        title={"text": f"{title}: {group} on one head at a time", "subtitle": f"{HOLDS_NOTE}; click a cell "
               "to open its failures"},
        width=alt.Step(56), height=alt.Step(28))


def flow_chart(cells: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    """Per layer, the change of ``metric`` against baseline when one flow of information is knocked out in
    that layer alone, with its 95% paired interval; each point marked by the rule (shape and fill: a hollow
    point is white-filled, so the dashed zero line behind it cannot hide it)."""
    verdict = np.where(~cells["holds"], 0, np.sign(cells["change"].fillna(0))).astype(int)
    data = cells.assign(holds_text=cells["holds"].map({True: "yes", False: "no"}),
                        verdict=pd.Series(verdict, index=cells.index).map(SIG_NAMES))
    targets = [t for t in TARGETS if t in set(data["target"])]
    colour = alt.Color("target:N", sort=targets, title="blocked flow (keys > queries)", scale=category_scale(targets))
    base = alt.Chart(data).encode(
        x=alt.X("layer:O", title="layer knocked out", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("target:N", sort=targets),
        color=colour,
    )
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=f"Δ {METRIC_TITLES[metric]}"), y2="hi:Q")
    tooltip = [alt.Tooltip("ablation:N"), alt.Tooltip("images:Q"),
               alt.Tooltip("change:Q", format="+.4f", title=f"Δ {METRIC_TITLES[metric]}"),
               alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
               alt.Tooltip("hi:Q", format="+.4f", title="95% interval to"),
               alt.Tooltip("p_holm:Q", format=".3g", title="McNemar p (Holm)"),
               alt.Tooltip("holds_text:N", title="holds after Holm")]
    points = _significance(base, "verdict", colour, size=80, y=alt.Y("change:Q"), tooltip=tooltip)
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="zero:Q")
    return alt.layer(zero, whiskers, points).properties(
        title={"text": f"Change in {METRIC_TITLES[metric]} when one flow is knocked out in one layer",
               "subtitle": f"95% paired bootstrap intervals; {SIG_NOTE} (Holm's correction of McNemar's test)"},
        height=300)


# --------------------------------------------------------------------------------------------------
# Attribution (analysis.attribution): each head's estimated effect, and the estimate against the exact effect.

MARGIN_TITLE = "Δ margin M (logits)"  # M: the baseline's selected prompt's logit minus its runner-up's


def estimate_heatmap(cells: pd.DataFrame, group: str = "identity") -> alt.LayerChart:
    """Layer (rows, 1 at the top) x head (columns): each head's mean estimated change of the margin M when it
    alone is ablated by ``group`` (attribution: one forward and one backward pass, no ablated pass), red where M
    falls. The tooltip adds the exact mean change where the run holds it. A point selection named "cell"
    carries the clicked cell's ablation, as head_heatmap's."""
    data = cells.assign(head_label="h" + cells["head"].astype(str),
                        estimate_text=cells["estimate"].map(partial(signed, digits=cell_digits(cells["estimate"]))))
    heads = [f"h{h}" for h in sorted(cells["head"].unique())]
    extent = float(np.nanmax(np.abs(data["estimate"].to_numpy()))) if len(data) else 0.0
    extent = extent if extent > 0 else 1e-3
    cell = alt.selection_point(name="cell", fields=["ablation"], on="click", clear=False)
    enc = {
        "x": alt.X("head_label:O", sort=heads, title="head", axis=alt.Axis(labelAngle=0, orient="top", labelFontSize=12)),
        "y": alt.Y("layer:O", title="layer", axis=alt.Axis(labelFontSize=12)),
    }
    tooltip = [alt.Tooltip("ablation:N"), alt.Tooltip("images:Q"),
               alt.Tooltip("estimate:Q", format="+.4f", title="estimated Δ M (mean)")]
    if cells["exact"].notna().any():
        tooltip.append(alt.Tooltip("exact:Q", format="+.4f", title="exact Δ M (mean)"))
    rects = alt.Chart(data).mark_rect(cursor="pointer").encode(
        **enc, tooltip=tooltip,
        color=alt.Color("estimate:Q", title=f"estimated {MARGIN_TITLE}",
                        scale=alt.Scale(scheme="redblue", domain=[-extent, extent], domainMid=0)),
    ).add_params(cell)
    layers = [rects]
    if len(heads) <= 16:
        layers.append(alt.Chart(data).mark_text(fontSize=12).encode(
            **enc, text=alt.Text("estimate_text:N"),
            color=alt.condition(f"abs(datum.estimate) > {extent * 0.6}", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(
        title={"text": f"Estimated change in the margin M: {group} on one head at a time",
               "subtitle": "attribution patching (one forward and one backward pass per image); mean over images"},
        width=alt.Step(56), height=alt.Step(28))


def _diagonal(lo: float, hi: float) -> alt.Chart:
    """The line estimate = exact over [lo, hi] (dashed): where a perfect estimate lies."""
    line = pd.DataFrame({"x": [lo, hi], "y": [lo, hi]})
    return alt.Chart(line).mark_line(strokeDash=[4, 3], color="#555").encode(x="x:Q", y="y:Q")


def attribution_scatter(points: pd.DataFrame, group: str, subtitle: str = "") -> alt.LayerChart:
    """Per head, its mean estimated change of M (y) against its mean exact change (x), with the diagonal of
    perfect estimates; the most harmful heads sit bottom left. ``subtitle``: the figures
    (analysis.attribution.figures_text)."""
    values = points[["estimate", "exact"]].to_numpy(dtype=float)
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if len(points) else (0.0, 1.0)
    pad = max((hi - lo) * 0.05, 1e-3)
    scale = alt.Scale(domain=[lo - pad, hi + pad], nice=False, zero=False)
    dots = alt.Chart(points).mark_circle(size=60, color=PALETTE[0], opacity=0.8).encode(
        x=alt.X("exact:Q", title=f"exact {MARGIN_TITLE}, mean over images", scale=scale),
        y=alt.Y("estimate:Q", title=f"estimated {MARGIN_TITLE}", scale=scale),
        tooltip=[alt.Tooltip("ablation:N"), alt.Tooltip("exact:Q", format="+.4f", title="exact Δ M"),
                 alt.Tooltip("estimate:Q", format="+.4f", title="estimated Δ M")])
    return alt.layer(_diagonal(lo - pad, hi + pad), dots).properties(
        title={"text": f"Estimate against exact: {group}, per head", "subtitle": subtitle or "dashed: estimate = exact"},
        width=360, height=360)


def attribution_density(bins: pd.DataFrame, group: str, subtitle: str = "") -> alt.LayerChart:
    """Every (image, head) pair: estimated change of M (y) against exact (x), counted in a grid
    (analysis.attribution.pair_bins; darker: more pairs), with the diagonal of perfect estimates."""
    lo = float(min(bins["x0"].min(), bins["y0"].min())) if len(bins) else 0.0
    hi = float(max(bins["x1"].max(), bins["y1"].max())) if len(bins) else 1.0
    scale = alt.Scale(domain=[lo, hi], nice=False, zero=False)
    rects = alt.Chart(bins).mark_rect().encode(
        x=alt.X("x0:Q", title=f"exact {MARGIN_TITLE}", scale=scale), x2="x1:Q",
        y=alt.Y("y0:Q", title=f"estimated {MARGIN_TITLE}", scale=scale), y2="y1:Q",
        color=alt.Color("pairs:Q", title="(image, head) pairs", scale=alt.Scale(type="log", scheme="greys")),
        tooltip=[alt.Tooltip("pairs:Q"), alt.Tooltip("x0:Q", format="+.3f", title="exact from"),
                 alt.Tooltip("x1:Q", format="+.3f", title="exact to"),
                 alt.Tooltip("y0:Q", format="+.3f", title="estimate from"),
                 alt.Tooltip("y1:Q", format="+.3f", title="estimate to")])
    return alt.layer(rects, _diagonal(lo, hi)).properties(
        title={"text": f"Estimate against exact: {group}, every (image, head) pair",
               "subtitle": subtitle or "dashed: estimate = exact"},
        width=360, height=360)
