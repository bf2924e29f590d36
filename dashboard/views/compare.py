"""Compare: two ablations of a run, or two runs over the same images side by side.

Two runs: a run and a variant that asks other prompts of the same images (``rescore``), or a run of another
model on the same images and prompts. Per ablation both runs have, accuracy under each with McNemar's paired
test of B against A, Holm-adjusted over those ablations (the one rule); runs of different depths on one
relative-depth axis (layer / layers); then one pair in detail: per-label accuracy, McNemar's test and the
images whose correctness flips."""

import pandas as pd
import streamlit as st

from analysis import charts, queries, stats, tables
from analysis.text import md
from dashboard import layout, navigation, pages, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select
from dashboard.thumbnails import THUMB_PX, image_paths, thumbnail

FLIP_ROWS = 500  # rows of the flip table; the counts above it cover every image
FLIP_THUMBS = 12

MODES = {"ablations": "two ablations of this run", "runs": "two runs over the same images"}
AXES = {"data": "zoomed to the data", "full": "0 to 1"}


def prompt_list(run_id: int) -> list[tuple[str, str]]:
    return load(queries.prompts, run_id)[["prompt", "label"]].to_records(index=False).tolist()


def relation(mine: list, theirs: list, row: pd.Series, me: dict) -> str:
    """How run B differs from A, in words."""
    parts = []
    if str(row["model"]) != str(me["model"]) or int(row["n_layers"]) != int(me["n_layers"]):
        parts.append(f"another model ({int(row['n_layers'])} layers)")
    parts.append("the same prompts" if theirs == mine else
                 "other prompts, the same labels" if {x for _, x in theirs} == {x for _, x in mine} else
                 "other prompts and labels")
    return ", ".join(parts)


ctx = context()
st.title("Compare")
if no_results(ctx):
    st.stop()

runs = load(queries.runs)
mode_col, _ = st.columns([1, 2])
mode = param_select("Compare", list(MODES), "mode", format_func=MODES.get, container=mode_col)

