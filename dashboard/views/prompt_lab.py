"""Prompt lab: score new prompts on the stored run without recomputing the vision tower.

Only the vision tower is ablated, so the run's stored (image, ablation) embeddings and one text pass give
the logits of any prompt under every ablation at once. "Save as a run" makes the same numbers a run of
the store (``python -m compute rescore``), with captions if the run has a captioner.
"""

import streamlit as st

from analysis import charts, queries
from analysis.prompt_scores import image_frames, parse_lines
from analysis.text import md
from compute.errors import InputError
from dashboard import lab, layout
from dashboard.context import context, no_results
from dashboard.reading import load, snapshot
from dashboard.state import param_select, param_text

ctx = context()
st.title("Prompt lab")
st.caption("Type prompts, one per line as `text | label` (label: the image label that makes the prompt "
           "correct). Scores come from the run's stored image embeddings and one pass of CLIP's text tower.")
if no_results(ctx):
    st.stop()
if not load(queries.has_embeddings, ctx.name):
    st.warning(f"Run {md(ctx.name)} kept no image embeddings (store.embeddings = 'none'), so it cannot be rescored.")
    st.stop()

current = load(queries.prompts, ctx.run_id)
default_text = "\n".join(f"{p} | {label}" for p, label in zip(current["prompt"], current["label"], strict=True))
text = param_text("Prompts", "prompts", default=default_text, height=160)
try:
    prompts = parse_lines(text)
except InputError as e:
    st.error(md(e))
    st.stop()

try:
    embeddings = lab.run_embeddings(str(ctx.db), ctx.name, snapshot())
except InputError as e:  # e.g. a running run whose last images have no stored embeddings yet
    st.warning(md(e))
    st.stop()
clip = lab.text_model(embeddings.model, embeddings.dtype)
result = lab.score(clip, embeddings, tuple((p.text, p.label) for p in prompts),
                   key=(str(ctx.db), ctx.name, snapshot()))
st.caption(f"{len(prompts)} prompts × {len(embeddings.ablations)} ablations × {len(embeddings.image_ids):,} images "
           f"of run {md(ctx.name)}; correct = the selected prompt's label is among the image's labels.")

table, chart = layout.chart_columns([2, 3])
table.dataframe(result.accuracy, hide_index=True,
                column_config={"accuracy": st.column_config.NumberColumn(format="%.3f"),
                               "change": st.column_config.NumberColumn("change vs baseline", format="%+.3f")})
layout.chart(charts.lab_accuracy_chart, result.accuracy, container=chart)

labels_of = dict(zip(embeddings.image_ids, embeddings.labels, strict=True))
image_id = param_select("Image", embeddings.image_ids, "image", format_func=lambda i: f"{i} · {', '.join(labels_of[i])}")
scores, picks = image_frames(result, embeddings, image_id)
layout.chart(charts.logit_heatmap, scores, picks)

with st.form("save"):
    name = st.text_input("Save these prompts as a run named", value=f"{ctx.name}-lab")
    if st.form_submit_button("Save as run"):
        try:
            with st.spinner("Scoring from stored embeddings..."):
                lab.save(ctx.db, ctx.name, prompts, name.strip(), clip)
            st.success(f"Saved run {md(name.strip())}: pick it in the sidebar (or `python -m compute list`).")
        except InputError as e:
            st.error(md(e))
