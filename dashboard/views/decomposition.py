"""Decomposition: what each layer and head writes directly into the image embedding, against what its ablation
changes (total = direct + indirect), the mean-ablation lab, and each head in words (TextSpan), from what the
compute stage stored (analysis.decomposition; no model run). Every number is about each image's correct
prompt, as the share of its logit or that share minus its mean over the prompts (what moves the pick).

- the direct shares of attention and MLP per layer (mean, 95% interval) and of every head (a heatmap whose
  cells a click adds to the lab);
- total, direct and indirect effect of every single-layer and single-head ablation, under the one
  significance rule (paired t-test against 0, Holm over the run's ablations);
- the mean-ablation lab: a preset and chosen components, mean-ablated, and the accuracy at once
  (analysis.queries.mean_ablation), beside the curve of "all but the last N layers";
- head cards with their TextSpan texts; a card's "Images" shows the images the head contributes most to.

A run without a decomposition, or a store from before it (version 2, read-only), gets one line saying how to
have one.
"""

import pandas as pd
import streamlit as st

from analysis import decomposition as dec
from analysis import decomposition_charts as dec_charts
from analysis import decomposition_tables, queries
from analysis.tables import number
from analysis.text import md, md_list
from dashboard import clicks, layout, navigation, state
from dashboard.context import context, no_results
from dashboard.reading import load, release, snapshot
from dashboard.state import param_multiselect, param_select, reset_param
from dashboard.thumbnails import THUMB_PX, image_paths, thumbnail

NONE = "none"
TOP_K = 8
CARD_PX = 300
CLICKS = "_decomposition_clicks"  # session_state: how many heatmap clicks the lab has taken (the chart's key)
SEP = ","  # between component labels in the URL (L3.h1, L3.mlp: no comma)

ctx = context()
st.title("Decomposition")
if no_results(ctx):
    st.stop()
found = load(dec.state_of, ctx.run_id)
d = load(dec.read, ctx.run_id) if found["tables"] else None
if d is None:
    st.info(dec.missing_text(md(ctx.name), found))
    st.stop()

measure = param_select("Measure", list(dec.MEASURES), "dmeasure", format_func=dec.MEASURES.get,
                       container=st.columns([2, 1])[0],
                       help="A component's share of each image's correct prompt's logit, or that share minus its "
                            "mean over the run's prompts: a term every prompt gets alike moves no pick.")
st.caption(f"Over {d.images:,} decomposed images of run {md(ctx.name)}, each judged on its correct prompt (of the "
           "prompts naming one of its labels, the one with the highest unablated logit). Shares and effects are in "
           "logit units; the shares of all components sum to the logit. From the stored decomposition, no model run.")

# --------------------------------------------------------------------------------------------------
# Every read first, then the drawing (dashboard.reading).
labels = list(d.components["label"])
by_label = dict(zip(d.components["label"], d.components["component_id"].astype(int), strict=True))


@st.cache_data(show_spinner=False, max_entries=16)
def frames(db: str, token: tuple, run_id: int, measure: str, _d: dec.Decomposition, _ablations: pd.DataFrame) -> tuple:
    """The page's statistics in ``measure`` (bootstrap intervals, tests), cached with the store's state
    (``token``): a rerun that changes the lab or a card redraws without recomputing them."""
    return (dec.layer_parts(_d, measure), dec.other_parts(_d, measure), dec.head_cells(_d, measure),
            dec.effect_table(_d, _ablations, measure), dec.curve(_d))


parts, rest, cells, table, curve = frames(str(ctx.db), snapshot(), ctx.run_id, measure, d, ctx.ablations)
layer_rows, head_rows = dec.single_layer_rows(table), dec.head_rows(table)

# A click on a head's cell (the heatmap below) adds the head to the lab's components, or takes it out; the chart
# then starts afresh under a new key, so the same cell can be clicked again.
clicked = st.session_state.get(CLICKS, 0)
picked = clicks.picked(st.session_state.get(f"dec_shares_{clicked}"))
if picked and picked.get("label") in by_label:
    widget = state.widget_key("lab_add")
    now = st.session_state.get(widget)
    now = now if isinstance(now, list) else [c for c in state.get_param("lab_add").split(SEP) if c in by_label]
    cell = str(picked["label"])
    now = [c for c in now if c != cell] if cell in now else [*now, cell]
    st.session_state[widget] = now  # before the multiselect is drawn: it starts there
    state.set_param("lab_add", SEP.join(now))
    clicked = st.session_state[CLICKS] = clicked + 1

