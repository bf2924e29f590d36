"""Prompt lab: score new prompts on the stored run without recomputing the vision tower.

Only the vision tower is ablated, so the run's stored (image, ablation) embeddings and one text pass give
the logits of any prompt under every ablation at once. "Save as a run" makes the same numbers a run of
the store (``python -m compute rescore``), with captions if the run has a captioner.
"""

import streamlit as st

from analysis import charts, queries
from analysis.text import md
from compute.errors import InputError
from dashboard import lab, ui
from dashboard.state import param_select, set_param

ctx = ui.context()
st.title("Prompt lab")
st.caption("Type prompts, one per line as `text | label` (label: the image label that makes the prompt "
           "correct). Scores come from the run's stored image embeddings and one pass of CLIP's text tower.")
if ui.no_results(ctx):
    st.stop()
if not ui.load(queries.has_embeddings, ctx.name):
    st.warning(f"Run {md(ctx.name)} kept no image embeddings (store.embeddings = 'none'), so it cannot be rescored.")
    st.stop()

current = ui.load(queries.prompts, ctx.run_id)
default_text = "\n".join(f"{p} | {label}" for p, label in zip(current["prompt"], current["label"], strict=True))
text = st.text_area("Prompts", value=st.query_params.get("prompts", default_text), height=160, key="lab_prompts")
set_param("prompts", text)
try:
    prompts = lab.parse_lines(text)
except InputError as e:
    st.error(md(e))
    st.stop()

embeddings = lab.run_embeddings(str(ctx.db), ctx.name, ui.change_token(ctx.db))
clip = lab.text_model(embeddings.model, embeddings.dtype)
result = lab.score(clip, embeddings, tuple((p.text, p.label) for p in prompts),
                   key=(str(ctx.db), ctx.name, ui.change_token(ctx.db)))
st.caption(f"{len(prompts)} prompts × {len(embeddings.ablations)} ablations × {len(embeddings.image_ids):,} images "
           f"of run {md(ctx.name)}; correct = the selected prompt's label is among the image's labels.")

table, chart = ui.chart_columns([2, 3])
table.dataframe(result.accuracy, hide_index=True,
                column_config={"accuracy": st.column_config.NumberColumn(format="%.3f"),
                               "change": st.column_config.NumberColumn("change vs baseline", format="%+.3f")})
ui.chart(charts.lab_accuracy_chart, result.accuracy, container=chart)

labels_of = dict(zip(embeddings.image_ids, embeddings.labels, strict=True))
image_id = param_select("Image", embeddings.image_ids, "image", format_func=lambda i: f"{i} · {', '.join(labels_of[i])}")
scores, picks = lab.image_frames(result, embeddings, image_id)
ui.chart(charts.logit_heatmap, scores, picks)

with st.form("save"):
    name = st.text_input("Save these prompts as a run named", value=f"{ctx.name}-lab")
    if st.form_submit_button("Save as run"):
        try:
            with st.spinner("Scoring from stored embeddings..."):
                lab.save(ctx.db, ctx.name, prompts, name.strip(), clip)
            st.success(f"Saved run {md(name.strip())}: pick it in the sidebar (or `python -m compute list`).")
        except InputError as e:
            st.error(md(e))
