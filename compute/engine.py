"""The fast ablation sweep over a vision tower (CLIP, SigLIP, SigLIP 2: see compute.towers), and the plain
method it is checked against (``plain_batch``: patch the modules with ``ablations.patched``, rerun the whole
model per ablation).

The sweep is a prefix tree over per-layer modes. An ablation is a path of N modes (NORMAL, or a kind on
some heads with its target: the full ``LayerMode``); two ablations that agree on layers 1..k share the
residual stream after layer k, so the tree computes each distinct prefix once. The all-NORMAL path is the
unablated pass, and every ablation branches off the kept state entering its first ablated layer. For the
paper sweep of a 12-layer tower that is 143 layer evaluations instead of the 252 a per-ablation rerun
spends; for the heads sweep of 12 layers x 12 heads, 948 instead of 1,740.

Two more savings, both exact:
- on CLIP only the CLS token reaches the output (pooled = post_layernorm(h[:, 0])), so a layer whose
  outputs below are needed for the CLS token only computes the CLS query alone (every token's key and value
  are still read), and once every layer left on all paths below a node reads the CLS token's input alone
  (a whole layer whose kind is CLS-local for its target, ``Kind.cls_local``: identity, zero, mean, knockout
  of patches>cls) the node computes the CLS token alone. A head-level layer is never CLS-local: its other
  heads read every token. A tower without a CLS token (SigLIP) pools every token of the last layer with an
  attention head, so there every node computes every token: the shortcut is used only where it is exact;
- a kind's whole-layer form may skip what it does not need (identity: the query/key projections and the
  softmax, see kinds.identity_attention).

Below float32 (compute.precision) the all-NORMAL path, the trunk, runs on a float32 copy of the model: the
unablated pass is then float32's own (the run's exact judge, computed once), and each branch starts from the
trunk's state entering its first ablated layer, rounded to the low precision, so only the layers from there
on round.

``embeddings(pixels, tap)`` shows the all-NORMAL path (the unablated pass, visited first) to a ``Tap``: what
compute.decomposition needs of it, per layer, as the pass computes it (no second pass over the batch).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from compute.ablations import Ablation, check, patched, vision_layers
from compute.kinds import HEAD_MEAN_STAT, MEAN_STAT, NORMAL, LayerMode, Means, replacement
from compute.towers import has_cls, image_inputs, n_heads_of, pool, tokens_in


@dataclass
class Node:
    """The residual stream after ``depth`` layers along one prefix of modes."""

    depth: int  # layers applied so far; 0 = embeddings
    mode: LayerMode | None  # mode of layer ``depth``; None at the root
    children: dict[LayerMode, Node] = field(default_factory=dict)
    ablations: list[Ablation] = field(default_factory=list)  # those ending here (depth == n_layers)
    full_out: bool = True  # some path below still needs every token of this node's output


def build_tree(ablations: list[Ablation], n_layers: int, cls: bool = True) -> Node:
    """The prefix tree of ``ablations``. ``cls``: the output is the CLS token alone (CLIP), so nodes whose
    paths below read only the CLS token are marked; without a CLS token every node keeps every token."""
    root = Node(0, None)
    for ablation in ablations:
        node = root
        for depth, mode in enumerate(ablation.modes(n_layers), start=1):
            node = node.children.setdefault(mode, Node(depth, mode))
        node.ablations.append(ablation)
    if cls:
        _mark_full(root)  # else every node keeps full_out = True
    return root


def _mark_full(node: Node) -> bool:
    """Set full_out bottom-up; return whether this node needs all tokens of its input."""
    needs_in = [_mark_full(child) for child in node.children.values()]
    node.full_out = any(needs_in)
    return node.full_out or node.mode is None or not node.mode.cls_local


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


class Tap(Protocol):
    """What a tap is shown of the unablated pass (compute.decomposition's BatchTap is one): ``begin`` the
    residual stream entering layer 1, (batch, tokens, width); ``layer`` per layer L, in order: the layer-normed
    input x (batch, tokens, width), the heads' outputs before out_proj, concatenated, and the MLP's output,
    each (batch, rows, width) for the rows this pass computes (on CLIP near the end the CLS token alone, first
    row everywhere); ``end`` the last layer's output and the embedding it pools to."""

    def begin(self, h: torch.Tensor) -> None: ...

    def layer(self, depth: int, x: torch.Tensor, heads: torch.Tensor, mlp: torch.Tensor) -> None: ...

    def end(self, h: torch.Tensor, embedding: torch.Tensor) -> None: ...


class SweepEngine:
    """Image embeddings of a batch under every ablation, sharing work along the prefix tree."""

    def __init__(self, model: nn.Module, ablations: list[Ablation], means: Means | None = None,
                 trunk: nn.Module | None = None) -> None:
        """``trunk``: a float32 copy of a low-precision ``model`` that computes the unablated path (the trunk),
        every branch starting from the trunk's state rounded to ``model``'s dtype (see the module docstring);
        default ``model`` itself."""
        self.model = model
        self.layers = vision_layers(model)
        self.means = means
        self.trunk_model = trunk if trunk is not None else model
        self.trunk_layers = vision_layers(self.trunk_model)
        # the towers' dtypes (a low-precision copy keeps logit_scale float32: not the model's .dtype)
        self.dtype, self.trunk_dtype = (next(layers[0].parameters()).dtype for layers in (self.layers, self.trunk_layers))
        self.cls = has_cls(model)
        for ablation in ablations:
            check(ablation, len(self.layers), n_heads_of(model), self.cls)
        self.root = build_tree(list(ablations), len(self.layers), self.cls)
        self.layer_evaluations = count_nodes(self.root)  # per batch

    @torch.inference_mode()
    def embeddings(self, pixel_values: torch.Tensor, tap: Tap | None = None) -> dict[Ablation, torch.Tensor]:
        """pixel_values: (batch, 3, size, size) -> {ablation: (batch, E)}, the embeddings before
        normalisation (towers.pool). ``tap``: shown the unablated pass as it goes (see Tap)."""
        h = tokens_in(self.trunk_model, pixel_values.to(self.trunk_dtype))  # (batch, tokens, width)
        if tap is not None:
            tap.begin(h)
        out: dict[Ablation, torch.Tensor] = {}
        self._visit(self.root, h, out, tap, True)
        return out

    def _visit(self, node: Node, h: torch.Tensor, out: dict[Ablation, torch.Tensor], tap: Tap | None,
               trunk: bool) -> None:
        # Depth-first: at most one state per depth is alive, so memory is bounded by batch x depth. The tap
        # follows the all-NORMAL path (the trunk) only, which is visited first (baseline is every tree's first
        # ablation). ``trunk``: node is on that path.
        for child in node.children.values():
            on_trunk = trunk and child.mode == NORMAL
            on_path = tap if on_trunk else None
            # a branch leaving the trunk starts from the trunk's state in the branch model's dtype
            h_in = h if on_trunk or not trunk else h.to(self.dtype)
            h_child = self._layer(child, h_in, on_path, on_trunk)
            if child.ablations:
                emb = pool(self.trunk_model if on_trunk else self.model, h_child)  # (batch, E)
                for ablation in child.ablations:
                    out[ablation] = emb
                if on_path is not None:
                    on_path.end(h_child, emb)
            self._visit(child, h_child, out, on_path, on_trunk)

    def _layer(self, node: Node, h: torch.Tensor, tap: Tap | None = None, trunk: bool = False) -> torch.Tensor:
        """One encoder layer in node's mode (of the trunk model where ``trunk``). h: (batch, tokens_in, width)
        -> (batch, tokens_out, width)."""
        layer = (self.trunk_layers if trunk else self.layers)[node.depth - 1]
        attn = layer.self_attn
        cls_only = not node.full_out and h.shape[1] > 1  # below needs the CLS token alone
        if cls_only and node.mode.cls_local:
            h = h[:, :1]  # and the CLS token's output reads its own input alone
        x = layer.layer_norm1(h)
        rows = 1 if cls_only else None
        heads: list[torch.Tensor] = []
        hook = None
        if tap is not None:  # out_proj's input: the heads' outputs, concatenated, as this pass computes them
            hook = attn.out_proj.register_forward_pre_hook(lambda _m, args: heads.append(args[0]))
        try:
            if node.mode == NORMAL:
                a = cls_query_attention(attn, x) if cls_only else attn(hidden_states=x)[0]
            else:
                a = replacement(node.mode, node.depth, self.means, self.cls)(attn, x, rows)  # (batch, rows, width)
        finally:
            if hook is not None:
                hook.remove()
        h = h[:, :1] if cls_only else h
        h = h + a
        m = layer.mlp(layer.layer_norm2(h))  # (batch, rows, width)
        if tap is not None:
            tap.layer(node.depth, x, heads[0], m)
        return h + m


def means_on(means: dict[str, dict[int, object]], device: torch.device | str, dtype: torch.dtype) -> Means:
    """Stored statistics ({stat: {layer: (tokens, width) float32 array}}, as store.load_stats and the mean pass
    give them) -> tensors on the model's device and dtype, as the engine and the plain method take them. The
    arrays are copied: those Ray hands an actor are read-only views of its object store."""
    return {name: {layer: torch.tensor(m).to(device, dtype) for layer, m in per_layer.items()}
            for name, per_layer in means.items()}


@torch.inference_mode()
def attention_means(model: nn.Module, batches: Iterable[torch.Tensor], needs: dict[str, set[int]]) -> Means:
    """The dataset statistics ``needs`` asks for ({stat name: layers}, see ablations.mean_needs), over all
    images of ``batches`` on the unablated model: per layer and token position, the attention block's
    output (MEAN_STAT) or the heads' outputs before out_proj, concatenated (HEAD_MEAN_STAT).
    Returns {stat name: {layer: (tokens, width)}} in float32."""
    needs = {name: set(layers) for name, layers in needs.items() if layers}
    if not needs:
        return {}
    blocks = vision_layers(model)
    last = max(max(layers) for layers in needs.values())
    sums: dict[str, dict[int, torch.Tensor]] = {name: {} for name in needs}
    count = 0

    def add(name: str, depth: int, value: torch.Tensor) -> None:
        total = value.double().sum(dim=0)  # float64 so a long dataset does not lose precision
        sums[name][depth] = sums[name][depth] + total if depth in sums[name] else total

    for pixel_values in batches:
        h = tokens_in(model, pixel_values)  # (batch, tokens, width)
        for depth in range(1, last + 1):
            layer = blocks[depth - 1]
            heads_in: list[torch.Tensor] = []
            hook = None
            if depth in needs.get(HEAD_MEAN_STAT, ()):
                # out_proj's input is the concatenation of the heads' outputs, as the model computes it
                hook = layer.self_attn.out_proj.register_forward_pre_hook(lambda _m, args, out=heads_in: out.append(args[0]))
            try:
                a = layer.self_attn(hidden_states=layer.layer_norm1(h))[0]
            finally:
                if hook is not None:
                    hook.remove()
            if depth in needs.get(MEAN_STAT, ()):
                add(MEAN_STAT, depth, a)
            if heads_in:
                add(HEAD_MEAN_STAT, depth, heads_in[0])
            h = h + a
            h = h + layer.mlp(layer.layer_norm2(h))
        count += pixel_values.shape[0]
    if count == 0:
        raise ValueError("no images to average over")
    return {name: {depth: (s / count).float() for depth, s in layers.items()} for name, layers in sums.items()}


@torch.inference_mode()
def plain_batch(model: nn.Module, ablations: list[Ablation], pixel_values: torch.Tensor, tokens: dict,
                means: Means | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain method: patch the modules and rerun the whole model once per ablation.

    The reference the engine is held to (``--method plain`` and the bench). tokens: the tokenised prompts.
    -> (embeddings (n, A, E) before normalisation, the model's own logits_per_image (n, A, P)), float32.
    """
    embs, logits = [], []
    for ablation in ablations:
        with patched(model, ablation, means):
            out = model(**image_inputs(model, pixel_values), **tokens)
        embs.append(out.vision_model_output.pooler_output.float())
        logits.append(out.logits_per_image.float())
    return torch.stack(embs, dim=1), torch.stack(logits, dim=1)
