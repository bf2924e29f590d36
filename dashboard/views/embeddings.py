"""Embeddings: the run's stored image embeddings projected to 2-D (PCA of the baseline embeddings), and how
an ablation moves each image away from where baseline put it; coloured by true label, by the label the
ablation selects, or by right and wrong."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis import charts, projection, queries, tables
from analysis.text import md
from dashboard import clicks, layout, navigation, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select

SAMPLE = 1000  # images drawn (a fixed sample: the same for every ablation)
SHIFT_SAMPLE = 300  # images behind the per-ablation movement bars (every ablation's embeddings are read)
COLOURS = {"label": "true label", "selected": "label selected under the ablation", "correct": "right or wrong"}

ctx = context()
st.title("Embeddings")
st.caption("Each point is an image's CLIP image embedding (projected, unit length), drawn in the plane of the "
           "two main directions of the baseline embeddings (PCA): hollow under baseline, filled under the "
           "ablation, joined by a line. The plane is fitted on baseline alone, so every ablation is drawn in "
           "the same frame. Click a point to open that image on the Image page, a bar to open that ablation's "
           "images on the Failures page.")
if no_results(ctx):
    st.stop()
if not load(queries.has_embeddings, ctx.name):
    st.warning(f"Run {md(ctx.name)} kept no image embeddings (store.embeddings = 'none').")
    st.stop()

left, right = st.columns(2)
ablation = widgets.ablation_select(ctx, "Ablation", "ablation", default=ctx.default_ablation(), container=left)
colour = param_select("Colour by", list(COLOURS), "colour", format_func=COLOURS.get, container=right)

ids = [ctx.baseline_id, ctx.ablation_id(ablation)]
image_ids, emb = load(queries.embeddings, ctx.name, ids, SAMPLE)  # (n, 2, E)
if not image_ids:
    st.info(f"No image has embeddings under both baseline and {md(ablation)} yet.")
    st.stop()
images = load(queries.images, ctx.run_id)
labels = dict(zip(images["image_id"].map(int), images["labels"], strict=True))
moves, proj = projection.movement(image_ids, emb, labels)
picked = load(queries.picks, ctx.run_id, ids)
all_ids = [int(a) for a in ctx.ablations["ablation_id"]]
shift_ids, shift_emb = load(queries.embeddings, ctx.name, all_ids, SHIFT_SAMPLE)  # (n, A, E)
under = picked[picked["ablation_id"] == ids[1]].set_index("image_id")
moves["selected"] = moves["image_id"].map(under["selected_label"]).fillna("")
moves["correct"] = moves["image_id"].map(under["correct"]).map({True: "right", False: "wrong"}).fillna("")

label_list = [labels[i] for i in image_ids]
cols = st.columns(4)
cols[0].metric("Images drawn", f"{len(image_ids):,}", help=f"A fixed sample of at most {SAMPLE:,} of the run's images.")
cols[1].metric("Mean cosine with baseline", f"{moves['cosine'].mean():.3f}",
               help="1: the ablation leaves every embedding where it was.")
base_acc = projection.centroid_accuracy(np.stack([emb[:, 0], emb[:, 0]], axis=1), label_list)
abl_acc = projection.centroid_accuracy(emb, label_list)
cols[2].metric("Nearest label centroid", "—" if np.isnan(abl_acc) else f"{abl_acc:.3f}",
               **({} if np.isnan(abl_acc) else layout.delta(f"{abl_acc - base_acc:+.3f} vs baseline")),  # ASCII sign
               help="Share of images whose embedding is nearest to the baseline centroid of their own label: how "
               "well the labels stay apart in embedding space, whatever the prompts.")
cols[3].metric("Variance shown", f"{proj.explained.sum():.0%}", help="Of the baseline embeddings, by the two axes.")

n_categories = moves[colour].astype(str).nunique()
if n_categories > charts.MAX_CATEGORIES:
    st.caption(f"{n_categories} values of {COLOURS[colour]}: the {charts.MAX_CATEGORIES} most frequent have a colour "
               f"and shape each, the rest are drawn as {md(charts.OTHER)}.")
# Its own size, not stretched: a square frame with equal axes, whose legend below does not squeeze the plot.
point = layout.chart(charts.embedding_chart, moves, colour, COLOURS[colour], ablation, ctx.baseline_name,
                     width="content", click="embeddings_points", fields=("image_id",))
if point and point.get("image_id") is not None:  # a point is an image: open it under this ablation
    st.switch_page(navigation.page("image"), query_params={"run": ctx.name, "image": str(int(point["image_id"])),
                                                           "ablation": ablation})

if shift_ids:
    unit = projection.unit(shift_emb)
    base = all_ids.index(ctx.baseline_id)
    cosine = (unit * unit[:, [base]]).sum(axis=-1).mean(axis=0)  # (A,)
    shift = pd.DataFrame({"ablation": ctx.ablation_names(), "cosine": cosine, "images": len(shift_ids)})
    st.subheader("How far each ablation moves the embeddings")
    shown, shown_caption = widgets.ablation_subset(ctx, near=ablation)
    clicks.follow(ctx, layout.chart(charts.movement_bars, tables.select_ablations(shift, shown), click="embeddings_bars"))
    st.caption(f"Over a fixed sample of {len(shift_ids):,} images with every ablation's embedding. {shown_caption}")
