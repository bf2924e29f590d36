"""Prompt lab: score new prompts on the stored run without recomputing the vision tower.

Only the vision tower is ablated, so the run's stored (image, ablation) embeddings and one text pass give
the logits of any prompt under every ablation at once. The lines are checked as the command line checks an
experiment's prompts (every bad line, every unknown label with the closest known ones); the results stand
beside the run's own prompts (McNemar's paired test per ablation, Holm over the ablations) and break down
per prompt and per template. "Save as a run" makes the same numbers a run of the store
(``python -m compute rescore``), with captions if the run has a captioner.
"""

import streamlit as st

from analysis import charts, prompt_scores, queries, stats, tables
from analysis.prompt_scores import image_frames, parse_lines, run_lines
from analysis.text import md
from compute.errors import InputError
from dashboard import lab, layout, widgets
from dashboard.context import context, no_results
from dashboard.reading import load, snapshot
from dashboard.state import param_select, param_text

AXES = {"data": "zoomed to the data", "full": "0 to 1"}
VERDICTS = {-1: "▼ worse *", 0: "", 1: "▲ better *"}

ctx = context()
st.title("Prompt lab")
st.caption("Type prompts, one per line as `text | label` (label: the image label that makes the prompt correct). "
           "A template holds `{label}`: `a drawing of a {label} | circle, square` is one prompt per label (with no "
           "labels, one per label of the run's prompts); texts separated by `;` are an ensemble (one prompt per "
           "label, its text embedding the mean of theirs), as in experiment files. Scores come from the run's "
           "stored image embeddings and one pass of CLIP's text tower.")
if no_results(ctx):
    st.stop()
if not load(queries.has_embeddings, ctx.name):
    st.warning(f"Run {md(ctx.name)} kept no image embeddings (store.embeddings = 'none'), so it cannot be rescored.")
    st.stop()

try:
    embeddings = lab.run_embeddings(str(ctx.db), ctx.name, snapshot())
except InputError as e:  # e.g. a running run whose last images have no stored embeddings yet
    st.warning(md(e))
    st.stop()
text = param_text("Prompts", "prompts", default=run_lines(embeddings.prompts), height=180)
parsed = parse_lines(text, [p.label for p in embeddings.prompts])
key = (str(ctx.db), ctx.name, snapshot())
errors, warnings, note = lab.label_checks(embeddings, parsed.prompts, key=key) if parsed.prompts else ([], [], "")
if parsed.problems or errors:
    st.error(f"{len(parsed.problems) + len(errors)} problem(s), nothing scored:  \n"
             + "  \n".join(f"- {md(p)}" for p in [*parsed.problems, *errors]))
    if note:
        st.caption(md(note))
    st.stop()
for warning in warnings:
    st.warning(md(warning))
if note:
    st.caption(md(note))
if "captions" in embeddings.dataset.labels:
    st.caption("This run's image labels come from captions and follow its prompts: a label its prompts do not ask "
               "is scored against the labels stored with the run here; \"Save as run\" relabels the images, as "
               "`rescore` does.")

prompts = parsed.prompts
clip = lab.text_model(embeddings.model, embeddings.dtype)
result = lab.score(clip, embeddings, prompts, key=key)
own = lab.score(clip, embeddings, embeddings.prompts, key=key)
versus = prompt_scores.versus(result, own, embeddings.ablations)
same = [(p.text, p.label) for p in prompts] == [(p.text, p.label) for p in embeddings.prompts]
st.caption(f"{len(prompts)} prompts × {len(embeddings.ablations)} ablations × {len(embeddings.image_ids):,} images "
           f"of run {md(ctx.name)}; correct = the selected prompt's label is among the image's labels."
           + ("" if same else f" Against the run's own {len(embeddings.prompts)} prompts, on the same images: "
              f"McNemar's paired test per ablation, Holm-adjusted over the {len(versus)} ablations; "
              f"{int((versus['verdict'] != 0).sum())} differ at p (Holm) < {stats.ALPHA}."))

