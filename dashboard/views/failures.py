"""Failures: a paginated grid of the images an ablation gets wrong, or that flip against baseline, with
filters on the true and the selected label, sorted by margin or confidence. "Open" shows an image on the Image
page in this tab, which then steps through the same slice (previous / next)."""

import math

import pandas as pd
import streamlit as st

from analysis import queries, slices
from analysis.text import md, md_list
from dashboard import ui
from dashboard.state import param_select, reset_param

PAGE_SIZE = 24
GRID_COLUMNS = 6
OUTCOMES = ["wrong", "flip", "broken", "fixed", "changed"]

ctx = ui.context()
st.title("Failures")
if ui.no_results(ctx):
    st.stop()

true_labels = list(ui.load(queries.true_labels, ctx.run_id)["label"])
selected_labels = sorted(set(ui.load(queries.prompts, ctx.run_id)["label"]))
default = ctx.ablation_names()[1] if len(ctx.ablations) > 1 else None
row = st.columns(3) + st.columns(2)
ablation = ui.ablation_select(ctx, "Ablation", "ablation", default=default, container=row[0])
outcome = param_select("Show", OUTCOMES, "outcome", container=row[1],
                       format_func=lambda o: slices.OUTCOMES[o][1])
label = ui.label_select(ctx, "True label", "label", true_labels, container=row[2])
selected = ui.label_select(ctx, "Selected label", "selected", selected_labels, container=row[3])
sort = param_select("Sort by", list(queries.SORTS), "sort", container=row[4],
                    format_func=lambda s: queries.SORTS[s][1])

where = (slices.ablation(ctx.ablation_id(ablation), ablation) & slices.outcome(outcome)
         & slices.true_label(label) & slices.selected_label(selected))
n_rows, _ = ui.load(queries.slice_count, ctx.run_id, ctx.baseline_id, where)
n_pages = max(1, math.ceil(n_rows / PAGE_SIZE))
signature = (where, sort)
if st.session_state.get("failures_slice", signature) != signature:
    reset_param("page", 1)  # new filters: start from the first page
st.session_state["failures_slice"] = signature
page_box, caption_box = st.columns([1, 5])
page = param_select("Page", list(range(1, n_pages + 1)), "page", container=page_box,
                    format_func=lambda p: f"{p} of {n_pages}")
caption_box.caption(f"{n_rows:,} images: {md(where.caption)}; sorted by {md(queries.SORTS[sort][1])}. "
                    f"Open one to see it on the Image page, then step through this slice.")
if n_rows == 0:
    st.info("No image matches these filters.")
    st.stop()

rows = ui.load(queries.slice_rows, ctx.run_id, ctx.baseline_id, where, sort, PAGE_SIZE, (page - 1) * PAGE_SIZE)
ui.release()  # all read: let a waiting writer in while the grid is drawn
link = {"run": ctx.name, "ablation": ablation, "outcome": outcome, "sort": sort, "from": "failures",
        **({"label": label} if label else {}), **({"selected": selected} if selected else {})}
for start in range(0, len(rows), GRID_COLUMNS):
    for col, r in zip(st.columns(GRID_COLUMNS), rows.iloc[start:start + GRID_COLUMNS].itertuples(), strict=False):
        col.image(ui.thumbnail(ctx.run_id, int(r.image_id)), width="stretch")
        margin = "—" if pd.isna(r.margin) else f"{r.margin:.2f}"  # none with a single prompt
        baseline = "" if pd.isna(r.baseline_label) else f" (baseline: {md(r.baseline_label)})"  # not computed yet
        col.caption(f"**{md_list(r.labels)}** → {md(r.selected_label)}{baseline}  \n"
                    f"conf {r.confidence:.2f} · margin {margin}")
        col.page_link("views/image.py", label=f"image {r.image_id}", icon=":material/open_in_new:",
                      query_params={**link, "image": str(r.image_id)})
