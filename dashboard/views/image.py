"""Image: one image with its labels; the logit of every prompt under every ablation (the study's Figures 3
and 4); the selected prompt and the generated caption per ablation (its Figure 5)."""

import streamlit as st

from dashboard import charts, queries, ui
from dashboard.attention_ui import attention_section
from dashboard.state import param_select

ctx = ui.context()
st.title("Image")
if ui.no_results(ctx):
    st.stop()

images = ui.load(queries.images, ctx.run_id)
labels_of = dict(zip(images["image_id"].map(int), images["labels"], strict=True))
ids = list(labels_of)
left, mid, _ = st.columns([1, 1, 2])
image_id = param_select("Image", ids, "image", container=left,
                        format_func=lambda i: f"{i} · {labels_of[i]}")
default = ctx.ablation_names()[1] if len(ctx.ablations) > 1 else None
ablation = ui.ablation_select(ctx, "Compare baseline with", "ablation", default=default, container=mid)

info = ui.load(queries.image, ctx.run_id, image_id)
scores = ui.load(queries.image_scores, ctx.run_id, image_id)
picks = ui.load(queries.image_selections, ctx.run_id, image_id)
st.caption(f"Image {image_id} ({info['file_name']}) of run {ctx.name}: labels {', '.join(info['labels'])}; "
           f"highlighted ablation {ablation}.")

photo, table = st.columns([1, 2])
photo.image(ui.thumbnail(info["path"], 384), width="stretch", caption=f"{info['file_name']} · {', '.join(info['labels'])}")
if picks.empty:
    table.info("No ablation has been computed for this image yet (or it could not be read).")
    st.stop()
base = picks[picks["ablation_id"] == ctx.baseline_id]
if len(base):
    table.markdown(f"**Baseline** selects *{base['selected_prompt'].iloc[0]}* "
                   f"({'right' if base['correct'].iloc[0] else 'wrong'}, confidence "
                   f"{base['confidence'].iloc[0]:.3f}).")
shown = picks.drop(columns=["ablation_id"]).assign(correct=picks["correct"].map({True: "✓", False: "✗"}))
if shown["caption"].isna().all():
    shown = shown.drop(columns=["caption", "caption_score"])
table.dataframe(
    shown, hide_index=True,
    column_config={
        "confidence": st.column_config.NumberColumn(format="%.3f"),
        "margin": st.column_config.NumberColumn(format="%.3f", help="top logit minus the second"),
        "score_baseline": st.column_config.NumberColumn("score", format="%.4f",
                                                        help="cosine of the unablated image and the selected prompt"),
        "caption_score": st.column_config.NumberColumn(format="%.4f"),
    },
)

ui.chart(charts.logit_heatmap, scores, picks)
shown_ablations = list(dict.fromkeys([ctx.baseline_name, ablation]))
ui.chart(charts.logit_bars, scores, shown_ablations)

attention_section(ctx, info, ablation)