st.subheader("Accuracy per ablation, against the run's own prompts")
axis_col, set_col = st.columns([1, 2])
axis = param_select("Accuracy axis", list(AXES), "axis", format_func=AXES.get, container=axis_col)
shown, shown_caption = widgets.ablation_subset(ctx, container=set_col)
drawn = tables.select_ablations(versus, [a for a in shown if a in set(versus["ablation"])])
if shown_caption:
    st.caption(shown_caption)
layout.chart(charts.lab_accuracy_chart, drawn[["ablation", "accuracy", "run_accuracy", "verdict"]], axis == "full")
st.dataframe(
    drawn.assign(p_holm=drawn["p_holm"].map(stats.format_p), verdict=drawn["verdict"].map(VERDICTS))[
        ["ablation", "accuracy", "run_accuracy", "change_vs_run", "p_holm", "verdict", "change"]],
    hide_index=True, height="content",
    column_config={"ablation": st.column_config.TextColumn("ablation", pinned=True),
                   "accuracy": st.column_config.NumberColumn("these prompts", format="%.3f"),
                   "run_accuracy": st.column_config.NumberColumn("run's prompts", format="%.3f"),
                   "change_vs_run": st.column_config.NumberColumn("change vs run's prompts", format="%+.3f"),
                   "p_holm": st.column_config.TextColumn("p (Holm)", help="McNemar's paired test of these prompts "
                                                         "against the run's, Holm-adjusted over the ablations"),
                   "verdict": st.column_config.TextColumn(f"p (Holm) < {stats.ALPHA}"),
                   "change": st.column_config.NumberColumn("change vs baseline", format="%+.3f")})

st.subheader("Per prompt")
under = param_select("Under", embeddings.ablations, "lab_ablation", container=st.columns([1, 2])[0],
                     help="The ablation whose selections the table counts (baseline: the unablated model).")
st.caption("Images that select each prompt, the share of them it is right for, and the share of the images carrying "
           f"its label that select it, under {md(under)}.")
# "—" where a share has no images to count: a prompt nobody selects, a label no image carries
st.dataframe(tables.styled(prompt_scores.per_prompt(result, embeddings, embeddings.ablations.index(under)), 3),
             hide_index=True,
             column_config={"prompt": st.column_config.TextColumn("prompt", pinned=True),
                            "right_when_selected": st.column_config.TextColumn("right when selected"),
                            "images_of_label": st.column_config.NumberColumn("images with its label"),
                            "recall": st.column_config.TextColumn("of those, selecting it")})

templates = prompt_scores.per_template(result, embeddings)
if templates["template"].nunique() > 1:
    st.subheader("Per template")
    st.caption("Each template's prompts asked alone (a line holding `{label}`, an ensemble, or the single prompts "
               "together): accuracy per ablation.")
    wide = templates.pivot(index="ablation", columns="template", values="accuracy")
    wide = wide.reindex([a for a in shown if a in wide.index])[list(dict.fromkeys(templates["template"]))]
    st.dataframe(wide.reset_index(), hide_index=True, height="content",
                 column_config={c: st.column_config.NumberColumn(c, format="%.3f") for c in wide.columns})
else:
    st.caption("Write two lines or more holding `{label}` (or ensembles) to compare templates one by one.")

labels_of = dict(zip(embeddings.image_ids, embeddings.labels, strict=True))
image_id = param_select("Image", embeddings.image_ids, "image", format_func=lambda i: f"{i} · {', '.join(labels_of[i])}")
scores, picks = image_frames(result, embeddings, image_id)
layout.chart(charts.logit_heatmap, scores[scores["ablation"].isin(shown)], picks[picks["ablation"].isin(shown)])

with st.form("save"):
    name = st.text_input("Save these prompts as a run named", value=f"{ctx.name}-lab")
    if st.form_submit_button("Save as run"):
        try:
            with st.spinner("Scoring from stored embeddings..."):
                lab.save(ctx.db, ctx.name, prompts, name.strip(), clip)
            st.success(f"Saved run {md(name.strip())}: pick it in the sidebar (or `python -m compute list`), and "
                       "set it beside this one on the Compare page (two runs).")
        except InputError as e:
            st.error(md(e))
