"""Attention maps drawn over the image, Streamlit-free (the Image page and the figure export share it).

``image_maps`` runs a run's model on one image, unablated and under one ablation (compute.attention_maps);
``attention_figure`` draws every layer's map over the image the model saw: the baseline in one row, the
ablation in the next. On CLIP a map is the CLS token's attention to the patches; on SigLIP, which has no
CLS token, the attention each patch receives averaged over all queries, then one more tile for the pooling
head (``explainer`` says which). Both rows of a column share one colour scale (0 to the largest patch
probability of that column in either row), so a column compares like with like.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from compute.ablations import BASELINE, parse_ablation
from compute.attention_maps import MEANING, attention_maps, patch_grid
from compute.dataset import open_image
from compute.kinds import Means
from compute.models import LoadedClip, pixel_values, seen_image
from compute.towers import has_cls, n_heads_of, n_layers_of

MEAN_OF_HEADS = "mean"
TILE = 112  # pixels per layer tile
ALPHA = 0.7  # weight of the heat colour over the (grey) image
EXPLAINER = ("attention probabilities of the CLS token's query over the patches (not an attribution: where "
             "CLS reads from at that layer, not what the output depends on)")


def explainer(cls: bool) -> str:
    """What a map shows, for a caption: EXPLAINER on a tower with a CLS token, else SigLIP's maps."""
    if cls:
        return EXPLAINER
    return (f"{MEANING[False]} (not an attribution: where the tokens read from at that layer, not what the "
            f"output depends on)")

# The "inferno" colour map, sampled at 9 points and interpolated (no matplotlib here).
_INFERNO = np.array([(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85), (227, 89, 51),
                     (249, 140, 10), (249, 201, 50), (252, 255, 164)], dtype=np.float64)


@dataclass
class ImageMaps:
    picture: np.ndarray  # (size, size, 3) uint8: the image as the model saw it (resized, cropped)
    baseline: np.ndarray  # (columns, heads, tokens): each layer's map (compute.attention_maps), + SigLIP's head
    ablated: np.ndarray  # the same under the ablation (NaN where a mean ablation leaves none)
    ablation: str
    cls: bool = True  # the tower has a CLS token (CLIP); False: every token is a patch, the last column the head


def image_maps(clip: LoadedClip, path: str, ablation: str, means: Means | None = None) -> ImageMaps:
    """The attention maps of one image file at every layer, unablated and under ``ablation`` (a label)."""
    pixels = pixel_values(clip, [open_image(path)])  # (1, 3, size, size)
    picture = seen_image(clip, pixels[0])
    pixels = pixels.to(clip.device, clip.dtype)
    base = attention_maps(clip.model, pixels)[0]
    if ablation == BASELINE:
        ablated = base
    else:
        parsed = parse_ablation(ablation, n_layers_of(clip.model), n_heads_of(clip.model), has_cls(clip.model))
        ablated = attention_maps(clip.model, pixels, parsed, means)[0]
    return ImageMaps(picture, base, ablated, ablation, has_cls(clip.model))


def head_options(maps: ImageMaps) -> list[str]:
    return [MEAN_OF_HEADS] + [f"h{h}" for h in range(maps.baseline.shape[1])]


def select_heads(maps: np.ndarray, heads: str) -> np.ndarray:
    """(layers, heads, tokens) -> (layers, tokens): the mean over heads, or one head ("h3")."""
    if heads == MEAN_OF_HEADS:
        return maps.mean(axis=1)  # a head without probabilities (mean ablation) makes the mean NaN
    return maps[:, int(heads.removeprefix("h"))]


def colorize(values: np.ndarray) -> np.ndarray:
    """values in [0, 1], any shape -> RGB uint8 of shape (..., 3) on the inferno map."""
    x = np.clip(values, 0, 1) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (x - lo)[..., None]
    return (_INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tile(picture: np.ndarray, grid: np.ndarray, vmax: float) -> Image.Image:
    """One layer: the grey image with the patch grid's heat over it. grid: (side, side)."""
    grey = Image.fromarray(picture).convert("L").convert("RGB").resize((TILE, TILE), Image.BILINEAR)
    if np.isnan(grid).any():
        return Image.blend(grey, Image.new("RGB", (TILE, TILE), (150, 150, 150)), 0.8)
    heat = colorize(grid / vmax if vmax > 0 else np.zeros_like(grid))
    heat = Image.fromarray(heat).resize((TILE, TILE), Image.NEAREST)  # one block per patch, as the model sees it
    return Image.blend(grey, heat, ALPHA)


def attention_figure(maps: ImageMaps, heads: str = MEAN_OF_HEADS) -> Image.Image:
    """Every layer's map over the image: baseline above, the ablation below."""
    rows = [(BASELINE, select_heads(maps.baseline, heads))]
    if maps.ablation != BASELINE:
        rows.append((maps.ablation, select_heads(maps.ablated, heads)))
    n_layers = rows[0][1].shape[0]  # columns: the layers, and SigLIP's pooling head last
    grids = [patch_grid(r, maps.cls) for _, r in rows]  # each (columns, side, side)
    with np.errstate(invalid="ignore"):
        vmax = np.nanmax(np.stack([g.reshape(n_layers, -1) for g in grids], axis=0), axis=(0, 2))  # (layers,)
    vmax = np.nan_to_num(vmax)
    pad, head_h, label_h, row_title_h = 6, 34, 30, 20
    width = pad + n_layers * (TILE + pad)
    height = head_h + len(rows) * (row_title_h + TILE + label_h)
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    small, large = _font(11), _font(13)
    which = "mean over heads" if heads == MEAN_OF_HEADS else f"head {heads.removeprefix('h')}"
    title = ("CLS attention to the patches at each layer" if maps.cls else
             "attention each patch receives at each layer (mean over queries), then the pooling head")
    draw.text((pad, 4), f"{title} ({which})", fill="black", font=large)
    draw.text((pad, 20), "attention probabilities, not an attribution; each column's colours run from 0 to its "
              "largest patch probability in either row", fill=(90, 90, 90), font=small)
    y = head_h
    for (title, probs), grid in zip(rows, grids, strict=True):
        draw.text((pad, y + 3), title, fill="black", font=large)
        y += row_title_h
        for layer in range(n_layers):
            x = pad + layer * (TILE + pad)
            fig.paste(_tile(maps.picture, grid[layer], float(vmax[layer])), (x, y))
            pool = not maps.cls and layer == n_layers - 1
            name = "pooling head" if pool else f"layer {layer + 1}"
            if np.isnan(probs[layer]).any():
                text = "no probabilities"
            elif maps.cls:
                text = f"CLS->CLS {probs[layer, 0]:.2f}"
            else:
                text = "probe query" if pool else "mean over queries"
            draw.text((x, y + TILE + 2), f"{name} · max {vmax[layer]:.2f}", fill="black", font=small)
            draw.text((x, y + TILE + 15), text, fill=(70, 70, 70), font=small)
        y += TILE + label_h
    return fig


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
