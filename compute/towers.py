"""What differs between the vision towers the project ablates, by model family (the config's model_type).

- ``clip``: CLIP, and OpenCLIP checkpoints published as ``CLIPModel``. A CLS token is prepended and the
  sequence layer-normed (``pre_layrnorm``); the embedding is ``visual_projection(post_layernorm(h[:, 0]))``:
  only the CLS token reaches it.
- ``siglip``: SigLIP, and SigLIP 2 FixRes checkpoints (``google/siglip2-base-patch16-224`` is packaged as
  ``siglip``). Patches only, no pre-norm; ``post_layernorm`` runs on every token and an attention pooling
  head (a learned probe query over all tokens, ``torch.nn.MultiheadAttention``) makes the embedding, so every
  token of the last layer reaches it and no CLS-only shortcut is exact anywhere in the tower.
- ``siglip2``: SigLIP 2 NaFlex. As ``siglip``, but the model takes pre-patchified pixels, (batch, patches,
  3·p·p), with position embeddings resized to ``spatial_shapes``. Here every image is resized to the
  model's native square grid (aspect ratio not kept, as SigLIP's own processor does), so no patch is
  padding, the attention mask is all ones and a token position means the same patch in every image. The
  project carries those pixels as an image, (batch, 3, size, size), like the other families (the loader,
  the maps and the picture of what the model saw need nothing else); ``patchify`` makes the model's input.

The encoder layers are the same everywhere (``vision_model.encoder.layers``, pre-LN, with
``q_proj/k_proj/v_proj/out_proj`` attention), so every ablation applies unchanged; these functions are the
two ends around them. SigLIP's logits add a learned ``logit_bias`` after the scale (compute.scoring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LogitScale:
    """How a cosine becomes the model's logit: ``scale * cosine + bias``, in float32."""

    scale: float  # exp(logit_scale)
    bias: float = 0.0  # SigLIP's logit_bias; 0 for CLIP


FAMILIES = {
    "clip": "CLIP and OpenCLIP (CLIPModel)",
    "siglip": "SigLIP and SigLIP 2 FixRes (SiglipModel)",
    "siglip2": "SigLIP 2 NaFlex (Siglip2Model)",
}


def family(model: nn.Module) -> str:
    """The model's family: a key of FAMILIES."""
    name = model.config.model_type
    if name not in FAMILIES:
        raise ValueError(f"no vision tower family {name!r}; supported: {', '.join(FAMILIES)}")
    return name


def has_cls(model: nn.Module) -> bool:
    """Whether token 0 is a CLS token that alone makes the image embedding."""
    return family(model) == "clip"


def n_layers_of(model: nn.Module) -> int:
    """Encoder layers of the vision tower (what an ablation's layers count, from 1)."""
    return len(model.vision_model.encoder.layers)


def n_heads_of(model: nn.Module) -> int:
    """Attention heads per layer of the vision tower."""
    return int(model.config.vision_config.num_attention_heads)


def grid_side(model: nn.Module) -> int:
    """Patches per side of the (square) patch grid the tower runs on."""
    vc = model.config.vision_config
    if family(model) == "siglip2":
        return math.isqrt(vc.num_patches)
    return vc.image_size // vc.patch_size


def patchify(pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """SigLIP 2 NaFlex's input layout: (batch, 3, H, W) -> (batch, patches, p·p·3), patches in row-major
    order, each flattened in (row, column, channel) order as its processor makes them."""
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, side: int, patch: int) -> torch.Tensor:
    """The inverse of patchify on a side x side grid: (batch, patches, p·p·3) -> (batch, 3, H, W)."""
    b = patches.shape[0]
    x = patches.reshape(b, side, side, patch, patch, 3).permute(0, 5, 1, 3, 2, 4)  # (b, 3, gy, py, gx, px)
    return x.reshape(b, 3, side * patch, side * patch)


def image_inputs(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``model(...)`` and ``get_image_features(...)`` for a batch of pixels.

    pixel_values: (batch, 3, size, size); for siglip2 the native square grid, patchified here.
    """
    if family(model) != "siglip2":
        return {"pixel_values": pixel_values}
    b = pixel_values.shape[0]
    side = grid_side(model)
    patches = patchify(pixel_values, int(model.config.vision_config.patch_size))  # (batch, side², 3·p·p)
    return {
        "pixel_values": patches,
        "pixel_attention_mask": torch.ones(b, side * side, dtype=torch.int32, device=pixel_values.device),
        "spatial_shapes": torch.tensor([[side, side]] * b, dtype=torch.long, device=pixel_values.device),
    }


def tokens_in(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The residual stream entering the first encoder layer. pixel_values: (batch, 3, size, size) ->
    (batch, tokens, width)."""
    vision = model.vision_model
    name = family(model)
    if name == "clip":
        return vision.pre_layrnorm(vision.embeddings(pixel_values))  # CLS first
    if name == "siglip":
        return vision.embeddings(pixel_values)
    inputs = image_inputs(model, pixel_values)
    return vision.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])


def pool(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The image embedding (before normalisation) from the last layer's output, as the model makes it.

    h: (batch, tokens, width); for clip only token 0 is read, so h may hold the CLS token alone.
    -> (batch, E): CLIP's projection_dim, SigLIP's vision width.
    """
    vision = model.vision_model
    if family(model) == "clip":
        return model.visual_projection(vision.post_layernorm(h[:, 0]))
    # Every token: post_layernorm is tokenwise, then the probe query attends over all of them. The head runs
    # as the model runs it (never ablated here).
    return vision.head(vision.post_layernorm(h))


def pool_attention(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """SigLIP's pooling head: its probe query's attention probabilities over the last layer's tokens.

    h: (batch, tokens, width) -> (batch, heads, tokens).
    """
    vision = model.vision_model
    head = vision.head
    x = vision.post_layernorm(h)
    probe = head.probe.expand(x.shape[0], -1, -1)  # (batch, 1, width)
    _, weights = head.attention(probe, x, x, need_weights=True, average_attn_weights=False)
    return weights[:, :, 0]  # (batch, heads, 1, tokens) -> (batch, heads, tokens)


def embedding_width(model: nn.Module) -> int:
    """E, the width of the image and text embeddings that are compared."""
    if family(model) == "clip":
        return int(model.config.projection_dim)
    return int(model.config.vision_config.hidden_size)
