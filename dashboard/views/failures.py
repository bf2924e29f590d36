"""Failures: a paginated grid of the images an ablation gets wrong, or that flip against baseline, with
filters on the true and the selected label, sorted by margin or confidence. "Open" shows an image on the Image
page in this tab, which then steps through the same slice (previous / next).

It opens on the ablation it was called with (a link, a click on a chart or table of another page, the user's
choice on another page), else on the worst one (lowest accuracy), not on another page's default. Thumbnails
keep one size at any window width (a grid of fixed cells that wraps)."""

import math

import pandas as pd
import streamlit as st

from analysis import queries, slices
from analysis.text import md, md_list
from dashboard import failure_slice, layout, navigation, state, widgets
from dashboard.context import context, no_results
from dashboard.failure_slice import PAGE_SIZE
from dashboard.reading import load, release
from dashboard.state import param_select, reset_param
from dashboard.thumbnails import THUMB_PX, image_paths, thumbnail

ctx = context()
st.title("Failures")
if no_results(ctx):
    st.stop()

true_labels = list(load(queries.true_labels, ctx.run_id)["label"])
selected_labels = sorted(set(load(queries.prompts, ctx.run_id)["label"]))
row = st.columns(3) + st.columns(2)
ablation = widgets.ablation_select(ctx, "Ablation", "ablation", default=failure_slice.worst(ctx), container=row[0],
                                   own_default=True)
outcome = param_select("Show", failure_slice.OUTCOMES, "outcome", container=row[1],
                       format_func=lambda o: slices.OUTCOMES[o][1])
label = widgets.label_select("True label", "label", true_labels, container=row[2])
selected = widgets.label_select("Selected label", "selected", selected_labels, container=row[3])
sort = param_select("Sort by", list(queries.SORTS), "sort", container=row[4],
                    format_func=lambda s: queries.SORTS[s][1])

where = failure_slice.where(ctx, ablation, outcome, label, selected)
n_rows, _ = load(queries.slice_count, ctx.run_id, ctx.baseline_id, where)
n_pages = max(1, math.ceil(n_rows / PAGE_SIZE))
if state.changed("failures_slice", (where, sort)):
    reset_param("page", 1)  # new filters: start from the first page
page_box, caption_box = st.columns([1, 5])
page = param_select("Page", list(range(1, n_pages + 1)), "page", container=page_box,
                    format_func=lambda p: f"{p} of {n_pages}")
caption_box.caption(f"{n_rows:,} images: {md(where.caption)}; sorted by {md(queries.SORTS[sort][1])}. "
                    f"Open one to see it on the Image page, then step through this slice.")
if n_rows == 0:
    st.info("No image matches these filters.")
    st.stop()

rows = load(queries.slice_rows, ctx.run_id, ctx.baseline_id, where, sort, PAGE_SIZE, (page - 1) * PAGE_SIZE)
image_paths(ctx.run_id)  # what the thumbnails open, read with the rest
release()  # all read: let a waiting writer in while the grid is drawn
link = {"run": ctx.name, "ablation": ablation, "outcome": outcome, "sort": sort, "from": failure_slice.FROM,
        **({"label": label} if label else {}), **({"selected": selected} if selected else {})}
for cell, r in zip(layout.grid_cells(len(rows), THUMB_PX, "failures_grid"), rows.itertuples(), strict=True):
    cell.image(thumbnail(ctx.run_id, int(r.image_id)), width=THUMB_PX)
    # the link under the image, above text of any length: the links of a row line up
    cell.page_link(navigation.page("image"), label=f"image {r.image_id}", query_params={**link, "image": str(r.image_id)})
    margin = "—" if pd.isna(r.margin) else f"{r.margin:.2f}"  # none with a single prompt
    baseline = "" if pd.isna(r.baseline_label) else f" (baseline: {md(r.baseline_label)})"  # not computed yet
    cell.caption(f"**{md_list(r.labels)}** → {md(r.selected_label)}{baseline}  \n"
                 f"conf {r.confidence:.2f} · margin {margin}")
