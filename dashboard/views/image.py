"""Image: one image with its labels; the prompt each ablation selects and the caption that continues it
(the study's Figure 5), the logit of every prompt under every ablation (its Figures 3 and 4), the CLS
token's attention maps at every layer and, beside them, a head's direct contribution per patch
(dashboard.decomposition_ui); the chosen ablation highlighted everywhere. Opened from Failures,
it steps through that slice (previous / next, or the ← and → keys; Esc goes back to the grid).

The page is a list of sections (``SECTIONS``), each a function of the image's data: another view of the
image (attention maps, say) is one more function and one more entry.
"""

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from analysis import charts, queries, slices
from analysis.text import md, md_list
from dashboard import failure_slice, keys, layout, navigation, widgets
from dashboard.attention_ui import attention_section, stored_means
from dashboard.context import context, no_results
from dashboard.decomposition_ui import token_section
from dashboard.reading import load
from dashboard.state import param_select, reset_param, url_param
from dashboard.thumbnails import image_paths, thumbnail

ctx = context()
st.title("Image")
if no_results(ctx):
    st.stop()

PHOTO_PX = 280


@dataclass(frozen=True)
class Shown:
    """What every section draws from."""

    image_id: int
    ablation: str
    info: dict
    scores: pd.DataFrame  # queries.image_scores
    picks: pd.DataFrame  # queries.image_selections
    means: dict | None  # the statistics of a mean ablation's attention maps (attention_ui.stored_means)
    prompts: pd.DataFrame  # queries.prompts (the per-patch contributions' choices)
    texts: list[list[str]]  # queries.prompt_texts: what the text tower embeds for each


@dataclass(frozen=True)
class FailuresSlice:
    """The Failures slice this page was opened from (its filters travel in the URL)."""

    where: slices.Slice
    sort: str
    filters: dict[str, str]  # failure_slice.FILTERS as the link carried them
    order: list[int]  # the slice's images in the grid's order


images = load(queries.images, ctx.run_id)
labels_of = dict(zip(images["image_id"].map(int), images["labels"], strict=True))
ids = list(labels_of)
left, mid = st.columns([3, 2])  # the image's labels may be long
image_id = param_select("Image", ids, "image", container=left, format_func=lambda i: f"{i} · {labels_of[i]}",
                        scope=f"in run {ctx.name}")
ablation = widgets.ablation_select(ctx, "Highlight (and compare with baseline)", "ablation",
                                   default=ctx.default_ablation(), container=mid)
# A run with many ablations shows one set of them at a time in the table and the heatmap (analysis.subsets).
shown_ablations, shown_caption = widgets.ablation_subset(ctx, near=ablation, with_every=False,
                                                         container=st.columns([3, 2])[0])


def failures_slice() -> FailuresSlice | None:
    """The Failures slice of the URL (a link from the grid), or None."""
    if url_param("from") != failure_slice.FROM:
        return None
    filters = {k: url_param(k) for k in failure_slice.FILTERS}
    if filters["outcome"] not in slices.OUTCOMES:
        filters["outcome"] = "wrong"
    if filters["sort"] not in queries.SORTS:
        filters["sort"] = "image"
    where = failure_slice.where(ctx, ablation, filters["outcome"], filters["label"], filters["selected"])
    return FailuresSlice(where, filters["sort"], filters,
                         load(queries.slice_images, ctx.run_id, ctx.baseline_id, where, filters["sort"]))


def slice_navigation(found: FailuresSlice) -> None:
    """Previous / next within the Failures slice, and back to its grid page, all in this tab."""
    order = found.order
    if image_id in order:
        k = order.index(image_id)
        where_text = f"image {k + 1:,} of {len(order):,}"
    else:
        k = -1
        where_text = f"not one of its {len(order):,} images"
    prev_col, text_col, next_col, back_col = st.columns([1, 3, 1, 1])
    text_col.caption(f"Failures slice: {md(found.where.caption)}; sorted by {md(queries.SORTS[found.sort][1])}: "
                     f"{where_text}. Keys: ← previous, → next, Esc back to the grid.")
    # Buttons, not links to this page: a link to the page one is on reruns it without updating the
    # address bar, and the URL would no longer say which image is shown.
    keys.bound("ArrowLeft", prev_col).button("Previous", disabled=k <= 0, key="slice_previous", on_click=reset_param,
                                             args=("image", order[k - 1] if k > 0 else image_id))
    nxt = order[k + 1] if 0 <= k + 1 < len(order) else (order[0] if order and k < 0 else None)
    keys.bound("ArrowRight", next_col).button("Next", disabled=nxt is None, key="slice_next", on_click=reset_param,
                                              args=("image", nxt if nxt is not None else image_id))
    back = {"run": ctx.name, "ablation": ablation, **{kk: v for kk, v in found.filters.items() if v},
            "page": str(failure_slice.grid_page(max(k, 0)))}
    keys.bound("Escape", back_col).page_link(navigation.page("failures"), label="Failures", query_params=back)
    keys.listen()


