"""Attention maps as interactive charts, Streamlit-free: per layer a heatmap of the patches with the value of
each on hover, baseline and the ablation side by side under one colour scale with its legend, and one layer
large over the image the model saw. The Image page draws them; the static strip of analysis.overlays (the
figure export's PNG) stays the file.

A map is what compute.attention_maps computes (see overlays.explainer): on CLIP the CLS query's attention
probabilities over the patches, on SigLIP the attention each patch receives, then the pooling head's probe.
"""

from __future__ import annotations

import base64
import io

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image

from analysis.overlays import MEAN_OF_HEADS, ImageMaps, select_heads
from compute.ablations import BASELINE
from compute.attention_maps import patch_grid

SCHEME = "inferno"  # the colours of the PNG strip (overlays.colorize), so both read alike
SMALL_PX = 84  # one small map's side (dashboard.attention_ui sizes its cells by these)
LARGE_PX = 300  # the enlarged map's side


def layer_names(maps: ImageMaps) -> list[str]:
    """The maps' columns, in order: "layer 1" ... and, without a CLS token (SigLIP), "pooling head" last."""
    n = maps.baseline.shape[0]
    return [f"layer {k + 1}" for k in range(n - (0 if maps.cls else 1))] + ([] if maps.cls else ["pooling head"])


def attention_frame(maps: ImageMaps, heads: str = MEAN_OF_HEADS) -> pd.DataFrame:
    """One row per (map, layer, patch): ``map`` (baseline or the ablation), ``layer`` (from 1), ``name``
    (layer_names), ``row`` and ``col`` of the patch (0 at the top left), ``probability`` (NaN where the
    ablation leaves none, e.g. a mean-ablated head)."""
    shown = [(BASELINE, maps.baseline)] + ([(maps.ablation, maps.ablated)] if maps.ablation != BASELINE else [])
    names = layer_names(maps)
    parts = []
    for which, probs in shown:
        grid = patch_grid(select_heads(probs, heads), maps.cls)  # (layers, side, side)
        n, side, _ = grid.shape
        layer, row, col = np.meshgrid(np.arange(n), np.arange(side), np.arange(side), indexing="ij")
        parts.append(pd.DataFrame({"map": which, "layer": layer.ravel() + 1,
                                   "name": np.asarray(names, dtype=object)[layer.ravel()],
                                   "row": row.ravel(), "col": col.ravel(),
                                   "probability": grid.ravel().astype(float)}))
    return pd.concat(parts, ignore_index=True)


def scale_top(frame: pd.DataFrame, layer: int | None = None) -> float:
    """The top of the colour scale: the largest probability of ``layer`` in either map (every layer: None)."""
    values = frame["probability"] if layer is None else frame.loc[frame["layer"] == layer, "probability"]
    top = float(np.nanmax(values.to_numpy())) if values.notna().any() else 0.0
    return top if top > 0 else 1.0


def picture_url(picture: np.ndarray, size: int = LARGE_PX) -> str:
    """The image as the model saw it, in grey, as a data: URL (drawn under the enlarged map; nothing is fetched)."""
    grey = Image.fromarray(picture).convert("L").resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _map(data: pd.DataFrame, which: str, scale: alt.Scale, side_px: int, legend: alt.Legend | None,
         picture: str | None = None) -> alt.Chart | alt.LayerChart:
    one = data[data["map"] == which]
    side = int(one["row"].max()) + 1 if len(one) else 1
    empty = one["probability"].isna().all()
    title = f"{which}: no probabilities" if empty else which
    axis = {"axis": None, "scale": alt.Scale(domain=list(range(side)))}
    heat = alt.Chart(one.dropna(subset=["probability"])).mark_rect(opacity=0.75 if picture else 1).encode(
        x=alt.X("col:O", **axis), y=alt.Y("row:O", **axis),
        color=alt.Color("probability:Q", scale=scale, title="probability", legend=legend),
        tooltip=[alt.Tooltip("map:N", title="map"), alt.Tooltip("name:N", title="at"),
                 alt.Tooltip("row:O", title="patch row"), alt.Tooltip("col:O", title="patch column"),
                 alt.Tooltip("probability:Q", format=".4f")],
    )
    if picture is None:
        return heat.properties(width=side_px, height=side_px, title=alt.TitleParams(title, fontSize=11))
    under = alt.Chart(pd.DataFrame({"url": [picture]})).mark_image(width=side_px, height=side_px).encode(
        url="url:N", x=alt.value(side_px / 2), y=alt.value(side_px / 2))
    return alt.layer(under, heat).properties(width=side_px, height=side_px, title=alt.TitleParams(title, fontSize=12))


def layer_chart(frame: pd.DataFrame, layer: int, top: float, legend: bool = True) -> alt.HConcatChart:
    """One layer, small: baseline and the ablation side by side, colours from 0 to ``top``, values on hover."""
    data = frame[frame["layer"] == layer]
    scale = alt.Scale(scheme=SCHEME, domain=[0, top])
    key = alt.Legend(orient="bottom", direction="horizontal", gradientLength=2 * SMALL_PX, titleFontSize=10,
                     labelFontSize=10, format=".2f", tickCount=3) if legend else None
    maps = list(dict.fromkeys(data["map"]))
    name = str(data["name"].iloc[0]) if len(data) else f"layer {layer}"
    return alt.hconcat(*[_map(data, m, scale, SMALL_PX, key) for m in maps], spacing=6).properties(
        title=alt.TitleParams(f"{name} · max {scale_top(frame, layer):.2f}", fontSize=12, anchor="start"),
    ).resolve_scale(color="shared")


def large_map(frame: pd.DataFrame, layer: int, which: str, top: float, picture: str) -> alt.Chart | alt.LayerChart:
    """One layer's map ``which`` (baseline or the ablation), large, over the image (``picture``: picture_url),
    colours from 0 to ``top`` with the legend below, values on hover."""
    data = frame[frame["layer"] == layer]
    scale = alt.Scale(scheme=SCHEME, domain=[0, top])
    key = alt.Legend(orient="bottom", direction="horizontal", gradientLength=LARGE_PX - 60, format=".2f", tickCount=4)
    name = str(data["name"].iloc[0]) if len(data) else f"layer {layer}"
    return _map(data, which, scale, LARGE_PX, key, picture).properties(
        title=alt.TitleParams(f"{which}, {name}", anchor="start"))
