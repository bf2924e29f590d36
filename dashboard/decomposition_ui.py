"""The Image page's per-patch direct contributions, beside the attention maps: one head's (or all the heads of
one layer's) direct share of one prompt's logit for this image, split over the tokens the head reads
(attention probability x value, through out_proj and the frozen readout: compute.decomposition.token_shares),
as a map over the patches. Summed over the tokens it is the head's direct share, the number the Decomposition
page and the store's ``contributions`` view hold.

Computed on demand from the run's model, as the attention maps are (dashboard.attention_ui), once a component is
chosen (none by default; the Decomposition page's head cards link here with theirs): without the model on this
machine it says so at once and loads nothing; with it, a parallel fragment computes the split (cached per image,
component and prompt) while the rest of the page is usable, and its widgets rerun it alone. It reads
nothing from the store: the page reads the prompts with its other reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis.text import md
from compute.local_models import missing_locally
from dashboard.attention_ui import clip_model
from dashboard.context import Context
from dashboard.layout import grid_cells
from dashboard.state import param_select

HEADS = " heads"  # "L12 heads": every head of layer 12 (out_proj's bias left out: it reads no token)
NONE = "none"  # the section computes nothing until a component is chosen
PICTURE_PX = 220
CELL_PX = PICTURE_PX + 60


def components(n_layers: int, n_heads: int) -> list[str]:
    """The choices, by layer: every head of the layer, then each head ("L3 heads", "L3.h0", ...)."""
    return [c for layer in range(1, n_layers + 1) for c in (f"L{layer}{HEADS}", *(f"L{layer}.h{h}" for h in range(n_heads)))]


def parse(component: str) -> tuple[int, int | None]:
    """"L3.h1" -> (3, 1); "L3 heads" -> (3, None)."""
    if component.endswith(HEADS):
        return int(component[1:].removesuffix(HEADS)), None
    layer, head = component[1:].split(".h")
    return int(layer), int(head)


@st.cache_data(show_spinner="Computing direct contributions per patch…", max_entries=64)
def token_values(ref: str, path: str, layer: int, head: int | None, texts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(tokens,) the component's direct share of the prompt (embedded from ``texts``, the run's own) per token
    it reads, the image as the model saw it (size, size, 3), and whether the first token is CLS."""
    import torch

    from compute.dataset import open_image
    from compute.decomposition import token_shares
    from compute.models import pixel_values, seen_image
    from compute.scoring import logit_scale, prompt_embeddings
    from compute.towers import has_cls

    clip = clip_model(ref)
    pixels = pixel_values(clip, [open_image(path)])  # (1, 3, size, size)
    picture = seen_image(clip, pixels[0])
    with torch.inference_mode():
        text = prompt_embeddings(clip, [list(texts)])  # (1, E)
        shares = token_shares(clip.model, pixels.to(clip.device, clip.dtype), text, logit_scale(clip), layer, head)
    return shares[0, :, 0].float().cpu().numpy(), picture, has_cls(clip.model)


def token_frame(values: np.ndarray, cls: bool) -> pd.DataFrame:
    """The patches' values as rows (row, col, share), CLS left out (it is said in words)."""
    from compute.attention_maps import patch_grid

    grid = patch_grid(values[None, :], cls)[0]  # (side, side)
    row, col = np.meshgrid(np.arange(grid.shape[0]), np.arange(grid.shape[1]), indexing="ij")
    return pd.DataFrame({"row": row.ravel(), "col": col.ravel(), "share": grid.ravel().astype(float)})


def token_section(ctx: Context, info: dict, prompts: pd.DataFrame, texts: list[list[str]], selected: str | None) -> None:
    """Draw the section for image ``info`` (a row of queries.image): ``prompts`` (queries.prompts) and their
    ``texts`` (queries.prompt_texts), ``selected`` the prompt the baseline selects (the default)."""
    st.subheader("Direct contribution per patch")
    ref = str(ctx.run["model"])
    missing = missing_locally(ref)
    if missing is not None:
        st.info(f"No per-patch contributions: {md(missing)} (they are computed from the run's model).")
        return
    if prompts.empty:
        st.info("This run has no prompts.")
        return
    st.caption("A head's direct share of one prompt's logit, split over the tokens it reads (attention probability × "
               "value, through out_proj and the readout frozen at this image's values): where the head's "
               "contribution to this prompt comes from. The values sum to the head's direct share (the Decomposition "
               f"page's). Computed from the run's model ({md(ref)}).")
    names = list(prompts["prompt"])
    default = names.index(selected) if selected in names else 0
    _tokens_ui(ref, str(info["path"]), int(ctx.run["n_layers"]), names, tuple(tuple(t) for t in texts), default)


@st.fragment(parallel=True)
def _tokens_ui(ref: str, path: str, n_layers: int, names: list[str], texts: tuple[tuple[str, ...], ...],
               default: int) -> None:
    from analysis.decomposition_charts import token_chart
    from compute.dataset import ImageLoadError
    from compute.errors import InputError
    from compute.towers import n_heads_of

    try:
        n_heads = n_heads_of(clip_model(ref).model)
    except (InputError, OSError, ValueError) as e:
        st.warning(f"No per-patch contributions: {md(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        return
    row = st.columns([1, 2])
    options = [NONE, *components(n_layers, n_heads)]
    component = param_select("Component", options, "tok_component", container=row[0],
                             help="One head, or every head of a layer together; the Decomposition page's head cards "
                                  "link here with their head chosen.")
    if component == NONE:
        st.caption("Choose a head, or every head of a layer, to see its direct share split over the patches.")
        return
    prompt = param_select("Prompt", list(range(len(names))), "tok_prompt", default=default, container=row[1],
                          format_func=lambda k: names[k], noun="prompt")
    layer, head = parse(component)
    try:
        values, picture, cls = token_values(ref, path, layer, head, texts[prompt])
    except (InputError, ImageLoadError, OSError, ValueError) as e:
        st.warning(f"No per-patch contributions: {md(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        return
    frame = token_frame(values, cls)
    total = float(values.sum())
    photo, chart = grid_cells(2, CELL_PX, "token_maps")
    photo.image(picture, width=PICTURE_PX, caption="as the model saw it")
    spec = token_chart(frame, f"{component} → “{names[prompt]}”", f"sum {total:+.3f}").to_dict(validate=False)
    chart.vega_lite_chart({**spec, "autosize": {"type": "pad", "contains": "padding"}}, width="content")
    cls_text = f"; the CLS token itself (not on the map): {values[0]:+.4f}" if cls else ""
    st.caption(f"{md(component)}'s direct share of “{md(names[prompt])}”: {total:+.4f} over all tokens{cls_text}. "
               "Blue patches add to the logit, red ones take from it; hover a patch for its value.")
