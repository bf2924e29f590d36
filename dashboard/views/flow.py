"""Flow: where the CLS token gathers its information. Per layer, the change against baseline when one
flow is knocked out in that layer alone (the CLS token reading the patches, the patches reading the CLS
token, the patches reading each other), with 95% intervals and the significance rule of every page."""

import streamlit as st

from analysis import charts, heads, queries, slices, stats, tables
from analysis.text import md
from compute.kinds import TARGETS
from dashboard import clicks, layout, widgets
from dashboard.change_table import change_table
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select

METRICS = ["accuracy", "score_baseline"]

ctx = context()
st.title("Flow")
if no_results(ctx):
    st.stop()
knockouts = ctx.ablations[(ctx.ablations["kind"] == "knockout") & (ctx.ablations["n_layers"] == 1)
                          & (ctx.ablations["n_heads"] == 0)]
if knockouts.empty:
    st.info(f"Run {md(ctx.name)} has no single-layer knockout. Add `sweep = \"flow\"` (every knockout target at "
            "every layer) or extras such as `\"knockout:9/patches>cls\"`; `make demo` runs `demo-heads`.")
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
left, right, _ = st.columns([1, 1, 2])
metric = param_select("Change in", METRICS, "metric", container=left, format_func=tables.METRIC_TITLES.get)
label = widgets.label_select("True label", "label", list(labels["label"]), container=right)
where = slices.true_label(label)

summary = load(tables.summary, ctx.run_id, where)
tests = load(tables.mcnemar, ctx.run_id, where)
cells = heads.flow_cells(summary, tests, metric)
if cells.empty:
    st.info("No knockout has been computed yet.")
    st.stop()

st.caption(f"{len(cells)} knockouts over {int(cells['images'].max()):,} images: {md(where.caption)}. Attention "
           "knockout sets the scores of the blocked query → key edges to −inf before the softmax (the rest is "
           "renormalised) in every head of one layer; everything else runs normally. Filled triangles (pointing the way "
           f"of the change): significant under the rule of every page; hollow circles: not. {md(stats.RULE)}")
clicks.follow(ctx, layout.chart(charts.flow_chart, cells, metric, click="flow_points"), label=label)
cls = str(ctx.run.get("family") or "clip") == "clip"  # SigLIP has no CLS token: patches>patches alone
st.markdown("  \n".join(f"**{target}**: {heads.target_title(target, cls)}" for target in TARGETS
                        if target in set(cells["target"])))

st.subheader("Every knockout")
st.caption(clicks.HINT.replace("a point, bar or cell", "a point above or a row"))
clicks.follow(ctx, change_table(cells.sort_values(["layer", "target"]), ["layer", "target"], metric, "the knockout",
                                "flow_table"), label=label)
