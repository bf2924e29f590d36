"""Attention maps on demand: at every layer of the vision tower, where attention reads from, per head, on the
unablated model or under an ablation.

What a map is depends on the tower (compute.towers):
- with a CLS token (CLIP), the attention probabilities the CLS token's query puts on each token: one map
  per layer;
- without one (SigLIP, SigLIP 2) no single token makes the image embedding, so each layer's map is the
  attention every token receives, averaged over all query tokens (each query's probabilities sum to 1, so
  the map does too), and one more map follows the last layer: the pooling head's probe query over the
  final tokens, which is what reads them into the embedding (the head itself is never ablated).

These are attention probabilities, not an attribution: they say where the tokens read from at that layer,
not how much a patch matters to the output. Under an ablation a layer's changed heads show the probabilities
their kind implies (``Kind.probabilities`` in compute.ablations: for instance identity heads attend only to
themselves, so the CLS row is [1, 0, ..., 0]; a kind that replaces the output by a dataset mean has none,
NaN); the other heads run normally. Earlier ablated layers change what later normal layers see, so their
maps change too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compute.ablations import Ablation, check, vision_layers
from compute.kinds import KINDS, NORMAL, LayerMode, Means, replacement
from compute.towers import has_cls, n_heads_of, pool_attention, tokens_in

# What one map shows, by whether the tower has a CLS token (for captions).
MEANING = {
    True: "attention probabilities of the CLS token's query over the patches",
    False: "attention each patch receives, averaged over every query token (the last map: the pooling "
           "head's probe query, which reads the final tokens into the image embedding)",
}


def query_probabilities(attn: nn.Module, x: torch.Tensor, mode: LayerMode, rows: int, cls: bool = True) -> torch.Tensor:
    """The attention probabilities of the first ``rows`` queries in one layer under ``mode``.

    x: (batch, tokens, width) layer-normed input -> (batch, heads, rows, tokens), float32. ``cls``: token 0
    is a CLS token (what targets mean).
    """
    b, t, _ = x.shape
    n_heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :rows]).view(b, rows, n_heads, hd).transpose(1, 2)  # (batch, heads, rows, head_dim)
    k = attn.k_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    scores = (q @ k.transpose(-1, -2)).float() * attn.scale  # (batch, heads, rows, tokens)
    probs = scores.softmax(dim=-1)
    if mode == NORMAL:
        return probs
    chosen = list(mode.heads) if mode.heads else list(range(n_heads))
    probs[:, chosen] = KINDS[mode.kind].probabilities(scores[:, chosen], mode.target, cls)
    return probs


@torch.inference_mode()
def attention_maps(model: nn.Module, pixel_values: torch.Tensor, ablation: Ablation | None = None,
                   means: Means | None = None) -> np.ndarray:
    """Every layer's map (see MEANING) under ``ablation`` (None: unablated), float32.

    -> with a CLS token: (batch, layers, heads, tokens), token 0 being CLS and the rest the patches in
    row-major order; without one: (batch, layers + 1, heads, tokens), every token a patch, the last row the
    pooling head. ``means``: the run's dataset statistics, for mean ablations.
    """
    layers = vision_layers(model)
    cls = has_cls(model)
    modes = (NORMAL,) * len(layers)
    if ablation is not None:
        check(ablation, len(layers), n_heads_of(model), cls)
        modes = ablation.modes(len(layers))
    h = tokens_in(model, pixel_values)  # (batch, tokens, width)
    maps = []
    for depth, (layer, mode) in enumerate(zip(layers, modes, strict=True), start=1):
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        if cls:
            maps.append(query_probabilities(attn, x, mode, 1)[:, :, 0])  # the CLS row
        else:
            maps.append(query_probabilities(attn, x, mode, x.shape[1], cls=False).mean(dim=2))  # over queries
        a = attn(hidden_states=x)[0] if mode == NORMAL else replacement(mode, depth, means, cls)(attn, x, None)
        h = h + a
        h = h + layer.mlp(layer.layer_norm2(h))
    if not cls:
        maps.append(pool_attention(model, h).float())
    return torch.stack(maps, dim=1).cpu().numpy()


def patch_grid(maps: np.ndarray, cls: bool = True) -> np.ndarray:
    """Attention to the patches as images: (..., tokens) -> (..., side, side), dropping the CLS column
    when the tower has one."""
    patches = maps[..., 1:] if cls else maps
    side = int(round(patches.shape[-1] ** 0.5))
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patches do not form a square grid")
    return patches.reshape(*patches.shape[:-1], side, side)