shares_box, effects_box, lab_box, cards_box = st.container(), st.container(), st.container(), st.container()

with lab_box:
    st.header("Mean-ablation lab")
    st.caption("Replace the direct contributions of the chosen components by their means over the run's images "
               "(direct-effect mean ablation) and see accuracy at once, from the stored shares: no model runs. A "
               "preset and any components added here (or by a click on a head's cell above) are ablated together.")
    row = st.columns([2, 1, 3])
    preset = param_select("Preset", [NONE, *dec.PRESETS], "lab_preset", default=dec.PRESETS[0], container=row[0])
    n = param_select("N", list(range(d.n_layers + 2)), "lab_n", default=min(4, d.n_layers), container=row[1],
                     help="The N of the presets that name one: the last N layers.")
    added = param_multiselect("And these components", labels, "lab_add", sep=SEP, container=row[2])
ids = sorted(set(dec.preset(d.components, preset, n) if preset != NONE else []) | {by_label[c] for c in added})
lab = dec.lab_result(load(queries.mean_ablation, ctx.run_id, tuple(ids)), load(queries.mean_ablation, ctx.run_id, ()))

with cards_box:
    st.header("Heads in words (TextSpan)")
    heads = list(cells["label"])
    described = [f"L{la}.h{h}" for la, h in dec.described_heads(d)]
    head = param_select("Head", heads, "dhead", default=described[0] if described else heads[-1],
                        container=st.columns([1, 3])[0],
                        help="Its images: those whose measure from this head is largest. A card's Images button "
                             "chooses it too.")
top = dec.top_images(d, by_label[head], TOP_K, measure)
info = load(queries.images, ctx.run_id).set_index("image_id")["labels"]
image_paths(ctx.run_id)  # what the thumbnails open, read with the rest
release()  # all read: let a waiting writer in while the page is drawn

# --------------------------------------------------------------------------------------------------
with shares_box:
    st.header("Direct shares")
    extra = "; ".join(f"{dec.OTHER_NAMES.get(r.component, md(r.component))} {number(r.mean, 3, sign=True)}"
                      for r in rest.itertuples())
    st.caption(f"What each layer and head writes directly into the embedding: its {md(dec.MEASURES[measure])}, mean "
               f"over images with its 95% bootstrap interval. Layer 0 is the "
               f"embeddings; attention is the layer's heads and out_proj's bias." + (f" Beside them: {extra}." if extra
                                                                                    else ""))
    left, right = layout.chart_columns(2)
    layout.chart(dec_charts.layer_share_chart, parts, measure, container=left)
    layout.chart(dec_charts.head_share_heatmap, cells, measure, container=right, click=f"dec_shares_{clicked}",
                 fields=("label",))

with effects_box:
    st.header("Total, direct and indirect effects")
    st.caption("What each layer contributes, answered both ways: an ablation's total effect on the correct prompt's "
               "logit (the ablated logit minus the baseline's: everything that changes downstream) and its direct "
               "effect (the ablated heads' or layer's own output recomputed, read out with everything else frozen); "
               "indirect = total − direct, what reaches the output only through later layers. Significant: the paired "
               "t-test of the per-image values against 0, Holm over the run's ablations (one family per quantity), the "
               "rule of every page for a continuous quantity. " + clicks.HINT)
    if not len(layer_rows) and not len(head_rows):
        st.info(f"Run {md(ctx.name)} has no single-layer or single-head ablation (`sweep = \"singles\"`, `\"paper\"` or "
                "`\"heads\"` add them); the other ablations' effects are in the table below.")
    if len(layer_rows):
        clicks.follow(ctx, layout.chart(dec_charts.effects_chart, layer_rows, measure, click="dec_effects"))
    if len(head_rows):
        row = st.columns([1, 1, 2])
        group = param_select("Ablated one head at a time", list(dict.fromkeys(head_rows["group"])), "dgroup",
                             container=row[0])
        quantity = param_select("Effect", list(dec.QUANTITIES), "dquantity", default="indirect", container=row[1],
                                format_func=dec_charts.QUANTITY_TITLES.get)
        clicks.follow(ctx, layout.chart(dec_charts.effects_heatmap, head_rows, quantity, group, measure,
                                        click="dec_effect_heads"))
    header, rows = decomposition_tables.effect_cells(table)
    shown = decomposition_tables.effect_rows(table)
    if rows:
        st.caption(f"Every single-layer and single-head ablation: mean [95% interval]; {md(decomposition_tables.MARK)} "
                   "significant under the rule. Click a row to open its images on the Failures page.")
        clicks.follow(ctx, clicks.table(pd.DataFrame(rows, columns=header), "dec_effects_table", shown, hide_index=True,
                                        column_config={"Ablation": st.column_config.TextColumn("Ablation", pinned=True)}))

