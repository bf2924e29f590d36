"""Image: one image with its labels; the prompt each ablation selects and the caption that continues it
(the study's Figure 5), the logit of every prompt under every ablation (its Figures 3 and 4), the CLS
token's attention maps at every layer; the chosen ablation highlighted everywhere. Opened from Failures,
it steps through that slice (previous / next).

The page is a list of sections (``SECTIONS``), each a function of the image's data: another view of the
image (attention maps, say) is one more function and one more entry.
"""

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from analysis import charts, queries, slices
from analysis.text import md, md_list
from dashboard import ui
from dashboard.attention_ui import attention_section
from dashboard.state import param_select, reset_param

ctx = ui.context()
st.title("Image")
if ui.no_results(ctx):
    st.stop()

PHOTO_PX = 280
FAILURES_PAGE_SIZE = 24  # as views/failures.py: the grid page an image sits on
SLICE_PARAMS = ("outcome", "label", "selected", "sort")  # the Failures filters a link from there carries


@dataclass(frozen=True)
class Shown:
    """What every section draws from."""

    image_id: int
    ablation: str
    info: dict
    scores: pd.DataFrame  # queries.image_scores
    picks: pd.DataFrame  # queries.image_selections


images = ui.load(queries.images, ctx.run_id)
labels_of = dict(zip(images["image_id"].map(int), images["labels"], strict=True))
ids = list(labels_of)
left, mid = st.columns([3, 2])  # the image's labels may be long
image_id = param_select("Image", ids, "image", container=left, format_func=lambda i: f"{i} · {labels_of[i]}")
default = ctx.ablation_names()[1] if len(ctx.ablations) > 1 else None
ablation = ui.ablation_select(ctx, "Highlight (and compare with baseline)", "ablation", default=default,
                              container=mid)


def failures_slice() -> tuple[slices.Slice, str, dict[str, str]] | None:
    """The Failures slice this page was opened from (its filters travel in the URL), or None."""
    if st.query_params.get("from") != "failures":
        return None
    params = {k: st.query_params.get(k, "") for k in SLICE_PARAMS}
    if params["outcome"] not in slices.OUTCOMES:
        params["outcome"] = "wrong"
    if params["sort"] not in queries.SORTS:
        params["sort"] = "image"
    where = (slices.ablation(ctx.ablation_id(ablation), ablation) & slices.outcome(params["outcome"])
             & slices.true_label(params["label"]) & slices.selected_label(params["selected"]))
    return where, params["sort"], params


def slice_navigation() -> None:
    """Previous / next within the Failures slice, and back to its grid page, all in this tab."""
    found = failures_slice()
    if found is None:
        return
    where, sort, params = found
    order = ui.load(queries.slice_images, ctx.run_id, ctx.baseline_id, where, sort)
    link = {"run": ctx.name, "ablation": ablation, "from": "failures", **{k: v for k, v in params.items() if v}}
    if image_id in order:
        k = order.index(image_id)
        where_text = f"image {k + 1:,} of {len(order):,}"
    else:
        k = -1
        where_text = f"not one of its {len(order):,} images"
    prev_col, text_col, next_col, back_col = st.columns([1, 3, 1, 1])
    text_col.caption(f"Failures slice: {md(where.caption)}; sorted by {md(queries.SORTS[sort][1])}: {where_text}.")
    # Buttons, not links to this page: a link to the page one is on reruns it without updating the
    # address bar, and the URL would no longer say which image is shown.
    prev_col.button("Previous", icon=":material/arrow_back:", disabled=k <= 0, key="slice_previous",
                    on_click=reset_param, args=("image", order[k - 1] if k > 0 else image_id))
    nxt = order[k + 1] if 0 <= k + 1 < len(order) else (order[0] if order and k < 0 else None)
    next_col.button("Next", icon=":material/arrow_forward:", disabled=nxt is None, key="slice_next",
                    on_click=reset_param, args=("image", nxt if nxt is not None else image_id))
    back = {kk: v for kk, v in link.items() if kk != "from"}
    back["page"] = str(max(k, 0) // FAILURES_PAGE_SIZE + 1)
    back_col.page_link("views/failures.py", label="Failures", icon=":material/grid_view:", query_params=back)


slice_navigation()
info = ui.load(queries.image, ctx.run_id, image_id)
shown = Shown(image_id, ablation, info, ui.load(queries.image_scores, ctx.run_id, image_id),
              ui.load(queries.image_selections, ctx.run_id, image_id))
st.caption(f"Image {image_id} ({md(info['file_name'])}) of run {md(ctx.name)}: labels "
           f"{md_list(info['labels'])}; highlighted ablation {md(ablation)}.")


def photo_and_baseline(s: Shown) -> None:
    photo, text = st.columns([1, 2])
    photo.image(ui.thumbnail(ctx.run_id, s.image_id, PHOTO_PX), width=PHOTO_PX,
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
    p = s.picks
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
    ui.chart(charts.logit_heatmap, s.scores, s.picks, s.ablation)
    ui.chart(charts.logit_bars, s.scores, list(dict.fromkeys([ctx.baseline_name, s.ablation])))


def attention_maps(s: Shown) -> None:
    attention_section(ctx, s.info, s.ablation)


SECTIONS = [photo_and_baseline, selections_table, logit_charts, attention_maps]

for section in SECTIONS:
    section(shown)
    if shown.picks.empty:  # nothing computed for this image: the photo and a line saying so
        break
