"""Attribution patching: every head's ablation estimated from one forward and one backward pass per image
(Nanda 2023; Syed et al. 2023; Kramár et al. 2024, AtP*), beside the exact sweep that measures it.

Definitions (docs/attribution.md):
- the metric per image, ``M`` = the logit of the baseline's selected prompt minus the logit of the baseline's
  second prompt (the margin whose sign decides the pick). The two prompts are fixed per image from the
  unablated pass of the sweep (``compute.scoring.sweep_pairs``: the top two of the logits the run stores for
  baseline) and stay fixed under every ablation. With one prompt M is undefined: the run says so and stores nothing;
- ``z(L, H)``: head H's output in layer L before ``out_proj``, at every token (a forward pre-hook on out_proj,
  as compute.engine's mean pass and the decomposition's tap read it), on the float32 model (in a low-precision
  run, the float32 model compute.precision keeps);
- ``z_A(L, H)``: that head's output under the head-level ablation A (``KIND:L/hH``, or ``knockout:L/T/hH``)
  computed from the layer's *unablated* input with the kind's own registry entry: exactly what
  compute.kinds.head_attention gives that head (both call ``kinds.kind_heads`` with the same arguments);
  ``mean`` reads the run's per-head dataset mean (kinds.HEAD_MEAN_STAT, every layer: ``attribution_needs``);
- the estimate ``est(A) = < dM/dz(L, H), z_A(L, H) - z(L, H) >``, summed over tokens and the head's
  dimensions, with the gradient of the unablated forward pass. The exact effect (the heads sweep, where the
  run holds it) is M under A, from the stored logits, minus M (compute.attribution_quality measures one
  against the other).

What an experiment names (``[attribution] kinds``) is a ``Spec`` (compute.ablations, beside its parser): a kind,
or ``kind:target`` for a kind that takes a target (``knockout:patches>cls``). Each spec is estimated on every
head of every layer, labelled as the head-level ablation it stands for (``identity:5/h3``,
``knockout:9/patches>cls/h2``): the labels the exact sweep stores, so estimate and exact meet by name.

Where it runs: in the sweep's loop, per batch, beside the engine (compute.runner, compute.ray_workers), written
in the batch's transaction; a run resumed with attribution newly enabled (or with a kind added) attributes the
images it had already swept from their stored baseline logits (compute.runner). ``Attributor.batch`` is the
whole computation of one batch: one forward with gradients, one backward, then every estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from compute.ablations import Spec, attribution_needs, estimated_ablations, parse_spec, vision_layers
from compute.kinds import HEAD_MEAN_STAT, Means, kind_heads
from compute.towers import LogitScale, has_cls, n_heads_of, pool, tokens_in

METRIC = ("logit of the baseline's selected prompt minus the logit of the baseline's second prompt, both "
          "prompts fixed per image from the unablated pass; estimate = <dM/dz, z_A - z> per head, summed over "
          "tokens and head dimensions")
def prompt_pairs(logits: torch.Tensor) -> torch.Tensor:
    """The baseline's selected prompt (the argmax, as compute.scoring.select_tensors picks it) and its second:
    (n, P) -> (n, 2) long. P >= 2."""
    selected = logits.argmax(dim=-1)  # (n,)
    others = logits.float().scatter(-1, selected.unsqueeze(-1), float("-inf"))
    return torch.stack([selected, others.argmax(dim=-1)], dim=-1)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block no parameter asks for a gradient (the backward pass needs only the heads' outputs',
    and the graph keeps less); each gets its own flag back in ``finally``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class Pass:
    """One batch's unablated forward with gradients, after its backward: per layer (index 0 = layer 1) the
    layer-normed input x (batch, tokens, width), the heads' outputs z and dM/dz, both (batch, heads, tokens,
    head_dim); and M (batch,)."""

    x: list[torch.Tensor]
    z: list[torch.Tensor]
    grad: list[torch.Tensor]
    metric: torch.Tensor


class Attributor:
    """What attributing a run's batches needs that is the same for every batch: the (float32) model, the specs,
    the run's dataset means, the prompts and the logit scale."""

    def __init__(self, model: nn.Module, specs: list[Spec], means: Means | None, text_norm: torch.Tensor,
                 scale: LogitScale) -> None:
        if text_norm.shape[0] < 2:
            raise ValueError("attribution needs two prompts at least: with one, the margin M is undefined")
        self.model = model
        self.layers = vision_layers(model)
        self.cls = has_cls(model)
        self.n_heads = n_heads_of(model)
        self.specs = list(specs)
        for spec in self.specs:
            parse_spec(spec.label, self.cls)  # a target the tower cannot take fails here
        self.estimates = estimated_ablations(self.specs, len(self.layers), self.n_heads)
        self.means = means or {}
        self.text_norm = text_norm
        self.scale = scale
        missing = [layer for layer in attribution_needs(self.specs, len(self.layers)).get(HEAD_MEAN_STAT, ())
                   if layer not in self.means.get(HEAD_MEAN_STAT, {})]
        if missing:
            raise ValueError(f"attribution of a mean kind needs the dataset statistic {HEAD_MEAN_STAT} of layer(s) "
                             f"{', '.join(map(str, missing))}")

    # --- the forward and backward pass

    def forward_backward(self, pixels: torch.Tensor, pairs: torch.Tensor) -> Pass:
        """The unablated pass with gradients, then dM/dz of every layer. pixels (n, 3, h, w); pairs (n, 2) the
        prompts M compares (selected, second)."""
        model = self.model
        dtype = next(model.parameters()).dtype
        n_heads = self.n_heads
        with torch.inference_mode(False), torch.enable_grad(), frozen(model):
            # A copy made here is a normal tensor even when the pixels were made in inference mode; the graph
            # starts at the residual stream entering layer 1 (no parameter asks for a gradient).
            h = tokens_in(model, pixels.to(dtype).clone()).detach().requires_grad_()  # (n, tokens, width)
            xs, zs = [], []
            for layer in self.layers:
                x = layer.layer_norm1(h)
                seen: list[torch.Tensor] = []
                hook = layer.self_attn.out_proj.register_forward_pre_hook(lambda _m, args, s=seen: s.append(args[0]))
                try:
                    a = layer.self_attn(hidden_states=x)[0]
                finally:
                    hook.remove()
                xs.append(x.detach())
                zs.append(seen[0])  # (n, tokens, width): the heads' outputs, concatenated, as the model computes them
                h = h + a
                h = h + layer.mlp(layer.layer_norm2(h))
            emb = pool(model, h)  # (n, E)
            text = self.text_norm.to(emb.dtype).clone()  # a normal tensor, even from inference mode: saved for backward
            logits = self.scale.scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.T  # (n, P); the bias cancels in M
            idx = pairs.to(logits.device).long()
            metric = logits.gather(1, idx[:, :1])[:, 0] - logits.gather(1, idx[:, 1:])[:, 0]  # (n,)
            # Each image's M reads that image alone, so the gradient of their sum is every image's own.
            grads = torch.autograd.grad(metric.sum(), zs)
        b, t, _ = xs[0].shape
        split = [g.view(b, t, n_heads, -1).transpose(1, 2) for g in grads]  # (n, heads, tokens, head_dim)
        heads = [z.detach().view(b, t, n_heads, -1).transpose(1, 2) for z in zs]
        return Pass(xs, heads, split, metric.detach())

    # --- the ablated heads, and the estimates

    def changed(self, depth: int, x: torch.Tensor, spec: Spec) -> torch.Tensor:
        """z_A of every head of layer ``depth`` under ``spec``, each computed alone as
        compute.kinds.head_attention computes it for that one head (the same call of kinds.kind_heads, so the
        same numbers). x: (batch, tokens, width) the layer's unablated layer-normed input -> (batch, heads,
        tokens, head_dim)."""
        attn = self.layers[depth - 1].self_attn
        b, t, _ = x.shape
        n_heads, hd = attn.num_heads, attn.head_dim
        v = attn.v_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
        q = attn.q_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # as head_attention makes them for one head
        k = attn.k_proj(x).view(b, t, n_heads, hd).transpose(1, 2)
        mean = self.means.get(HEAD_MEAN_STAT, {}).get(depth)
        return torch.cat([kind_heads(attn, q, k, v, t, kind=spec.kind, pick=[head], target=spec.target,
                                     head_mean=mean, cls=self.cls) for head in range(n_heads)], dim=1)

    @torch.inference_mode()
    def estimates_of(self, seen: Pass) -> torch.Tensor:
        """Every estimate of the batch from its pass: (batch, len(self.estimates)), columns as ``estimates``."""
        out = []
        for spec in self.specs:
            for depth, (x, z, g) in enumerate(zip(seen.x, seen.z, seen.grad, strict=True), start=1):
                delta = self.changed(depth, x, spec) - z  # (batch, heads, tokens, head_dim)
                out.append((delta * g).sum(dim=(2, 3)))  # (batch, heads)
        return torch.cat(out, dim=1)

    def batch(self, pixels: torch.Tensor, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch: {"estimate": (n, K) float32 in ``estimates``' order, "metric": (n,) M, "pairs": (n, 2)}."""
        seen = self.forward_backward(pixels, pairs)
        return {"estimate": self.estimates_of(seen).float(), "metric": seen.metric.float(),
                "pairs": pairs.to(seen.metric.device).to(torch.int16)}
