"""The Decomposition page's charts and the figure pack's, Streamlit-free: pure builders over the frames of
analysis.decomposition, in the palette and the marks of analysis.charts (significance by shape and fill as
well as colour; shares and effects on a diverging red-blue scale centred on 0).

- ``layer_share_chart``: per layer, the direct shares of attention and MLP (and the embeddings at layer 0);
- ``head_share_heatmap``: layer x head, each head's mean direct share;
- ``effects_chart``: per single-layer ablation, its total, direct and indirect effect side by side;
- ``effects_heatmap``: layer x head, one quantity of the single-head ablations of one group;
- ``curve_chart``: the mean-ablation lab's accuracy when all but the last N layers are mean-ablated;
- ``token_chart``: one image's per-patch direct contribution of a head or layer (the Image page).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis.charts import (
    GREY,
    PALETTE,
    SIG_NAMES,
    SIG_NOTE,
    _significance,
    _title,
    category_scale,
    shape_scale,
    signed,
)
from analysis.decomposition import MEASURES, PARTS, QUANTITIES

UNIT = "logit units"
QUANTITY_TITLES = {"total": "total (ablated logit − baseline's)", "direct": "direct (through the readout alone)",
                   "indirect": "indirect (total − direct)"}
HOLDS = "outlined: p (Holm) < 0.05, paired t-test over images against 0"
TOKEN_PX = 220  # the per-patch map's side on the Image page


def _extent(*columns: pd.Series) -> float:
    """The largest absolute value in ``columns`` (a diverging scale's half-width), never 0."""
    values = np.concatenate([pd.to_numeric(c, errors="coerce").to_numpy(dtype=float) for c in columns]) if columns else []
    top = float(np.nanmax(np.abs(values))) if len(values) and not np.isnan(values).all() else 0.0
    return top if top > 0 else 1e-3


def _diverging(field: str, title: str, extent: float, legend: alt.Legend | None = None) -> alt.Color:
    return alt.Color(f"{field}:Q", title=title, scale=alt.Scale(scheme="redblue", domain=[-extent, extent],
                                                                domainMid=0),
                     legend=legend if legend is not None else alt.Legend(orient="bottom"))


def _zero(channel: str = "y") -> alt.Chart:
    rule = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(strokeDash=[4, 3], color="#555")
    return rule.encode(**{channel: alt.Y("zero:Q") if channel == "y" else alt.X("zero:Q")})


def layer_share_chart(parts: pd.DataFrame, measure: str = "share") -> alt.LayerChart:
    """Per layer (0: the embeddings), the direct share of attention and of the MLP in the correct prompt's
    logit (analysis.decomposition.layer_parts): mean over images with its 95% interval."""
    data = parts.dropna(subset=["mean"])
    shown = [p for p in PARTS if p in set(data["part"])]
    colour = alt.Color("part:N", sort=shown, title="component", scale=category_scale(shown))
    base = alt.Chart(data).encode(x=alt.X("layer:O", title="layer (0: embeddings)", axis=alt.Axis(labelAngle=0)),
                                  xOffset=alt.XOffset("part:N", sort=shown), color=colour)
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=f"direct share ({UNIT})"), y2="hi:Q")
    points = base.mark_point(filled=True, size=60, opacity=1).encode(
        y=alt.Y("mean:Q"), shape=alt.Shape("part:N", sort=shown, title="component", scale=shape_scale(shown)),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("part:N", title="component"), alt.Tooltip("images:Q"),
                 alt.Tooltip("mean:Q", format="+.4f", title="mean share"),
                 alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
                 alt.Tooltip("hi:Q", format="+.4f", title="95% interval to")])
    images = int(data["images"].max()) if len(data) else 0
    return alt.layer(_zero(), whiskers, points).properties(
        title=_title("Direct share of each layer's attention and MLP", f"{MEASURES[measure]}; mean over {images:,} "
                     "images, 95% bootstrap interval"),
        height=280)


