"""The fast ablation sweep over CLIP's vision tower, and the plain method it is checked against
(``plain_batch``: patch the modules with ``ablations.patched``, rerun the whole model per ablation).

The sweep is a prefix tree over per-layer modes. An ablation is a path of N modes ("normal" or a kind);
two ablations that agree on layers 1..k share the residual stream after layer k, so the tree computes
each distinct prefix once. The all-"normal" path is the unablated pass, and every ablation branches off
the kept state entering its first ablated layer. For the paper sweep of a 12-layer tower that is 143
layer evaluations instead of the 252 a per-ablation rerun spends.

Two more savings, both exact:
- only the CLS token reaches the output (pooled = post_layernorm(h[:, 0])), so once every layer left on
  all paths below a node is tokenwise (identity, zero, mean), the node computes the CLS token alone; a
  last "normal" layer needs every token's key and value but only the CLS query and MLP row;
- identity layers skip the query/key projections and the softmax (see ablations.identity_attention).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from compute.ablations import KINDS, Ablation, patched, replacement, vision_layers

NORMAL = "normal"


@dataclass
class Node:
    """The residual stream after ``depth`` layers along one prefix of modes."""

    depth: int  # layers applied so far; 0 = embeddings
    mode: str  # mode of layer ``depth``; "" at the root
    children: dict[str, Node] = field(default_factory=dict)
    ablations: list[Ablation] = field(default_factory=list)  # those ending here (depth == n_layers)
    full_out: bool = True  # some path below still needs every token of this node's output


def build_tree(ablations: list[Ablation], n_layers: int) -> Node:
    root = Node(0, "")
    for ablation in ablations:
        node = root
        for depth, mode in enumerate(ablation.modes(n_layers), start=1):
            node = node.children.setdefault(mode, Node(depth, mode))
        node.ablations.append(ablation)
    _mark_full(root)
    return root


def _mark_full(node: Node) -> bool:
    """Set full_out bottom-up; return whether this node needs all tokens of its input."""
    needs_in = [_mark_full(child) for child in node.children.values()]
    node.full_out = any(needs_in)
    tokenwise = node.mode != NORMAL and (node.mode == "" or KINDS[node.mode].tokenwise)
    return node.full_out or not tokenwise


def count_nodes(node: Node) -> int:
    return sum(1 + count_nodes(child) for child in node.children.values())


def cls_query_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normal attention for the CLS query only. x: (batch, tokens, width) -> (batch, 1, width)."""
    b, t, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(b, 1, h, hd).transpose(1, 2)  # (batch, heads, 1, head_dim)
    k = attn.k_proj(x).view(b, t, h, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    v = attn.v_proj(x).view(b, t, h, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (batch, heads, 1, head_dim)
    return attn.out_proj(out.transpose(1, 2).reshape(b, 1, d))


class SweepEngine:
    """Projected image embeddings of a batch under every ablation, sharing work along the prefix tree."""

    def __init__(
        self, model: nn.Module, ablations: list[Ablation], means: dict[int, torch.Tensor] | None = None
    ) -> None:
        self.model = model
        self.layers = vision_layers(model)
        self.means = means
        self.root = build_tree(list(ablations), len(self.layers))
        self.layer_evaluations = count_nodes(self.root)  # per batch

    @torch.inference_mode()
    def embeddings(self, pixel_values: torch.Tensor) -> dict[Ablation, torch.Tensor]:
        """pixel_values: (batch, 3, size, size) -> {ablation: (batch, projection_dim)}."""
        vision = self.model.vision_model
        h = vision.pre_layrnorm(vision.embeddings(pixel_values))  # (batch, tokens, width)
        out: dict[Ablation, torch.Tensor] = {}
        self._visit(self.root, h, out)
        return out

    def _visit(self, node: Node, h: torch.Tensor, out: dict[Ablation, torch.Tensor]) -> None:
        # Depth-first: at most one state per depth is alive, so memory is bounded by batch x depth.
        for child in node.children.values():
            h_child = self._layer(child, h)
            if child.ablations:
                emb = self._project(h_child)
                for ablation in child.ablations:
                    out[ablation] = emb
            self._visit(child, h_child, out)

    def _layer(self, node: Node, h: torch.Tensor) -> torch.Tensor:
        """One encoder layer in node's mode. h: (batch, tokens_in, width) -> (batch, tokens_out, width)."""
        layer = self.layers[node.depth - 1]
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        cls_only = not node.full_out and h.shape[1] > 1
        if node.mode == NORMAL:
            if cls_only:
                a, h = cls_query_attention(attn, x), h[:, :1]
            else:
                a = attn(hidden_states=x)[0]
        else:
            fn = replacement(node.mode, node.depth, self.means)
            if cls_only and KINDS[node.mode].tokenwise:
                h, x = h[:, :1], x[:, :1]
                a = fn(attn, x)
            elif cls_only:
                a, h = fn(attn, x)[:, :1], h[:, :1]
            else:
                a = fn(attn, x)
        h = h + a
        return h + layer.mlp(layer.layer_norm2(h))

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model.post_layernorm(h[:, 0])  # (batch, width)
        return self.model.visual_projection(pooled)  # (batch, projection_dim)


@torch.inference_mode()
def attention_means(
    model: nn.Module, batches: Iterable[torch.Tensor], layers: set[int]
) -> dict[int, torch.Tensor]:
    """Per layer in ``layers``: the unablated attention output per token position, averaged over all
    images of ``batches``. Returns {layer: (tokens, width)} in float32."""
    if not layers:
        return {}
    vision, blocks = model.vision_model, vision_layers(model)
    last = max(layers)
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for pixel_values in batches:
        h = vision.pre_layrnorm(vision.embeddings(pixel_values))  # (batch, tokens, width)
        for depth in range(1, last + 1):
            layer = blocks[depth - 1]
            a = layer.self_attn(hidden_states=layer.layer_norm1(h))[0]
            if depth in layers:
                total = a.double().sum(dim=0)  # float64 so a long dataset does not lose precision
                sums[depth] = sums[depth] + total if depth in sums else total
            h = h + a
            h = h + layer.mlp(layer.layer_norm2(h))
        count += pixel_values.shape[0]
    if count == 0:
        raise ValueError("no images to average over")
    return {depth: (s / count).float() for depth, s in sums.items()}


@torch.inference_mode()
def plain_batch(model: nn.Module, ablations: list[Ablation], pixel_values: torch.Tensor, tokens: dict,
                means: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain method: patch the modules and rerun the whole model once per ablation.

    The reference the engine is held to (``--method plain`` and the bench). tokens: the tokenised prompts.
    -> (embeddings (n, A, E) projected before normalisation, logits_per_image (n, A, P)), float32.
    """
    embs, logits = [], []
    for ablation in ablations:
        with patched(model, ablation, means):
            out = model(pixel_values=pixel_values, **tokens)
        embs.append(out.vision_model_output.pooler_output.float())
        logits.append(out.logits_per_image.float())
    return torch.stack(embs, dim=1), torch.stack(logits, dim=1)
