"""Compare: two ablations of a run, or two runs over the same images and prompts, side by side: per-label
accuracy differences, McNemar's paired test, and the images whose correctness flips."""

import streamlit as st

from analysis import charts, queries, stats
from analysis.text import md, md_list
from dashboard import layout, navigation, pages, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select
from dashboard.thumbnails import THUMB_PX, image_paths, thumbnail

FLIP_ROWS = 500  # rows of the flip table; the counts above it cover every image
FLIP_THUMBS = 12

MODES = {"ablations": "two ablations of this run", "runs": "two runs"}

ctx = context()
st.title("Compare")
if no_results(ctx):
    st.stop()

runs = load(queries.runs)
mode_col, _ = st.columns([1, 2])
mode = param_select("Compare", list(MODES), "mode", format_func=MODES.get, container=mode_col)
left, right = st.columns(2)
if mode == "runs":
    # A pairing means something only over the same question: the same prompts (text and label, in order)
    # asked of the same images (matched on id and file name, see queries.PAIRS).
    mine = load(queries.prompts, ctx.run_id)[["prompt", "label"]].to_records(index=False).tolist()
    others = runs[runs["run"] != ctx.name]
    same = [r.run for r in others.itertuples()
            if load(queries.prompts, int(r.run_id))[["prompt", "label"]].to_records(index=False).tolist() == mine]
    excluded = [r for r in others["run"] if r not in same]
    if excluded:
        st.caption(f"Not comparable with {md(ctx.name)} (other prompts or labels): {md_list(excluded)}.")
    if not same:
        st.info(f"No other run asks the same prompts as {md(ctx.name)}: a paired comparison needs the same "
                "prompts and images. Compare two ablations of this run instead.")
        st.stop()
    run_b = param_select("Run B", same, "run_b", container=right)
    row_b = runs[runs["run"] == run_b].iloc[0]
    ablations_b = load(queries.ablations, int(row_b["run_id"]))
    left.caption(f"A: run {md(ctx.name)}")
    name_a = widgets.ablation_select(ctx, "Ablation A", "run_a_ablation", default=ctx.baseline_name, container=left)
    names_b = list(ablations_b["ablation"])
    name_b = param_select("Ablation B", names_b, "run_b_ablation",
                          default=name_a if name_a in names_b else None, container=right)
    run_id_b, id_b = int(row_b["run_id"]), int(ablations_b.loc[ablations_b["ablation"] == name_b, "ablation_id"].iloc[0])
    title_a, title_b = f"{ctx.name}/{name_a}", f"{run_b}/{name_b}"
else:
    name_a = widgets.ablation_select(ctx, "Ablation A", "a", default=ctx.baseline_name, container=left)
    name_b = widgets.ablation_select(ctx, "Ablation B", "b", default=ctx.default_ablation(), container=right)
    run_id_b, id_b = ctx.run_id, ctx.ablation_id(name_b)
    title_a, title_b = name_a, name_b
id_a = ctx.ablation_id(name_a)

args = (ctx.run_id, id_a, run_id_b, id_b)
counts = load(queries.compare_counts, *args)
st.caption(f"A = {md(title_a)}, B = {md(title_b)}: the {counts['images']:,} images computed under both "
           f"(the same image id and file name).")
if counts["images"] == 0:
    st.info("No image is computed under both A and B.")
    st.stop()

_, p, method = stats.mcnemar(counts["only_a"], counts["only_b"])
cols = st.columns(5)
n = counts["images"]
cols[0].metric("Accuracy A", f"{(counts['both_right'] + counts['only_a']) / n:.3f}")
cols[1].metric("Accuracy B", f"{(counts['both_right'] + counts['only_b']) / n:.3f}",
               f"{(counts['only_b'] - counts['only_a']) / n:+.3f}")  # Streamlit reads the sign: ASCII
cols[2].metric("Right only under A", f"{counts['only_a']:,}")
cols[3].metric("Right only under B", f"{counts['only_b']:,}")
cols[4].metric("McNemar p", stats.format_p(p),
               help=f"{method}; one test of this pair, not adjusted (the Overview and Layers pages adjust "
               "every ablation against baseline with Holm's method).")

per_label = load(queries.compare_labels, *args)
flips = load(queries.compare_flips, *args, FLIP_ROWS)
image_paths(ctx.run_id)  # what the thumbnails open: every read before the drawing (dashboard.reading)
chart_col, table_col = layout.chart_columns([3, 2])
layout.chart(charts.compare_chart, per_label, title_a, title_b, container=chart_col)
table_col.dataframe(per_label, hide_index=True,
                    column_config={c: st.column_config.NumberColumn(format="%.3f")
                                   for c in ("accuracy_a", "accuracy_b", "difference")})

st.subheader("Images that flip")
st.caption(f"{counts['only_a'] + counts['only_b']:,} images right under exactly one of A and B "
           f"(first {min(len(flips), FLIP_ROWS)} listed, those A gets right first); open one on the Image page.")
link_ablation = name_b if mode == "ablations" else name_a  # the Image page compares it with baseline
shown_flips = flips.head(FLIP_THUMBS)
for col, r in zip(layout.grid_cells(len(shown_flips), THUMB_PX, "compare_grid"), shown_flips.itertuples(), strict=True):
    col.image(thumbnail(ctx.run_id, int(r.image_id)), width=THUMB_PX)
    col.caption(f"{r.image_id}: A {md(r.selected_a)} {'✓' if r.correct_a else '✗'} · B {md(r.selected_b)} "
                f"{'✓' if r.correct_b else '✗'}")
    col.page_link(navigation.page("image"), label=f"image {r.image_id}",
                  query_params={"run": ctx.name, "image": str(r.image_id), "ablation": link_ablation})
table = flips.assign(open=[pages.href("image", {"run": ctx.name, "image": int(i), "ablation": link_ablation})
                           for i in flips["image_id"]])
st.dataframe(table, hide_index=True,
             column_config={"open": st.column_config.LinkColumn("open", display_text="image page"),
                            "confidence_a": st.column_config.NumberColumn(format="%.3f"),
                            "confidence_b": st.column_config.NumberColumn(format="%.3f")})
