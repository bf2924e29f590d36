"""The Image page's attention-map section: every layer's attention map (CLIP: the CLS token's attention to the
patches; SigLIP: the attention each patch receives, then the pooling head), baseline and the chosen ablation
side by side, computed from the run's model. It never holds the rest of the page up:

- Without the model on this machine (a folder that is not here, a hub id not in the local Hugging Face cache)
  it says so in one line at once (compute.local_models.missing_locally): nothing is loaded, not even torch,
  and the hub is never asked, so a colleague opening a shared store file without the model waits for nothing.
- With it, the section is a parallel fragment (``st.fragment(parallel=True)``): the page's figures are drawn
  and usable while the model loads (once per server, ``st.cache_resource``) and the maps are computed (cached
  per image, ablation and statistics); cached maps show at once. Its own widgets rerun the section alone.
- The maps as charts (analysis.attention_charts): per layer a heatmap with each patch's value on hover,
  baseline and ablation side by side, one colour scale with its legend (shared by every layer, or each
  layer's own), one layer enlarged over the image on demand; the static strip (analysis.overlays, the figure
  export's) as a PNG download.

The one read of the store (a mean ablation's statistics, ``stored_means``) is made with the page's other
reads; the fragment reads nothing from the store (it runs on a thread of its own, outside the script run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from analysis import queries
from analysis.figures import slug
from analysis.text import md
from compute.local_models import missing_locally
from dashboard import layout, reading
from dashboard.context import Context
from dashboard.state import param_select

if TYPE_CHECKING:  # torch comes with these: imported where the model is used, never for a page without it
    from analysis.overlays import ImageMaps
    from compute.models import LoadedClip

SCALES = {"shared": "one scale for every layer", "layer": "each layer its own scale"}
SMALL_PX, LARGE_PX = 84, 300  # analysis.attention_charts' map sides (asserted there), without importing it here
CELL_PX = 2 * SMALL_PX + 40  # one layer's pair of small maps, with its legend
LARGE_CELL_PX = LARGE_PX + 30


@st.cache_resource(show_spinner="Loading the run's model…", max_entries=2)
def clip_model(ref: str) -> LoadedClip:
    from compute.models import load_clip

    return load_clip(ref, device="auto")


@st.cache_data(show_spinner="Computing attention maps…", max_entries=64)
def _maps(ref: str, path: str, ablation: str, means_key: tuple, _means: dict | None) -> ImageMaps:
    from analysis import overlays
    from compute.engine import means_on

    means = None
    if _means:
        clip = clip_model(ref)
        means = means_on(_means, clip.device, clip.dtype)
    return overlays.image_maps(clip_model(ref), path, ablation, means)


def _draw(cell, chart) -> None:
    # At its own size: Streamlit would fit the chart to its cell otherwise, squeezing the map under its picture.
    cell.vega_lite_chart({**chart.to_dict(validate=False), "autosize": {"type": "pad", "contains": "padding"}},
                         width="content")


def stored_means(ctx: Context, ablation: str) -> dict | None:
    """The dataset statistics a mean ablation replaces outputs with (queries.mean_stats); None for the others,
    and when the run's model is not here (no maps to compute)."""
    if ablation == "baseline" or missing_locally(str(ctx.run["model"])) is not None:
        return None
    from compute.ablations import mean_needs, parse_ablation

    needs = mean_needs([parse_ablation(ablation)])
    return reading.load(queries.mean_stats, ctx.name, sorted(needs)) if needs else None


def attention_section(ctx: Context, info: dict, ablation: str, means: dict | None) -> None:
    """Draw the section for image ``info`` (a row of queries.image) under ``ablation`` (a label), with the
    statistics ``stored_means`` read for it."""
    st.subheader("Attention maps")
    family = str(ctx.run.get("family") or "clip")
    ref = str(ctx.run["model"])
    missing = missing_locally(ref)
    if missing is not None:
        st.info(f"No attention maps: {md(missing)} (they are computed from the run's model).")
        return
    from analysis import overlays

    st.caption(f"At each layer, the {overlays.explainer(family == 'clip')}. Baseline and {md(ablation)} side by "
               f"side; hover a patch for its value. Computed from the run's model ({md(ref)}, {md(family)} vision "
               "tower).")
    means_key = (ctx.name, reading.snapshot()) if means is not None else ()  # the statistics are part of the maps
    stem = f"{slug(ctx.name)}-image{info['image_id']}-attention-{slug(ablation)}"
    _maps_ui(ref, str(info["path"]), ablation, means_key, means, stem)


@st.fragment(parallel=True)
def _maps_ui(ref: str, path: str, ablation: str, means_key: tuple, means: dict | None, stem: str) -> None:
    from analysis import attention_charts, overlays
    from compute.dataset import ImageLoadError
    from compute.errors import InputError

    try:
        maps = _maps(ref, path, ablation, means_key, means)
    except (InputError, ImageLoadError, OSError, ValueError) as e:
        st.warning(f"No attention maps: {md(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        return
    names = attention_charts.layer_names(maps)
    row = st.columns(3)
    heads = param_select("Heads", overlays.head_options(maps), "attn_heads", container=row[0],
                         format_func=lambda h: "mean over heads" if h == overlays.MEAN_OF_HEADS else f"head {h[1:]}")
    scale = param_select("Colours", list(SCALES), "attn_scale", format_func=SCALES.get, container=row[1],
                         help="One scale compares layers; each layer's own shows where a diffuse layer looks.")
    large = param_select("Enlarge", [0, *range(1, len(names) + 1)], "attn_large", container=row[2],
                         format_func=lambda k: names[k - 1] if k else "none",
                         help="One layer large, over the image the model saw.")
    frame = attention_charts.attention_frame(maps, heads)
    top = attention_charts.scale_top(frame)
    if large:
        picture = attention_charts.picture_url(maps.picture)
        layer_top = attention_charts.scale_top(frame, large) if scale == "layer" else top
        for cell, which in zip(layout.grid_cells(frame["map"].nunique(), LARGE_CELL_PX, "attention_large"),
                               dict.fromkeys(frame["map"]), strict=True):
            _draw(cell, attention_charts.large_map(frame, large, which, layer_top, picture))
    for cell, layer in zip(layout.grid_cells(len(names), CELL_PX, "attention_layers"), range(1, len(names) + 1),
                           strict=True):
        own = scale == "layer"  # each its own legend; with one scale, the first map carries it
        chart = attention_charts.layer_chart(frame, layer, attention_charts.scale_top(frame, layer) if own else top,
                                             legend=own or layer == 1)
        _draw(cell, chart)
    note = ("Each layer's colours run from 0 to its own largest value (in its title)" if scale == "layer"
            else f"Colours run from 0 to {top:.2f}, the largest value at any layer (each title gives the layer's)")
    st.caption(note + ("" if maps.cls else "; no CLS token here: the last map is the pooling head's probe query") + ".")
    st.download_button("Attention maps (PNG)", lambda: overlays.png_bytes(overlays.attention_figure(maps, heads)),
                       f"{stem}-{heads}.png", "image/png", key="attention_png")  # drawn when asked for
