"""The Image page's attention-map section: every layer's attention map drawn over the image (CLIP: the CLS
token's attention to the patches; SigLIP: the attention each patch receives, then the pooling head), baseline
and the chosen ablation side by side, computed on demand from the run's model.

The model is loaded once per server (``st.cache_resource``, through compute.models.load_clip) and the maps
of an (image, ablation) are cached; drawing is analysis.overlays, which the figure export shares. The one
read of the store (a mean ablation's statistics, ``stored_means``) is made with the page's other reads.
"""

from __future__ import annotations

import streamlit as st

from analysis import overlays, queries
from analysis.figures import slug
from analysis.text import md
from compute.ablations import BASELINE, mean_needs, parse_ablation
from compute.dataset import ImageLoadError
from compute.errors import InputError
from compute.models import LoadedClip, load_clip
from dashboard import reading
from dashboard.context import Context
from dashboard.state import param_select


@st.cache_resource(show_spinner="Loading the run's model…", max_entries=2)
def clip_model(ref: str) -> LoadedClip:
    return load_clip(ref, device="auto")


@st.cache_data(show_spinner="Computing attention maps…", max_entries=64)
def _maps(ref: str, path: str, ablation: str, means_key: tuple, _means: dict | None) -> overlays.ImageMaps:
    from compute.engine import means_on

    means = None
    if _means:
        clip = clip_model(ref)
        means = means_on(_means, clip.device, clip.dtype)
    return overlays.image_maps(clip_model(ref), path, ablation, means)


def stored_means(ctx: Context, ablation: str) -> dict | None:
    """The dataset statistics a mean ablation replaces outputs with (queries.mean_stats); None for the others."""
    needs = mean_needs([parse_ablation(ablation)]) if ablation != BASELINE else {}
    return reading.load(queries.mean_stats, ctx.name, sorted(needs)) if needs else None


def attention_section(ctx: Context, info: dict, ablation: str, means: dict | None) -> None:
    """Draw the section for image ``info`` (a row of queries.image) under ``ablation`` (a label), with the
    statistics ``stored_means`` read for it."""
    st.subheader("Attention maps")
    family = str(ctx.run.get("family") or "clip")
    st.caption(f"At each layer, the {overlays.explainer(family == 'clip')}. Baseline above, {md(ablation)} below; "
               f"computed now from the run's model ({md(ctx.run['model'])}, {md(family)} vision tower).")
    means_key = (ctx.name, reading.snapshot()) if means is not None else ()  # the statistics are part of the maps
    try:
        maps = _maps(str(ctx.run["model"]), str(info["path"]), ablation, means_key, means)
    except (InputError, ImageLoadError, OSError, ValueError) as e:
        st.warning(f"No attention maps: {md(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        return
    left, _ = st.columns([1, 3])
    heads = param_select("Heads", overlays.head_options(maps), "attn_heads", container=left,
                         format_func=lambda h: "mean over heads" if h == overlays.MEAN_OF_HEADS else f"head {h[1:]}")
    png = overlays.png_bytes(overlays.attention_figure(maps, heads))
    st.image(png, caption="Brighter: more attention. " + ("CLS->CLS: what the CLS query keeps on itself." if maps.cls
                          else "No CLS token here: the last tile is the pooling head's probe query."))
    st.download_button("Attention maps (PNG)", png, f"{slug(ctx.name)}-image{info['image_id']}-attention-"
                       f"{slug(ablation)}-{heads}.png", "image/png", key="attention_png")
