"""Layers: each metric per single ablated layer and per block, accuracy per true label, the confusion of
one ablation, and McNemar's paired test of every ablation against baseline (the significance rule)."""

import streamlit as st

from analysis import charts, queries, slices, stats, tables
from analysis.text import md
from dashboard import clicks, layout, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select

ctx = context()
st.title("Layers")
if no_results(ctx):
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
summary_all = load(tables.summary, ctx.run_id, slices.EVERYTHING)
metrics = tables.metrics_of(summary_all)
left, mid, right = st.columns(3)
label = widgets.label_select("True label", "label", list(labels["label"]), container=left)
metric = param_select("Metric", metrics, "metric", container=mid, format_func=tables.METRIC_TITLES.get)
ablation = widgets.ablation_select(ctx, "Confusion under", "ablation", default=ctx.default_ablation(), container=right)
where = slices.true_label(label)

# Every query first, then the drawing: the store is read in one go (see dashboard.reading).
summary = load(tables.summary, ctx.run_id, where) if label else summary_all
label_accuracy = load(queries.label_accuracy, ctx.run_id)
confusion = load(queries.confusion, ctx.run_id, ctx.ablation_id(ablation))
tests = tables.mcnemar_of(summary)  # the very numbers behind every mark and count of the run

st.caption(f"Curves and tests over {int(summary['images'].max()):,} images: {md(where.caption)}. {stats.RULE} "
           f"{clicks.HINT}")
curve, blocks = layout.chart_columns(2)
clicks.follow(ctx, layout.chart(charts.layer_curve, summary, metric, container=curve, click="layers_curve"), label=label)
clicks.follow(ctx, layout.chart(charts.block_bars, summary, metric, container=blocks, click="layers_blocks"), label=label)

st.subheader("Accuracy per true label")
st.caption("Every image counts under each of its labels; all images, whatever the label filter above. A click on a "
           "cell opens the images of that label the ablation gets wrong.")
clicks.follow(ctx, layout.chart(charts.label_heatmap, label_accuracy, ctx.ablations, click="layers_labels",
                                fields=("ablation", "label")),
              outcome="wrong", labels=lambda p: (str(p.get("label") or ""), ""))

st.subheader("Confusion")
st.caption(f"True label x selected label under {md(ablation)}, all images. Each image counts once: a right pick "
           "on the diagonal; a wrong pick of an image with several labels is split equally over their rows. A click "
           "on a cell opens its images.")
if confusion.empty:
    st.info(f"Nothing computed under {md(ablation)} yet.")
else:
    cell = layout.chart(charts.confusion_chart, confusion, ablation, click="layers_confusion",
                        fields=("true_label", "selected_label"))
    clicks.follow(ctx, cell, ablation=ablation, outcome="all",  # the images of that cell, right or wrong
                  labels=lambda p: tuple("" if p.get(f) == queries.NO_LABEL else str(p.get(f) or "")
                                         for f in ("true_label", "selected_label")))

st.subheader("Paired test against baseline (McNemar)")
n_significant = int(tests["significant"].sum())
n_worse = tables.reliably_worse(summary)
st.caption(f"Images right under only one of baseline and the ablation; exact binomial test below "
           f"{stats.EXACT_BELOW} such images, otherwise chi-square with continuity correction. Holm's "
           f"adjustment accounts for testing every ablation: {n_significant} of {len(tests)} differ from "
           f"baseline at p (Holm) < {stats.ALPHA}, {n_worse} of them worse. Over {md(where.caption)}.")
shown = tests.assign(p=tests["p"].map(stats.format_p), p_holm=tests["p_holm"].map(stats.format_p),
                     significant=tests["significant"].map({True: "yes", False: ""}))
row = clicks.table(
    shown.drop(columns=["ablation_id"]), "layers_tests", shown, hide_index=True,
    column_config={
        "pairs": st.column_config.NumberColumn("images", help="computed under both"),
        "only_baseline": st.column_config.NumberColumn("right only under baseline"),
        "only_ablation": st.column_config.NumberColumn("right only under the ablation"),
        "statistic": st.column_config.NumberColumn(format="%.3f"),
        "p_holm": st.column_config.TextColumn("p (Holm)"),
        "significant": st.column_config.TextColumn(f"p (Holm) < {stats.ALPHA}"),
    },
)
clicks.follow(ctx, row, label=label)
