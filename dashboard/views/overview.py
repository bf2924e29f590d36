"""Overview: the study's Table 1, generalised to every ablation of the run, with 95% bootstrap intervals."""

import streamlit as st

from dashboard import charts, queries, slices, tables, ui

ctx = ui.context()
st.title("Overview")
st.caption("Per ablation: images computed, accuracy (the selected prompt's label is among the image's labels), "
           "the selected prompt's CLIP score against the unablated image embedding, the generated caption's "
           "score, and each one's change against baseline. Brackets: 95% bootstrap interval over images "
           "(1,000 resamples; changes are paired on images).")
if ui.no_results(ctx):
    st.stop()

labels = ui.load(queries.true_labels, ctx.run_id)
left, _ = st.columns([1, 3])
label = ui.label_select(ctx, "True label", "label", list(labels["label"]), container=left)
where = slices.true_label(label)
summary = ui.load(tables.summary, ctx.run_id, where)
errors = ui.load(queries.errors, ctx.run_id)
n_images = int(summary["images"].max()) if len(summary) else 0
st.caption(f"Selecting {n_images:,} images: {where.caption}.")

base = summary[summary["ablation_id"] == ctx.baseline_id].iloc[0]
others = summary[summary["ablation_id"] != ctx.baseline_id].dropna(subset=["d_accuracy"])
cols = st.columns(4)
cols[0].metric("Images", f"{n_images:,}")
cols[1].metric("Baseline accuracy", "-" if base.isna()["accuracy"] else f"{base['accuracy']:.3f}")
if len(others):
    worst = others.loc[others["d_accuracy"].idxmin()]
    cols[2].metric("Largest accuracy drop", worst["ablation"], f"{worst['d_accuracy']:+.3f}")
    reliable = int((others["d_accuracy_hi"] < 0).sum())
    cols[3].metric("Ablations reliably worse", f"{reliable} of {len(others)}",
                   help="The 95% interval of the change in accuracy lies below zero.")

st.dataframe(tables.summary_display(summary), hide_index=True)
ui.chart(charts.table1_chart, summary)
ui.chart(charts.change_chart, summary)

if len(errors):
    with st.expander(f"{len(errors)} image(s) could not be processed"):
        st.dataframe(errors, hide_index=True)