def head_share_heatmap(cells: pd.DataFrame, measure: str = "share") -> alt.LayerChart:
    """Layer (rows) x head: each head's mean direct share (analysis.decomposition.head_cells), its interval
    on hover (the page makes a cell clickable: dashboard.clicks, on ``label``)."""
    data = cells.assign(head_label="h" + cells["head"].astype(str), mean_text=cells["mean"].map(signed))
    heads = [f"h{h}" for h in sorted(cells["head"].unique())]
    extent = _extent(data["mean"])
    enc = {"x": alt.X("head_label:O", sort=heads, title="head", axis=alt.Axis(labelAngle=0, orient="top")),
           "y": alt.Y("layer:O", title="layer")}
    rects = alt.Chart(data).mark_rect(cursor="pointer").encode(
        **enc, color=_diverging("mean", f"mean direct share ({UNIT})", extent),
        tooltip=[alt.Tooltip("label:N", title="head"), alt.Tooltip("images:Q"),
                 alt.Tooltip("mean:Q", format="+.4f", title="mean share"),
                 alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
                 alt.Tooltip("hi:Q", format="+.4f", title="95% interval to")],
    )
    layers = [rects]
    if len(heads) <= 16:  # numbers stay legible only on small grids
        layers.append(alt.Chart(data).mark_text(fontSize=11).encode(
            **enc, text=alt.Text("mean_text:N"),
            color=alt.condition(f"abs(datum.mean) > {extent * 0.6}", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(
        title=_title("Direct share of each head", f"{MEASURES[measure]}; mean over images",
                     "click a cell to add the head to the mean-ablation lab"),
        width=alt.Step(56), height=alt.Step(24))


def _effects_long(rows: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for q in QUANTITIES:
        verdict = rows["sig_" + q].map(SIG_NAMES)
        parts.append(pd.DataFrame({"ablation": rows["ablation"], "images": rows["images"], "quantity": q,
                                   "value": rows[q], "lo": rows[q + "_lo"], "hi": rows[q + "_hi"],
                                   "p_holm": rows["p_holm_" + q], "verdict": verdict}))
    return pd.concat(parts, ignore_index=True)


def effects_chart(rows: pd.DataFrame, measure: str = "share") -> alt.LayerChart:
    """Per single-layer ablation (rows of analysis.decomposition.single_layer_rows, sweep order): its total,
    direct and indirect effect on the correct prompt's logit, mean with its 95% interval, each marked by the
    rule (shape and fill)."""
    data = _effects_long(rows)
    order = list(rows["ablation"])
    colour = alt.Color("quantity:N", sort=list(QUANTITIES), title="effect", scale=category_scale(list(QUANTITIES)))
    base = alt.Chart(data).encode(
        x=alt.X("ablation:N", sort=order, title="ablation", axis=alt.Axis(labelAngle=-90, labelOverlap=False,
                                                                          labelLimit=240)),
        xOffset=alt.XOffset("quantity:N", sort=list(QUANTITIES)), color=colour)
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=f"effect ({UNIT})"), y2="hi:Q")
    tooltip = [alt.Tooltip("ablation:N"), alt.Tooltip("quantity:N", title="effect"), alt.Tooltip("images:Q"),
               alt.Tooltip("value:Q", format="+.4f", title="mean"),
               alt.Tooltip("lo:Q", format="+.4f", title="95% interval from"),
               alt.Tooltip("hi:Q", format="+.4f", title="95% interval to"),
               alt.Tooltip("p_holm:Q", format=".3g", title="paired t p (Holm)")]
    points = _significance(base, "verdict", colour, size=70, y=alt.Y("value:Q"), tooltip=tooltip)
    return alt.layer(_zero(), whiskers, points).properties(
        title=_title("Total, direct and indirect effect of each single-layer ablation",
                     f"on the {MEASURES[measure]}; 95% bootstrap intervals",
                     f"{SIG_NOTE} (paired t-test against 0, Holm over the run's ablations)"),
        height=300)


def effects_heatmap(rows: pd.DataFrame, quantity: str, group: str, measure: str = "share") -> alt.LayerChart:
    """Layer x head: one ``quantity`` (total, direct or indirect) of the single-head ablations of ``group``
    (rows of analysis.decomposition.head_rows); outlined where it holds under the rule."""
    data = rows[rows["group"] == group]
    data = data.assign(head_label="h" + data["head"].astype(str), value=data[quantity], lo=data[quantity + "_lo"],
                       hi=data[quantity + "_hi"], p_holm=data["p_holm_" + quantity],
                       holds=data["sig_" + quantity] != 0, value_text=data[quantity].map(signed))
    heads = [f"h{h}" for h in sorted(data["head"].unique())]
    extent = _extent(data["value"], data["lo"], data["hi"])
    enc = {"x": alt.X("head_label:O", sort=heads, title="head", axis=alt.Axis(labelAngle=0, orient="top")),
           "y": alt.Y("layer:O", title="layer")}
    rects = alt.Chart(data).mark_rect(cursor="pointer").encode(
        **enc, color=_diverging("value", f"{quantity} effect ({UNIT})", extent),
        tooltip=[alt.Tooltip("ablation:N"), alt.Tooltip("images:Q"),
                 alt.Tooltip("total:Q", format="+.4f"), alt.Tooltip("direct:Q", format="+.4f"),
                 alt.Tooltip("indirect:Q", format="+.4f"),
                 alt.Tooltip("lo:Q", format="+.4f", title=f"{quantity}: 95% interval from"),
                 alt.Tooltip("hi:Q", format="+.4f", title=f"{quantity}: 95% interval to"),
                 alt.Tooltip("p_holm:Q", format=".3g", title=f"{quantity}: paired t p (Holm)")],
    )
    outline = alt.Chart(data).transform_filter("datum.holds").mark_rect(
        fill=None, stroke="black", strokeWidth=2.5).encode(**enc)
    layers = [rects, outline]
    if len(heads) <= 16:
        layers.append(alt.Chart(data).mark_text(fontSize=11).encode(
            **enc, text=alt.Text("value_text:N"),
            color=alt.condition(f"abs(datum.value) > {extent * 0.6}", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(
        title=_title(f"{quantity.capitalize()} effect of {group} on one head at a time",
                     f"on the {MEASURES[measure]}; {HOLDS}", "click a cell to open its failures"),
        width=alt.Step(56), height=alt.Step(24))


def curve_chart(points: pd.DataFrame, baseline: float | None = None) -> alt.LayerChart:
    """The mean-ablation lab's curve (analysis.decomposition.curve): accuracy when the direct contributions
    of every layer but the last N are replaced by their means over the images, with 95% intervals; dashed:
    the unablated accuracy."""
    data = points.dropna(subset=["accuracy"])
    base = alt.Chart(data).encode(x=alt.X("n_kept:O", title="N: the last layers kept (the rest mean-ablated)",
                                          axis=alt.Axis(labelAngle=0)))
    y = alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]))
    band = base.mark_errorbar(ticks=True, color=GREY).encode(y=alt.Y("lo:Q", title="accuracy",
                                                                     scale=alt.Scale(domain=[0, 1])), y2="hi:Q")
    line = base.mark_line(color=PALETTE[0], point=alt.OverlayMarkDef(size=50, filled=True, color=PALETTE[0])).encode(
        y=y, tooltip=[alt.Tooltip("n_kept:O", title="last layers kept"), alt.Tooltip("images:Q"),
                      alt.Tooltip("accuracy:Q", format=".4f"), alt.Tooltip("lo:Q", format=".4f", title="95% from"),
                      alt.Tooltip("hi:Q", format=".4f", title="95% to")])
    layers = [band, line]
    if baseline is not None and not np.isnan(baseline):
        layers.insert(0, alt.Chart(pd.DataFrame({"baseline": [baseline]})).mark_rule(
            strokeDash=[6, 4], color="#444").encode(y=alt.Y("baseline:Q", scale=alt.Scale(domain=[0, 1]))))
    return alt.layer(*layers).properties(
        title=_title("Accuracy with all but the last N layers mean-ablated",
                     "direct contributions replaced by their means over the images; 95% bootstrap intervals",
                     "dashed: unablated"),
        height=260)


def token_chart(frame: pd.DataFrame, title: str, subtitle: str) -> alt.Chart:
    """One image's per-patch direct contribution (frame: row, col, share), a diverging scale centred on 0,
    each patch's value on hover."""
    side = int(frame["row"].max()) + 1 if len(frame) else 1
    extent = _extent(frame["share"])
    axis = {"axis": None, "scale": alt.Scale(domain=list(range(side)))}
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("col:O", **axis), y=alt.Y("row:O", **axis),
        color=_diverging("share", f"share ({UNIT})", extent,
                         alt.Legend(orient="bottom", direction="horizontal", gradientLength=TOKEN_PX - 40,
                                    format="+.2f", tickCount=3)),
        tooltip=[alt.Tooltip("row:O", title="patch row"), alt.Tooltip("col:O", title="patch column"),
                 alt.Tooltip("share:Q", format="+.4f")],
    ).properties(width=TOKEN_PX, height=TOKEN_PX,
                 title=alt.TitleParams(title, subtitle=subtitle, anchor="start", fontSize=12))