if mode == "runs":
    # A pairing means something over the same images (matched on id and file name, see queries.PAIRS); the
    # prompts may differ (a rescored variant) and so may the model (another depth).
    shared = load(queries.shared_images, ctx.run_id)
    if shared.empty:
        st.info(f"No other run holds images of {md(ctx.name)} (the same image id and file name): a paired comparison "
                "needs the same images. Rescore this run with other prompts (`python -m compute rescore`, or the "
                "Prompt lab's \"Save as run\"), or run another model on the same dataset. Compare two ablations of "
                "this run instead.")
        st.stop()
    mine = prompt_list(ctx.run_id)
    about = {str(r["run"]): relation(mine, prompt_list(int(r["run_id"])), r, ctx.run) for _, r in shared.iterrows()}
    # Rescored variants first (a run made from this one, the run this one was made from, or a sibling), then
    # runs of the same model: the comparisons one makes most.
    parent = {str(r["run"]): str(r["parent_run"]) for _, r in runs.iterrows() if isinstance(r["parent_run"], str)}
    family = {ctx.name, parent.get(ctx.name, "")} - {""}
    about = dict(sorted(about.items(), key=lambda kv: (not ({kv[0], parent.get(kv[0], "")} & family),
                                                       "another model" in kv[1])))
    st.caption(f"A: run {md(ctx.name)} ({md(ctx.run['model'])}, {int(ctx.run['n_layers'])} layers)")
    pick, axis_col = st.columns([2, 1])  # the runs' names with how they differ: the wider column
    run_b = param_select("Run B", list(about), "run_b", container=pick,
                         format_func=lambda r: f"{r} ({about[r]})")
    row_b = shared[shared["run"] == run_b].iloc[0]
    run_id_b = int(row_b["run_id"])
    axis = param_select("Accuracy axis", list(AXES), "axis", format_func=AXES.get, container=axis_col)
    full = axis == "full"
    pairs = load(tables.compare_runs, ctx.run_id, run_id_b)
    summary_a = load(tables.summary, ctx.run_id)
    summary_b = load(tables.summary, run_id_b)
    ablations_b = load(queries.ablations, run_id_b)
    n_images = int(row_b["shared"])
    differ = n_images - int(row_b["same_labels"])
    deeper = int(ctx.run["n_layers"]) != int(row_b["n_layers"]) or str(ctx.run["model"]) != str(row_b["model"])

    st.caption(f"B: run {md(run_b)}: {md(about[run_b])}; {n_images:,} images in common."
               + (f" {differ:,} of them carry other labels in B: each run judges correctness by its own labels."
                  if differ else ""))

    curves = pd.concat([tables.depth_curve(summary_a, ctx.name, int(ctx.run["n_layers"])),
                        tables.depth_curve(summary_b, run_b, int(row_b["n_layers"]))], ignore_index=True)
    kinds = [k for k in dict.fromkeys(curves["kind"]) if curves.loc[curves["kind"] == k, "run"].nunique() == 2]
    if kinds:
        st.subheader("Accuracy per ablated layer, at its relative depth")
        kind = kinds[0] if len(kinds) == 1 else param_select("Kind", kinds, "depth_kind",
                                                              container=st.columns([1, 3])[0])
        depths = (int(ctx.run["n_layers"]), int(row_b["n_layers"]))
        st.caption("Each single-layer ablation at the layer's depth in its model (layer / layers), "
                   + (f"so models of different depths ({depths[0]} and {depths[1]} layers) share one axis."
                      if depths[0] != depths[1] else f"both models {depths[0]} layers deep.")
                   + " Each run over all its images.")
        layout.chart(charts.relative_depth_chart, curves[curves["kind"] == kind].reset_index(drop=True), full)
    elif deeper:
        st.info("The two runs share no kind of single-layer ablation, so there is no curve per layer to compare.")

    st.subheader("Accuracy per ablation")
    if pairs.empty:
        st.info(f"Runs {md(ctx.name)} and {md(run_b)} have no ablation in common (the same label) computed on "
                "images they share.")
    else:
        n_sig = int((pairs["verdict"] != 0).sum())
        st.caption(f"{len(pairs)} ablation(s) in both runs, each on the images computed under it in both. McNemar's "
                   f"paired test of B against A per ablation, Holm-adjusted over these {len(pairs)} tests: "
                   f"{n_sig} differ at p (Holm) < {stats.ALPHA}."
                   + (" The models differ: an ablation's label names a layer of each model, not the same depth "
                      "(the curve above sets them side by side)." if deeper else ""))
        shown, shown_caption = widgets.ablation_subset(ctx, param="set")
        drawn = tables.select_ablations(pairs, [a for a in shown if a in set(pairs["ablation"])])
        if shown_caption:
            st.caption(shown_caption)
        rows = drawn.assign(change=drawn["verdict"].map(charts.SIG_NAMES))
        layout.chart(charts.paired_accuracy_chart, rows[["ablation", "accuracy_a", "accuracy_b", "change"]],
                     f"A: {ctx.name}", f"B: {run_b}", full)
        verdicts = {-1: "▼ lower *", 0: "", 1: "▲ higher *"}
        st.dataframe(
            drawn.assign(p=drawn["p"].map(stats.format_p), p_holm=drawn["p_holm"].map(stats.format_p),
                         verdict=drawn["verdict"].map(verdicts))[
                ["ablation", "accuracy_a", "accuracy_b", "difference", "only_a", "only_b", "method", "p", "p_holm",
                 "verdict"]],
            hide_index=True, height="content",
            column_config={"ablation": st.column_config.TextColumn("ablation", pinned=True),
                           "accuracy_a": st.column_config.NumberColumn("A", format="%.3f"),
                           "accuracy_b": st.column_config.NumberColumn("B", format="%.3f"),
                           "difference": st.column_config.NumberColumn("B − A", format="%+.3f"),
                           "only_a": st.column_config.NumberColumn("right only under A"),
                           "only_b": st.column_config.NumberColumn("right only under B"),
                           "p_holm": st.column_config.TextColumn("p (Holm)"),
                           "verdict": st.column_config.TextColumn(f"B vs A, p (Holm) < {stats.ALPHA}")})

    st.subheader("One ablation in detail")
    left, right = st.columns(2)
    # The ablation under which most images flip between the runs opens first.
    worst = pairs.loc[(pairs["only_a"] + pairs["only_b"]).idxmax(), "ablation"] if len(pairs) else ctx.baseline_name
    name_a = widgets.ablation_select(ctx, "Ablation A", "run_a_ablation", default=worst, container=left)
    names_b = list(ablations_b["ablation"])
    name_b = param_select("Ablation B", names_b, "run_b_ablation",
                          default=name_a if name_a in names_b else None, container=right)
    id_b = int(ablations_b.loc[ablations_b["ablation"] == name_b, "ablation_id"].iloc[0])
    title_a, title_b = f"{ctx.name}/{name_a}", f"{run_b}/{name_b}"
