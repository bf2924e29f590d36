"""Heads: a layer x head heatmap of the change against baseline when one head at a time is ablated
(accuracy or the selected-prompt score), with the cells significant under the rule of every page outlined
(Holm over the run's ablations; McNemar for accuracy, the paired t-test for the score); hovering shows the
value and its 95% interval, a click opens the Failures page for that ablation."""

import streamlit as st

from analysis import charts, heads, queries, slices, stats, tables
from analysis.text import md
from dashboard import clicks, widgets
from dashboard.change_table import change_table
from dashboard.context import context, no_results
from dashboard.reading import load, release
from dashboard.state import param_select

METRICS = ["accuracy", "score_baseline"]

ctx = context()
st.title("Heads")
if no_results(ctx):
    st.stop()
groups = heads.head_groups(ctx.ablations)
if not groups:
    st.info(f"Run {md(ctx.name)} has no single-head ablations. Add `sweep = \"heads\"` (every head of every layer, "
            "identity) or extras such as `\"zero:6/h3\"` to an experiment; `make demo` runs `demo-heads`.")
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
left, mid, right, _ = st.columns([1, 1, 1, 1])
group = param_select("Ablated one head at a time", groups, "heads_kind", container=left)
metric = param_select("Change in", METRICS, "metric", container=mid, format_func=tables.METRIC_TITLES.get)
label = widgets.label_select("True label", "label", list(labels["label"]), container=right)
where = slices.true_label(label)

summary = load(tables.summary, ctx.run_id, where)
tests = load(tables.mcnemar, ctx.run_id, where)
cells = heads.head_cells(summary, tests, group, metric)
release()  # all read
if cells.empty:
    st.info("No single-head ablation has been computed yet.")
    st.stop()

st.caption(f"{len(cells)} heads ({group}, one at a time) over {int(cells['images'].max()):,} images: "
           f"{md(where.caption)}. Colour: change in {tables.METRIC_TITLES[metric]} against baseline (red lower, blue "
           f"higher). Outlined: significant under the rule of every page ({md(stats.RULE)}). Click a head to "
           f"see the images whose correctness it flips.")
event = st.altair_chart(charts.head_heatmap(cells, metric, group), on_select="rerun", key="heads_map",
                        selection_mode="cell")
picked = heads.picked_ablation(event)
if picked:
    clicks.open_failures(ctx, picked, label=label)

st.subheader("Every head")
st.caption("Click a row to open its images on the Failures page.")
clicks.follow(ctx, change_table(cells.sort_values("change"), ["layer", "head"], metric, "the head ablated", "heads_table"),
              label=label)
