"""Overview: the study's Table 1, generalised to every ablation of the run, with 95% bootstrap intervals
and the one significance rule (analysis.stats)."""

import streamlit as st

from analysis import charts, queries, slices, stats, tables
from analysis.text import md
from dashboard import clicks, layout, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import get_param, param_select

COLUMNS = {"main": "mean, change and p (Holm)", "intervals": "with 95% intervals"}

ctx = context()
st.title("Overview")
st.caption("Per ablation: images computed, accuracy (the selected prompt's label is among the image's labels), "
           "the selected prompt's CLIP score against the unablated image embedding, the generated caption's "
           "score, and each one's change (Δ) against baseline. " + stats.RULE)
if no_results(ctx):
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
left, mid, right = st.columns([1, 1, 2])
label = widgets.label_select("True label", "label", list(labels["label"]), container=left)
columns = param_select("Table columns", list(COLUMNS), "columns", format_func=COLUMNS.get, container=mid)
shown, shown_caption = widgets.ablation_subset(ctx, near=get_param("ablation"), container=right)
where = slices.true_label(label)
summary_all = load(tables.summary, ctx.run_id, where)  # the rule is decided over every ablation
summary = tables.select_ablations(summary_all, shown) if shown_caption else summary_all
errors = load(queries.errors, ctx.run_id)
n_images = int(summary_all["images"].max()) if len(summary_all) else 0
st.caption(f"Selecting {n_images:,} images: {md(where.caption)}.")

base = summary_all[summary_all["ablation_id"] == ctx.baseline_id].iloc[0]
others = summary_all[summary_all["ablation_id"] != ctx.baseline_id].dropna(subset=["d_accuracy"])
cols = st.columns(4)
cols[0].metric("Images", f"{n_images:,}")
cols[1].metric("Baseline accuracy", tables.number(base["accuracy"]))
if len(others):
    worst = others.loc[others["d_accuracy"].idxmin()]
    cols[2].metric("Largest accuracy drop", tables.number(worst["d_accuracy"], sign=True),
                   help="The ablation is named below the metrics.")
    cols[3].metric("Ablations reliably worse", f"{tables.reliably_worse(summary_all)} of {len(others)}",
                   help="Accuracy significantly below baseline's: Holm-adjusted McNemar p < 0.05 over the run's "
                   "ablations, the same test as the Layers page's table.")
    st.caption(f"Largest accuracy drop under {md(worst['ablation'])}.")

if shown_caption:
    st.caption(shown_caption)
# Every row at once (no inner scrolling), the ablation's name pinned while the columns scroll sideways; a
# click on a row opens its failures.
frame = tables.table1_page(summary)
order = [c for c in frame.columns if columns == "intervals" or not c.endswith((" low", " high"))]
row = clicks.table(tables.table1_style(summary), "overview_table", summary.reset_index(drop=True), hide_index=True,
                   height="content", column_order=order,
                   column_config={"Ablation": st.column_config.TextColumn("Ablation", pinned=True)})
clicks.follow(ctx, row, label=label)
st.caption(f"{md(tables.MARK)} after a change: significant under the rule above. Columns sort by their numbers; "
           "baseline's own change is —. Click a row, bar or point to open its images on the Failures page.")
clicks.follow(ctx, layout.chart_panels(charts.table1_chart, summary, tables.metrics_of(summary), click="overview_means"),
              label=label)
clicks.follow(ctx, layout.chart_panels(charts.change_chart, summary, tables.metrics_of(summary), click="overview_changes"),
              label=label)

if len(errors):
    with st.expander(f"{len(errors)} image(s) could not be processed"):
        st.dataframe(errors, hide_index=True)