else:
    left, right = st.columns(2)
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
               **layout.delta(f"{(counts['only_b'] - counts['only_a']) / n:+.3f}"))  # ASCII: Streamlit reads the sign
cols[2].metric("Right only under A", f"{counts['only_a']:,}")
cols[3].metric("Right only under B", f"{counts['only_b']:,}")
cols[4].metric("McNemar p", stats.format_p(p),
               help=f"{method}; one test of this pair, not adjusted (the table above and the Overview and Layers "
               "pages adjust over every ablation with Holm's method).")

per_label = load(queries.compare_labels, *args)
flips = load(queries.compare_flips, *args, FLIP_ROWS)
image_paths(ctx.run_id)  # what the thumbnails open: every read before the drawing (dashboard.reading)
chart_col, table_col = layout.chart_columns([3, 2])
layout.chart(charts.compare_chart, per_label, title_a, title_b, container=chart_col)
table_col.dataframe(per_label, hide_index=True,
                    column_config={c: st.column_config.NumberColumn(format="%.3f")
                                   for c in ("accuracy_a", "accuracy_b", "difference")})

st.subheader("Images that flip")
if flips.empty:
    st.caption("No image is right under exactly one of A and B: they get the same images right.")
else:
    st.caption(f"{counts['only_a'] + counts['only_b']:,} images right under exactly one of A and B "
               f"(first {min(len(flips), FLIP_ROWS)} listed, those A gets right first); open one on the Image page.")
    link_ablation = name_b if mode == "ablations" else name_a  # the Image page compares it with baseline
    shown_flips = flips.head(FLIP_THUMBS)
    cells = layout.grid_cells(len(shown_flips), THUMB_PX, "compare_grid")
    for col, r in zip(cells, shown_flips.itertuples(), strict=True):
        col.image(thumbnail(ctx.run_id, int(r.image_id)), width=THUMB_PX)
        col.page_link(navigation.page("image"), label=f"image {r.image_id}",  # above the text: links line up
                      query_params={"run": ctx.name, "image": str(r.image_id), "ablation": link_ablation})
        col.caption(f"{r.image_id}: A {md(r.selected_a)} {'✓' if r.correct_a else '✗'} · B {md(r.selected_b)} "
                    f"{'✓' if r.correct_b else '✗'}")
    table = flips.assign(open=[pages.href("image", {"run": ctx.name, "image": int(i), "ablation": link_ablation})
                               for i in flips["image_id"]])
    st.dataframe(table, hide_index=True,
                 column_config={"open": st.column_config.LinkColumn("open", display_text="image page"),
                                "confidence_a": st.column_config.NumberColumn(format="%.3f"),
                                "confidence_b": st.column_config.NumberColumn(format="%.3f")})
