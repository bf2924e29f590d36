"""Layers: each metric per single ablated layer and per block, accuracy per true label, the confusion of
one ablation, and McNemar's paired test of every ablation against baseline."""

import streamlit as st

from dashboard import charts, queries, slices, stats, tables, ui
from dashboard.state import param_select

ctx = ui.context()
st.title("Layers")
if ui.no_results(ctx):
    st.stop()

labels = ui.load(queries.true_labels, ctx.run_id)
summary_all = ui.load(tables.summary, ctx.run_id, slices.EVERYTHING)
metrics = [m for m in tables.METRICS if m != "caption_score" or tables.has_captions(summary_all)]
left, mid, right, _ = st.columns([1, 1, 1, 1])
label = ui.label_select(ctx, "True label", "label", list(labels["label"]), container=left)
metric = param_select("Metric", metrics, "metric", container=mid, format_func=tables.METRIC_TITLES.get)
default = ctx.ablation_names()[1] if len(ctx.ablations) > 1 else None
ablation = ui.ablation_select(ctx, "Confusion under", "ablation", default=default, container=right)
where = slices.true_label(label)

# Every query first, then the drawing: the store is read in one go (see ui.release).
summary = ui.load(tables.summary, ctx.run_id, where) if label else summary_all
label_accuracy = ui.load(queries.label_accuracy, ctx.run_id)
confusion = ui.load(queries.confusion, ctx.run_id, ctx.ablation_id(ablation))
tests = ui.load(tables.mcnemar, ctx.run_id, where)

st.caption(f"Curves and tests over {int(summary['images'].max()):,} images: {where.caption}.")
curve, blocks = st.columns(2)
ui.chart(charts.layer_curve, summary, metric, container=curve)
ui.chart(charts.block_bars, summary, metric, container=blocks)

st.subheader("Accuracy per true label")
st.caption("Every image counts under each of its labels; all images, whatever the label filter above.")
ui.chart(charts.label_heatmap, label_accuracy, ctx.ablations)

st.subheader("Confusion")
st.caption(f"True label x selected label under {ablation}, all images; an image with two labels counts in two rows.")
if confusion.empty:
    st.info(f"Nothing computed under {ablation} yet.")
else:
    ui.chart(charts.confusion_chart, confusion, ablation)

st.subheader("Paired test against baseline (McNemar)")
st.caption(f"Images right under only one of baseline and the ablation; exact binomial test below "
           f"{stats.EXACT_BELOW} such images, otherwise chi-square with continuity correction. Holm's "
           f"adjustment accounts for testing every ablation. Over {where.caption}.")
shown = tests.assign(p=tests["p"].map(stats.format_p), p_holm=tests["p_holm"].map(stats.format_p))
st.dataframe(
    shown.drop(columns=["ablation_id"]), hide_index=True,
    column_config={
        "pairs": st.column_config.NumberColumn("images", help="computed under both"),
        "only_baseline": st.column_config.NumberColumn("right only under baseline"),
        "only_ablation": st.column_config.NumberColumn("right only under the ablation"),
        "statistic": st.column_config.NumberColumn(format="%.3f"),
        "p_holm": st.column_config.TextColumn("p (Holm)"),
    },
)
