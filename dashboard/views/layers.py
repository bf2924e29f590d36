"""Layers: each metric per single ablated layer and per block, accuracy per true label, the confusion of
one ablation, and McNemar's paired test of every ablation against baseline (the significance rule)."""

import streamlit as st

from analysis import charts, queries, slices, stats, tables
from analysis.subsets import MAX_LABELS
from analysis.text import md
from dashboard import clicks, layout, widgets
from dashboard.context import context, no_results
from dashboard.reading import load
from dashboard.state import param_select

AXES = {"data": "zoomed to the data", "full": "0 to 1"}
VERDICTS = {-1: "▼ lower", 0: "", 1: "▲ higher"}

ctx = context()
st.title("Layers")
if no_results(ctx):
    st.stop()

labels = load(queries.true_labels, ctx.run_id)
summary_all = load(tables.summary, ctx.run_id, slices.EVERYTHING)
metrics = tables.metrics_of(summary_all)
left, mid, right, far = st.columns(4)
label = widgets.label_select("True label", "label", list(labels["label"]), container=left)
metric = param_select("Metric", metrics, "metric", container=mid, format_func=tables.METRIC_TITLES.get)
axis = param_select("Accuracy axis", list(AXES), "axis", container=right, format_func=AXES.get,
                    help="A 0-1 axis squeezes a run whose accuracies lie between 0.84 and 1.00 into its top sixth.")
ablation = widgets.ablation_select(ctx, "Confusion under", "ablation", default=ctx.default_ablation(), container=far)
where = slices.true_label(label)
full = axis == "full"

# Every query first, then the drawing: the store is read in one go (see dashboard.reading).
summary = load(tables.summary, ctx.run_id, where) if label else summary_all
label_accuracy = load(queries.label_accuracy, ctx.run_id)
confusion = load(queries.confusion, ctx.run_id, ctx.ablation_id(ablation))
tests = tables.mcnemar_of(summary)  # the very numbers behind every mark and count of the run

st.caption(f"Curves and tests over {int(summary['images'].max()):,} images: {md(where.caption)}. {stats.RULE} "
           f"{clicks.HINT}")
has_layers, has_blocks = bool(tables.single_layers(summary).any()), bool(tables.blocks(summary).any())
if has_layers or has_blocks:
    curve, blocks = layout.chart_columns(2) if has_layers and has_blocks else (st.container(), st.container())
    if has_layers:
        clicks.follow(ctx, layout.chart(charts.layer_curve, summary, metric, full, container=curve,
                                        click="layers_curve"), label=label)
    if has_blocks:
        clicks.follow(ctx, layout.chart(charts.block_bars, summary, metric, full, container=blocks,
                                        click="layers_blocks"), label=label)
if not has_layers:
    st.info(f"Run {md(ctx.name)} ablates no single whole layer, so there is no curve per layer: its one-layer "
            "ablations are per head (the Heads page) or knockouts of one flow (the Flow page). Add "
            "`sweep = \"singles\"` (or `\"paper\"`) for one.")
if not has_blocks:
    st.info(f"Run {md(ctx.name)} ablates no block of several layers (`sweep = \"paper\"` adds them).")

st.subheader("Accuracy per true label")
shown, shown_caption = widgets.ablation_subset(ctx, near=ablation)
st.caption("Every image counts under each of its labels; all images, whatever the label filter above. A click on a "
           "cell opens the images of that label the ablation gets wrong." + (f" {shown_caption}" if shown_caption else ""))
clicks.follow(ctx, layout.chart(charts.label_heatmap, label_accuracy, tables.select_ablations(ctx.ablations, shown),
                                click="layers_labels", fields=("ablation", "label")),
              outcome="wrong", labels=lambda p: (str(p.get("label") or ""), ""))

st.subheader("Confusion")
st.caption(f"True label x selected label under {md(ablation)}, all images. Each image counts once: a right pick "
           "on the diagonal; a wrong pick of an image with several labels is split equally over their rows. A click "
           "on a cell opens its images.")
if confusion.empty:
    st.info(f"Nothing computed under {md(ablation)} yet.")
else:
    cell = layout.chart(charts.confusion_chart, confusion, ablation, click="layers_confusion",
                        fields=("true_label", "selected_label"))
    clicks.follow(ctx, cell, ablation=ablation, outcome="all",  # the images of that cell, right or wrong
                  labels=lambda p: tuple("" if p.get(f) == queries.NO_LABEL else str(p.get(f) or "")
                                         for f in ("true_label", "selected_label")))

st.subheader("Paired test against baseline (McNemar)")
n_significant = int(tests["significant"].sum())
n_worse = tables.reliably_worse(summary)
st.caption(f"Images right under only one of baseline and the ablation; exact binomial test below "
           f"{stats.EXACT_BELOW} such images (no statistic: the p-value is the binomial tail), otherwise chi-square "
           f"with continuity correction. Holm's adjustment accounts for testing every ablation: {n_significant} of "
           f"{len(tests)} differ from baseline at p (Holm) < {stats.ALPHA}, {n_worse} of them worse. Over "
           f"{md(where.caption)}.")
verdicts = summary.set_index("ablation_id")["sig_accuracy"]
chi_square = tests["method"].str.startswith("chi-square")
shown_tests = tests.assign(
    statistic=[f"{x:.3f}" if chi else "—" for x, chi in zip(tests["statistic"], chi_square, strict=True)],
    p=tests["p"].map(stats.format_p), p_holm=tests["p_holm"].map(stats.format_p),
    significant=[VERDICTS[int(verdicts.get(a, 0))] + (f" {tables.MARK}" if s else "")
                 for a, s in zip(tests["ablation_id"], tests["significant"], strict=True)])
row = clicks.table(
    # Every test of the run: whole up to a subset's length, past it scrolling inside the table.
    shown_tests.drop(columns=["ablation_id"]), "layers_tests", shown_tests, hide_index=True,
    height="content" if len(shown_tests) <= MAX_LABELS else 36 * (MAX_LABELS + 1),
    column_config={
        "ablation": st.column_config.TextColumn("ablation", pinned=True),
        "pairs": st.column_config.NumberColumn("images", help="computed under both"),
        "only_baseline": st.column_config.NumberColumn("right only under baseline"),
        "only_ablation": st.column_config.NumberColumn("right only under the ablation"),
        "statistic": st.column_config.TextColumn("χ²", help="chi-square with continuity correction; — for the "
                                                 "exact binomial test, which has none"),
        "p_holm": st.column_config.TextColumn("p (Holm)"),
        "significant": st.column_config.TextColumn(f"p (Holm) < {stats.ALPHA}"),
    },
)
clicks.follow(ctx, row, label=label)