# Every read first, then the drawing (dashboard.reading).
found = failures_slice()
info = load(queries.image, ctx.run_id, image_id)
shown = Shown(image_id, ablation, info, load(queries.image_scores, ctx.run_id, image_id),
              load(queries.image_selections, ctx.run_id, image_id), stored_means(ctx, ablation),
              load(queries.prompts, ctx.run_id), load(queries.prompt_texts, ctx.run_id))
image_paths(ctx.run_id)  # what the photo opens

if found is not None:
    slice_navigation(found)
st.caption(f"Image {image_id} ({md(info['file_name'])}) of run {md(ctx.name)}: labels "
           f"{md_list(info['labels'])}; highlighted ablation {md(ablation)}.")


def photo_and_baseline(s: Shown) -> None:
    photo, text = st.columns([1, 2])
    photo.image(thumbnail(ctx.run_id, s.image_id, PHOTO_PX), width=PHOTO_PX,
                caption=f"{md(s.info['file_name'])} · {md_list(s.info['labels'])}")
    base = s.picks[s.picks["ablation_id"] == ctx.baseline_id]
    if s.picks.empty:
        text.info("No ablation has been computed for this image yet (or it could not be read).")
    elif len(base):
        b = base.iloc[0]
        text.markdown(f"**Baseline** selects *{md(b['selected_prompt'])}* ({'right' if b['correct'] else 'wrong'}, "
                      f"confidence {b['confidence']:.3f}).")
    mine = s.picks[s.picks["ablation"] == s.ablation]
    if len(mine):
        m = mine.iloc[0]
        text.markdown(f"**{md(s.ablation)}** selects *{md(m['selected_prompt'])}* "
                      f"({'right' if m['correct'] else 'wrong'}, confidence {m['confidence']:.3f})"
                      + (f" and continues it as *{md(m['caption'])}*." if pd.notna(m["caption"]) else "."))


def selections_table(s: Shown) -> None:
    """The study's Figure 5: per ablation, the selected prompt (whole), right or wrong, the caption."""
    st.subheader("Selected prompt and caption per ablation")
    if shown_caption:
        st.caption(shown_caption)
    p = s.picks[s.picks["ablation"].isin(shown_ablations)].reset_index(drop=True)
    table = pd.DataFrame({
        "ablation": [("▶ " if a == s.ablation else "") + md(a) for a in p["ablation"]],
        "selected prompt": p["selected_prompt"].map(md),
        "right": p["correct"].map({True: "✓", False: "✗"}),
        "confidence": p["confidence"].map("{:.3f}".format),
        "margin": p["margin"].map(lambda x: "—" if pd.isna(x) else f"{x:.3f}"),
        "score": p["score_baseline"].map("{:.4f}".format),
    })
    if p["caption"].notna().any():
        table["generated caption"] = p["caption"].map(lambda c: "" if pd.isna(c) else md(c))
        table["caption score"] = p["caption_score"].map(lambda x: "—" if pd.isna(x) else f"{x:.4f}")
    chosen = (p["ablation"] == s.ablation).to_numpy()
    style = table.style.apply(lambda row: ["background-color: #fff3bf; font-weight: 600" if chosen[row.name] else ""
                                           for _ in row], axis=1)
    st.table(style, hide_index=True)
    st.caption("score: cosine of the unablated image embedding and the selected prompt (a fixed judge); margin: "
               "top logit minus the second; ▶ the highlighted ablation.")


def logit_charts(s: Shown) -> None:
    st.subheader("Logits of every prompt")
    layout.chart(charts.logit_heatmap, s.scores[s.scores["ablation"].isin(shown_ablations)],
                 s.picks[s.picks["ablation"].isin(shown_ablations)], s.ablation)
    layout.chart(charts.logit_bars, s.scores, list(dict.fromkeys([ctx.baseline_name, s.ablation])))


def attention_maps(s: Shown) -> None:
    attention_section(ctx, s.info, s.ablation, s.means)


def patch_contributions(s: Shown) -> None:
    base = s.picks[s.picks["ablation_id"] == ctx.baseline_id]
    token_section(ctx, s.info, s.prompts, s.texts, str(base["selected_prompt"].iloc[0]) if len(base) else None)


SECTIONS = [photo_and_baseline, selections_table, logit_charts, attention_maps, patch_contributions]

for section in SECTIONS:
    section(shown)
    if shown.picks.empty:  # nothing computed for this image: the photo and a line saying so
        break
