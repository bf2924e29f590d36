"""Heads: a layer x head heatmap of the change against baseline when one head at a time is ablated
(accuracy or the selected-prompt score), with the cells significant under the rule of every page outlined
(Holm over the run's ablations; McNemar for accuracy, the paired t-test for the score); hovering shows the
value and its 95% interval, a click opens the Failures page for that ablation.

A run with ``[attribution]`` (compute.attribution) also has each head's estimated change of the margin M: the
heatmap shows exact or estimated, and where the run holds both, a scatter of estimate against exact with the
figures of how good the estimate is (rho, top-k recall of the most harmful heads, sign agreement) and its
largest misses."""

import streamlit as st

from analysis import attribution, charts, heads, queries, slices, stats, tables
from analysis.text import md
from dashboard import clicks, widgets
from dashboard.change_table import change_table
from dashboard.context import context, no_results
from dashboard.reading import load, release
from dashboard.state import param_select

METRICS = ["accuracy", "score_baseline"]
EFFECTS = ["exact", "estimated"]
EFFECT_TITLES = {"exact": "exact (the sweep)", "estimated": "estimated (attribution)"}

ctx = context()
st.title("Heads")
if no_results(ctx):
    st.stop()
swept = heads.head_groups(ctx.ablations)
estimated = load(queries.attribution_specs, ctx.run_id)
groups = list(dict.fromkeys(swept + estimated))
if not groups:
    st.info(f"Run {md(ctx.name)} has no single-head ablations. Add `sweep = \"heads\"` (every head of every layer, "
            "identity) or extras such as `\"zero:6/h3\"` to an experiment, or estimate every head with "
            "`[attribution] kinds = [\"identity\"]`; `make demo` runs `demo-heads`.")
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
left, mid, right, last = st.columns([1, 1, 1, 1])
group = param_select("Ablated one head at a time", groups, "heads_kind", container=left)
shown = [e for e, there in zip(EFFECTS, (group in swept, group in estimated), strict=True) if there]
# The choice is offered where there is one: a run without attribution draws the exact heatmap as it always did.
effect = shown[0] if len(shown) == 1 else param_select("Heatmap", shown, "heads_effect", container=last,
                                                       format_func=EFFECT_TITLES.get)

if effect == "estimated":
    cells = load(attribution.estimate_cells, ctx.run_id, group)
    release()  # all read
    if cells.empty:
        st.info("No image has been attributed yet.")
        st.stop()
    st.caption(f"{len(cells)} heads ({group}, one at a time) over {int(cells['images'].max()):,} images (every image "
               f"of the run). Colour: the estimated change of the margin M (the baseline's selected prompt's logit "
               f"minus its runner-up's) from one forward and one backward pass per image, red where M falls. "
               + ("Click a head to see the images whose correctness its exact ablation flips."
                  if group in swept else "The run has no exact sweep of these heads: `python -m compute screen` "
                  "lists the ones to sweep."))
    event = st.altair_chart(charts.estimate_heatmap(cells, group), on_select="rerun", key="heads_estimate_map",
                            selection_mode="cell")
    picked = heads.picked_ablation(event)
    if picked and group in swept:
        clicks.open_failures(ctx, picked)
else:
    metric = param_select("Change in", METRICS, "metric", container=mid, format_func=tables.METRIC_TITLES.get)
    label = widgets.label_select("True label", "label", list(labels["label"]), container=right)
    where = slices.true_label(label)

    summary = load(tables.summary, ctx.run_id, where)
    tests = load(tables.mcnemar, ctx.run_id, where)
    cells = heads.head_cells(summary, tests, group, metric)
    data = load(attribution.attribution_data, ctx.run_id) if group in estimated else None
    release()  # all read
    if cells.empty:
        st.info("No single-head ablation has been computed yet.")
        st.stop()

    st.caption(f"{len(cells)} heads ({group}, one at a time) over {int(cells['images'].max()):,} images: "
               f"{md(where.caption)}. Colour: change in {tables.METRIC_TITLES[metric]} against baseline (red lower, "
               f"blue higher). Outlined: significant under the rule of every page. Click a head to see the images "
               f"whose correctness it flips. {md(stats.RULE)}")
    event = st.altair_chart(charts.head_heatmap(cells, metric, group), on_select="rerun", key="heads_map",
                            selection_mode="cell")
    picked = heads.picked_ablation(event)
    if picked:
        clicks.open_failures(ctx, picked, label=label)

    if data is not None and group in data.quality:
        st.subheader("Estimate against exact")
        st.caption(f"How good attribution patching is on this run's heads ({group}): each head's estimated change of "
                   f"the margin M against its exact change from the sweep. {md(attribution.figures_text(data, group))}. "
                   f"Top-k recall: of the k heads whose exact ablation lowers M most, the share the estimate ranks "
                   f"among its k lowest; sign agreement: the share of heads whose estimate has the exact sign.")
        points, pairs = attribution.head_points(data, group), attribution.pair_bins(data, group)
        per_head, per_pair = st.columns(2)
        per_head.altair_chart(charts.attribution_scatter(points, group))
        per_pair.altair_chart(charts.attribution_density(pairs, group))
        table = attribution.quality_table(data, digits=3)
        # "—" where a figure does not apply: the pooled rho of the per-head row
        st.dataframe(tables.styled(table[table["kind"] == group], 3), hide_index=True)
        st.caption("The largest misses: the heads (means over images) and the (image, head) pairs whose estimate is "
                   "farthest from the exact change.")
        st.dataframe(tables.styled(attribution.misses(data, group), 4), hide_index=True)  # a head's row: no image

    st.subheader("Every head")
    st.caption("Click a row to open its images on the Failures page.")
    clicks.follow(ctx, change_table(cells.sort_values("change"), ["layer", "head"], metric, "the head ablated",
                                    "heads_table"), label=label)