with lab_box:
    cols = st.columns(3)
    cols[0].metric("Accuracy", f"{lab['accuracy']:.3f}", **layout.delta(f"{lab['change']:+.3f}"),
                   help="Over the decomposed images; the change against their unablated picks.")
    cols[1].metric("Components mean-ablated", f"{len(ids)} of {len(labels)}")
    cols[2].metric("Unablated accuracy", f"{lab['baseline']:.3f}")
    what = (dec.preset_name(preset, n, d.n_layers) if preset != NONE else "no preset") + \
        (f" and {md_list(added)}" if added else "")
    st.caption(f"Mean-ablated: {md(what)}. Accuracy {lab['accuracy']:.3f}, 95% interval [{lab['lo']:.3f}, "
               f"{lab['hi']:.3f}]; change {lab['change']:+.3f} [{lab['change_lo']:+.3f}, {lab['change_hi']:+.3f}] "
               f"(paired bootstrap) over {lab['images']:,} images: {lab['only_baseline']:,} right only unablated, "
               f"{lab['only_lab']:,} right only mean-ablated.")
    layout.chart(dec_charts.curve_chart, curve, lab["baseline"])

with cards_box:
    if not described:
        st.info(f"Run {md(ctx.name)} has no TextSpan descriptions (`textspan_layers` in `[decomposition]`, and a run "
                "that keeps its vectors); the images of any head are below.")
    shares = cells.set_index("label")

    def card(box, name: str, button: bool) -> None:
        layer, h = (int(x) for x in name[1:].split(".h"))
        texts = dec.head_texts(d, layer, h)
        box.markdown(f"**{md(name)}** · direct share {shares.loc[name, 'mean']:+.3f}")
        if len(texts):
            box.markdown("\n".join(f"{t.rank}. {md(t.text)} ({t.variance:.0%})" for t in texts.itertuples()))
        if button:
            box.button("Images", key=f"dec_card_{name}", on_click=reset_param, args=("dhead", name),
                       type="primary" if name == head else "secondary")

    mine, pictures = st.columns([1, 3])
    card(mine.container(border=True), head, button=False)
    pictures.caption(f"The {len(top)} images whose {md(dec.MEASURES[measure])} from {md(head)} is largest (the value "
                     "under each). Open one on the Image page for its per-patch contributions.")
    for cell, r in zip(layout.grid_cells(len(top), THUMB_PX, "dec_images", pictures), top.itertuples(), strict=True):
        image_id = int(r.image_id)
        cell.image(thumbnail(ctx.run_id, image_id), width=THUMB_PX)
        cell.page_link(navigation.page("image"), label=f"image {image_id}",  # above the text: links line up
                       query_params={"run": ctx.name, "image": str(image_id), "tok_component": head})
        cell.caption(f"**{md(info.get(image_id, ''))}** · {r.value:+.3f}")
    if described:
        st.subheader("Every described head")
        st.caption("Each with the texts whose directions explain most of its direct contributions across the images "
                   "(TextSpan, in the order chosen; in brackets each one's share of the head's variance) and its mean "
                   "direct share. Images shows a head's images above.")
        for cell, name in zip(layout.grid_cells(len(described), CARD_PX, "dec_cards"), described, strict=True):
            card(cell.container(border=True), name, button=True)
