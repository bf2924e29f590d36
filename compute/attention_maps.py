"""CLS attention maps on demand: at every layer of the vision tower, the attention probabilities the CLS
token's query puts on each token, per head, on the unablated model or under an ablation.

These are attention probabilities, not an attribution: they say where the CLS token reads from at that
layer, not how much a patch matters to the output. Under an ablation a layer shows the probabilities its
mode implies: identity heads attend only to themselves (the CLS row is [1, 0, ..., 0]), uniform heads
spread 1/tokens everywhere, knocked-out edges are 0 and the rest renormalised, zeroed heads read nothing
(all 0), and mean heads have no probabilities at all (NaN). Earlier ablated layers change what later
normal layers see, so their maps change too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.ablations import (
    NORMAL,
    Ablation,
    LayerMode,
    Means,
    check,
    knockout_edges,
    n_heads_of,
    replacement,
    vision_layers,
)


def cls_probabilities(attn: nn.Module, x: torch.Tensor, mode: LayerMode) -> torch.Tensor:
    """The CLS query's attention probabilities in one layer under ``mode``.

    x: (batch, tokens, width) layer-normed input -> (batch, heads, tokens), float32.
    """
    b, t, _ = x.shape
    n_heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(b, 1, n_heads, hd).transpose(1, 2)  # (batch, heads, 1, head_dim)
    k = attn.k_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    scores = (q @ k.transpose(-1, -2)).float()[:, :, 0] * attn.scale  # (batch, heads, tokens)
    probs = scores.softmax(dim=-1)
    if mode == NORMAL:
        return probs
    chosen = list(mode.heads) if mode.heads else list(range(n_heads))
    if mode.kind == "identity":
        probs[:, chosen] = F.one_hot(torch.zeros((), dtype=torch.long), t).to(probs)  # CLS reads itself only
    elif mode.kind == "zero":
        probs[:, chosen] = 0.0
    elif mode.kind == "uniform":
        probs[:, chosen] = 1.0 / t
    elif mode.kind == "mean":
        probs[:, chosen] = float("nan")  # a dataset mean replaces the output: no probabilities
    elif mode.kind == "knockout":
        blocked = knockout_edges(mode.target, 1, t, x.device)[0]  # (tokens,)
        probs[:, chosen] = scores[:, chosen].masked_fill(blocked, float("-inf")).softmax(dim=-1)
    else:  # pragma: no cover - a new kind needs its probabilities here
        raise ValueError(f"no attention probabilities defined for kind {mode.kind!r}")
    return probs


@torch.inference_mode()
def cls_attention(model: nn.Module, pixel_values: torch.Tensor, ablation: Ablation | None = None,
                  means: Means | None = None) -> np.ndarray:
    """The CLS token's attention probabilities at every layer under ``ablation`` (None: unablated).

    pixel_values: (batch, 3, size, size) -> (batch, layers, heads, tokens) float32; token 0 is CLS, the
    rest the patches in row-major order. ``means``: the run's dataset statistics, for mean ablations.
    """
    layers = vision_layers(model)
    modes = (NORMAL,) * len(layers)
    if ablation is not None:
        check(ablation, len(layers), n_heads_of(model))
        modes = ablation.modes(len(layers))
    vision = model.vision_model
    h = vision.pre_layrnorm(vision.embeddings(pixel_values))  # (batch, tokens, width)
    maps = []
    for depth, (layer, mode) in enumerate(zip(layers, modes, strict=True), start=1):
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        maps.append(cls_probabilities(attn, x, mode))
        a = attn(hidden_states=x)[0] if mode == NORMAL else replacement(mode, depth, means)(attn, x, None)
        h = h + a
        h = h + layer.mlp(layer.layer_norm2(h))
    return torch.stack(maps, dim=1).cpu().numpy()  # (batch, layers, heads, tokens)


def patch_grid(maps: np.ndarray) -> np.ndarray:
    """CLS-to-patch attention as images: (..., tokens) -> (..., side, side), dropping the CLS column."""
    patches = maps[..., 1:]
    side = int(round(patches.shape[-1] ** 0.5))
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patches do not form a square grid")
    return patches.reshape(*patches.shape[:-1], side, side)
