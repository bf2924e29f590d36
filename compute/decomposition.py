"""The image embedding split exactly into the direct contributions of its components, their shares of every
prompt's logit, and the direct effect of every ablation (DESIGN.md, "Decomposition"; Gandelsman, Efros and
Steinhardt, ICLR 2024).

Components (``components_of``, in this order, which is component_t's ``component_id``):
``embeddings`` (layer 0: CLIP's CLS token after ``pre_layrnorm``, SigLIP's patch + position embeddings), then
per layer L: ``head`` H (the head's attention output times its slice of ``out_proj``), ``attention_bias``
(``out_proj``'s bias), ``mlp`` (the MLP's output); then ``final_ln_bias``; SigLIP adds ``pooling_mlp``.

The readout (``Readout``), frozen per image at its unablated values:
- CLIP reads the CLS token: with the final layer norm's scale sigma frozen, the embedding before normalisation
  is ``sum_c T(c) + W_proj beta`` where ``T(c) = W_proj (gamma * (c - mean(c)) / sigma)``; ``final_ln_bias`` is
  ``W_proj beta``;
- SigLIP reads every token through its pooling head: each token t layer-normed with its own frozen sigma_t,
  the probe's attention probabilities p[k, t] (pooling head k) frozen, so the head's attention output is
  linear in the components: ``T(c) = W_out [W_v,k sum_t p[k, t] gamma * (c_t - mean(c_t)) / sigma_t]_k``.
  Everything constant in that readout (beta through the value and output projections, with their biases:
  the probabilities sum to 1) is ``final_ln_bias``; the pooling head's MLP branch is ``pooling_mlp``. So
  ``sum_c T(c) + final_ln_bias + pooling_mlp`` is the embedding.
A component's share of prompt p's logit is ``scale * <T(c), t_p> / |e|`` (t_p normalised, |e| the unablated
embedding's norm); the shares plus the model's logit bias (SigLIP; 0 for CLIP) sum to the logit.

The direct effect of an ablation (``direct``): each ablated layer's attention output at the tokens that
reach the output (CLIP's CLS token; every token on SigLIP) recomputed from the layer's *unablated* input
under the ablation's kind, with the kind's own replacement (``compute.kinds.replacement``: every
registered kind gets its direct effect from its registry entry), and the change read out through the
frozen readout (sigma, the pooling probabilities, ``pooling_mlp`` and |e| of the unablated image): the
change of each prompt's logit. The total effect is the stored ablated logit minus the baseline's; indirect =
total - direct (the store's ``effects`` view).

Where it runs: inside the sweep. ``compute.engine.SweepEngine.embeddings(pixels, tap)`` shows the unablated
pass (the all-NORMAL path of its prefix tree) to a ``BatchTap``: per layer the layer-normed input, the heads'
outputs before out_proj and the MLP's output, at the rows the pass computes. At the pass's end the tap reads
the readout and computes everything on the model's device, in float32; the run writes it with the batch, in
the batch's transaction (compute.store.DecompositionRows). Memory: the tap keeps, per layer, the heads' and
the MLP's outputs at the output rows and (for layers an ablation changes) the layer-normed input, about as
much again as the engine's own states on SigLIP, a small part of it on CLIP. ``Decomposer.batch`` runs the
same on the unablated pass alone (the plain method, images a run decomposes after the fact).

Python API (what the dashboard and export build on):
- ``components_of(n_layers, n_heads, cls)`` -> [Component(component, layer, head)], the store's order;
- ``Decomposer(model, ablations, means, text_norm, scale, vectors)``: ``.tap()`` for the engine,
  ``.batch(pixels)`` alone; either gives a dict of tensors (``RESULT_FIELDS``): ``norm`` (n,) |e|;
  ``vectors`` (n, C, E) T(c)/|e|; ``shares`` (n, C, P); ``direct_vectors`` (n, A', E) the direct change of
  the embedding / |e| per non-baseline ablation (``direct_ids``); ``direct`` (n, A', P);
- ``shares_of(vectors, text_norm, scale)``: shares for any prompts from stored vectors (rescore, the Prompt
  lab): ``scale * <v, t_p>``;
- ``readout(model, h)``: the frozen readout of a last layer's output, ``Readout.joint`` / ``joint_heads`` map
  components (at the output rows) into the joint space;
- ``token_shares(model, pixels, text_norm, scale, layer, head=None, by="read")``: one head's (or a whole
  layer's heads', ``head=None``) share split over the tokens it reads (attention probability x value, through
  out_proj and the readout), or (``by="written"``) over the positions it writes to (SigLIP; on CLIP all at
  the CLS token); ``component="mlp"`` splits the MLP by position. Sums to the component's share. Computed on
  demand from the model (the Image page), token order as the tower's (CLIP: CLS first, then patches row by
  row; SigLIP: patches row by row).
Stored results are read with ``analysis.decomposition`` (the mean-ablation lab works from them alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compute.ablations import BASELINE, Ablation, vision_layers
from compute.engine import SweepEngine
from compute.kinds import NORMAL, LayerMode, Means, replacement
from compute.scoring import Decomposed, LogitScale
from compute.towers import has_cls, n_heads_of, n_layers_of, tokens_in

COMPONENT_KINDS = ("embeddings", "head", "attention_bias", "mlp", "final_ln_bias", "pooling_mlp")
VECTOR_DTYPES = {"float32": torch.float32, "float16": torch.float16}
RESULT_FIELDS = ("norm", "vectors", "shares", "direct_vectors", "direct")


@dataclass(frozen=True)
class Component:
    """One term of the decomposition: its kind, its layer (0 for embeddings; None for final_ln_bias and
    pooling_mlp) and its head (head only)."""

    component: str
    layer: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        if self.component == "head":
            return f"L{self.layer}.h{self.head}"
        if self.layer is None or self.component == "embeddings":
            return self.component
        return f"L{self.layer}.{self.component}"


def components_of(n_layers: int, n_heads: int, cls: bool = True) -> list[Component]:
    """The components in the store's order (component_t.component_id). ``cls``: CLIP (no pooling_mlp)."""
    out = [Component("embeddings", 0)]
    for layer in range(1, n_layers + 1):
        out += [Component("head", layer, h) for h in range(n_heads)]
        out += [Component("attention_bias", layer), Component("mlp", layer)]
    out.append(Component("final_ln_bias"))
    if not cls:
        out.append(Component("pooling_mlp"))
    return out


def model_components(model: nn.Module) -> list[Component]:
    return components_of(n_layers_of(model), n_heads_of(model), has_cls(model))


def direct_ids(ablations: list[Ablation]) -> list[int]:
    """The ablation ids (positions in the run's order) that have a direct effect row: every one but baseline."""
    return [i for i, a in enumerate(ablations) if a.kind != BASELINE]


def shares_of(vectors: torch.Tensor, text_norm: torch.Tensor, scale: LogitScale | float) -> torch.Tensor:
    """Shares of the logits from vectors already divided by |e|: (..., E) x (P, E) -> (..., P), float32."""
    s = scale.scale if isinstance(scale, LogitScale) else float(scale)
    return s * (vectors.float() @ text_norm.float().T)


# --------------------------------------------------------------------------------------------------
# The frozen readout: from a component at the output rows to the joint space.


@dataclass
class Readout:
    """The map from the residual stream's last state to the embedding, frozen at one batch's unablated values
    (module docstring). K pooling heads (CLIP: 1), rows = the tokens the output reads (CLIP: 1)."""

    weights: torch.Tensor  # (batch, K, rows): p[k, t] / sigma_t (CLIP: 1 / sigma)
    gamma: torch.Tensor  # (width,) the final layer norm's scale
    value: torch.Tensor | None  # (K, head_dim, width) the pooling head's value projection; None for CLIP
    out: torch.Tensor  # (E, K, head_dim): the pooling head's out_proj (CLIP: visual_projection, (E, 1, width))
    constant: torch.Tensor  # (E,) final_ln_bias
    pooling_mlp: torch.Tensor | None  # (batch, E) SigLIP's pooling head's MLP branch
    embedding: torch.Tensor  # (batch, E) the embedding, as this readout makes it

    def _out(self, s: torch.Tensor) -> torch.Tensor:
        # s: (batch, n, K, width), the components' frozen-weighted sums over the rows; the final layer norm's
        # centring and scale are linear, so they apply after the sum.
        s = self.gamma * (s - s.mean(dim=-1, keepdim=True))
        if self.value is not None:
            s = torch.einsum("bnkd,ked->bnke", s, self.value)  # (batch, n, K, head_dim)
        return torch.einsum("bnke,fke->bnf", s, self.out)  # (batch, n, E)

    def joint(self, c: torch.Tensor) -> torch.Tensor:
        """T(c) of components given at the output rows: (batch, n, rows, width) -> (batch, n, E)."""
        return self._out(torch.einsum("bkt,bntd->bnkd", self.weights, c.float()))

    def joint_heads(self, o: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
        """T of each head's term: o (batch, rows, heads, head_dim) the heads' outputs before out_proj, w_o
        (width, heads * head_dim) out_proj's weight -> (batch, heads, E). The weighted sum over rows comes
        first, so no (heads, rows, width) tensor is made."""
        n_heads, hd = o.shape[2:]
        m = torch.einsum("bkt,bthe->bkhe", self.weights, o.float())  # (batch, K, heads, head_dim)
        u = torch.einsum("bkhe,dhe->bhkd", m, w_o.float().view(-1, n_heads, hd))  # (batch, heads, K, width)
        return self._out(u)


def _layer_norm_scale(h: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """sigma of a LayerNorm over the last axis, float32: h (..., width) -> (...)."""
    h = h.float()
    return torch.sqrt(h.var(dim=-1, unbiased=False) + norm.eps)


@torch.inference_mode()
def readout(model: nn.Module, h: torch.Tensor) -> Readout:
    """The frozen readout of the last layer's output h: (batch, tokens, width); for CLIP only token 0 is read
    (h may hold it alone)."""
    vision = model.vision_model
    ln = vision.post_layernorm
    gamma = ln.weight.float()
    beta = ln.bias.float() if ln.bias is not None else torch.zeros_like(gamma)
    if has_cls(model):
        hn = h[:, 0]  # (batch, width)
        sigma = _layer_norm_scale(hn, ln)  # (batch,)
        w_proj = model.visual_projection.weight.float()  # (E, width)
        embedding = model.visual_projection(ln(hn)).float()
        return Readout((1.0 / sigma).view(-1, 1, 1), gamma, None, w_proj.unsqueeze(1), w_proj @ beta, None,
                       embedding)
    head = vision.head
    mha = head.attention
    if mha.in_proj_weight is None:  # pragma: no cover - SigLIP's probe attention packs q, k, v together
        raise ValueError("the pooling head's attention keeps separate q/k/v projections: not supported")
    width = h.shape[-1]
    k_heads = mha.num_heads
    hd = width // k_heads
    x = ln(h)  # (batch, tokens, width)
    probe = head.probe.expand(h.shape[0], -1, -1)  # (batch, 1, width)
    attn_out, probs = mha(probe, x, x, need_weights=True, average_attn_weights=False)  # (b, 1, w), (b, K, 1, t)
    sigma = _layer_norm_scale(h, ln)  # (batch, tokens)
    weights = probs[:, :, 0].float() / sigma.unsqueeze(1)  # (batch, K, tokens)
    w_v = mha.in_proj_weight[2 * width:].float()  # (width, width): rows of head k are k*hd .. (k+1)*hd
    b_v = mha.in_proj_bias[2 * width:].float() if mha.in_proj_bias is not None else torch.zeros(width, device=h.device)
    w_out = mha.out_proj.weight.float()  # (E, width)
    b_out = mha.out_proj.bias.float() if mha.out_proj.bias is not None else torch.zeros(w_out.shape[0], device=h.device)
    constant = w_out @ (w_v @ beta + b_v) + b_out  # the probabilities sum to 1: beta and the biases pass whole
    mlp = head.mlp(head.layernorm(attn_out))  # (batch, 1, E)
    embedding = (attn_out + mlp)[:, 0].float()
    return Readout(weights, gamma, w_v.view(k_heads, hd, width), w_out.view(-1, k_heads, hd), constant,
                   mlp[:, 0].float(), embedding)


# --------------------------------------------------------------------------------------------------
# The decomposition of a batch, from the engine's unablated pass.


class Decomposer:
    """What decomposing a run's batches needs that is the same for every batch: the model, the run's
    ablations (for their direct effects) and dataset means, the prompts and the logit scale.

    ``vectors``: the dtype of the vectors handed on for the store (float32 | float16 | none)."""

    def __init__(self, model: nn.Module, ablations: list[Ablation], means: Means | None, text_norm: torch.Tensor,
                 scale: LogitScale, vectors: str = "float32") -> None:
        self.model = model
        self.layers = vision_layers(model)
        self.cls = has_cls(model)
        self.rows = 1 if self.cls else None  # the output rows: CLIP's CLS token, or every token
        self.n_heads = n_heads_of(model)
        self.components = model_components(model)
        self.means = means
        self.text_norm = text_norm.float()
        self.scale = scale
        self.vectors = vectors
        self.vector_dtype = None if vectors == "none" else VECTOR_DTYPES[vectors]
        self.ablations = [a for a in ablations if a.kind != BASELINE]
        self.direct_ids = direct_ids(ablations)
        n = len(self.layers)
        # Each (layer, mode) an ablation changes is recomputed once, whatever number of ablations share it.
        self.changed: list[list[tuple[int, LayerMode]]] = [
            [(depth, mode) for depth, mode in enumerate(a.modes(n), start=1) if mode != NORMAL] for a in self.ablations]
        self.needs_input = {depth for changes in self.changed for depth, _ in changes}
        self._engine: SweepEngine | None = None

    def decomposed(self, tensors: dict[str, torch.Tensor]) -> Decomposed:
        """A batch's tensors as compute.scoring.score_batch takes them."""
        return Decomposed(tensors, self.direct_ids, self.vectors)

    def tap(self) -> BatchTap:
        """A tap for one batch's pass through compute.engine.SweepEngine.embeddings; its ``result`` afterwards."""
        return BatchTap(self)

    @torch.inference_mode()
    def batch(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decomposition of a batch on its own unablated pass (no ablated path computed)."""
        if self._engine is None:
            self._engine = SweepEngine(self.model, [Ablation(BASELINE)], self.means)
        tap = self.tap()
        self._engine.embeddings(pixel_values, tap)
        return tap.result

    @torch.inference_mode()
    def finish(self, tap: BatchTap, h: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything of one batch from what its tap saw (RESULT_FIELDS, module docstring)."""
        ro = readout(self.model, h)
        b = h.shape[0]
        rows = tap.h0.shape[1]
        parts = [ro.joint(tap.h0.unsqueeze(1))]  # (batch, 1, E)
        for depth, layer in enumerate(self.layers, start=1):
            seen = tap.layers[depth]
            out_proj = layer.self_attn.out_proj
            heads = seen["heads"].reshape(b, rows, self.n_heads, -1)  # (batch, rows, heads, head_dim)
            parts.append(ro.joint_heads(heads, out_proj.weight))  # (batch, heads, E)
            bias = out_proj.bias.float() if out_proj.bias is not None else torch.zeros(h.shape[-1], device=h.device)
            per_layer = torch.stack([bias.expand(b, rows, -1), seen["mlp"].float()], dim=1)  # (batch, 2, rows, width)
            parts.append(ro.joint(per_layer))
        parts.append(ro.constant.expand(b, 1, -1))
        if ro.pooling_mlp is not None:
            parts.append(ro.pooling_mlp.unsqueeze(1))
        terms = torch.cat(parts, dim=1)  # (batch, C, E)
        norm = embedding.float().norm(dim=-1)  # (batch,)
        vectors = terms / norm.view(-1, 1, 1)
        out = {"norm": norm, "vectors": vectors, "shares": shares_of(vectors, self.text_norm, self.scale)}

        deltas: dict[tuple[int, LayerMode], torch.Tensor] = {}
        for depth, mode in {change for changes in self.changed for change in changes}:
            seen = tap.layers[depth]
            attn = self.layers[depth - 1].self_attn
            normal = attn.out_proj(seen["heads"])  # the layer's attention output at the output rows
            changed = replacement(mode, depth, self.means, self.cls)(attn, seen["x"], self.rows)  # (batch, rows, width)
            deltas[(depth, mode)] = ro.joint((changed.float() - normal.float()).unsqueeze(1))[:, 0]  # (batch, E)
        e = vectors.shape[-1]
        direct = torch.zeros(b, len(self.ablations), e, device=vectors.device)
        for i, changes in enumerate(self.changed):
            for change in changes:
                direct[:, i] += deltas[change]
        direct = direct / norm.view(-1, 1, 1)
        out["direct_vectors"] = direct
        out["direct"] = shares_of(direct, self.text_norm, self.scale)
        if self.vector_dtype is None:
            del out["vectors"], out["direct_vectors"]
        else:
            out["vectors"] = out["vectors"].to(self.vector_dtype)
            out["direct_vectors"] = out["direct_vectors"].to(self.vector_dtype)
        return out


class BatchTap:
    """Shown one batch's unablated pass by the engine (compute.engine.Tap); keeps what the decomposition needs
    at the output rows, and computes it at the pass's end (``result``)."""

    def __init__(self, decomposer: Decomposer) -> None:
        self.d = decomposer
        self.h0: torch.Tensor | None = None
        self.layers: dict[int, dict[str, torch.Tensor]] = {}
        self.result: dict[str, torch.Tensor] = {}

    def begin(self, h: torch.Tensor) -> None:
        self.h0 = h[:, : self.d.rows]  # (batch, rows, width)

    def layer(self, depth: int, x: torch.Tensor, heads: torch.Tensor, mlp: torch.Tensor) -> None:
        rows = self.d.rows
        seen = {"heads": heads[:, :rows], "mlp": mlp[:, :rows]}
        if depth in self.d.needs_input:
            seen["x"] = x  # every token: a kind may read them all (uniform, knockout)
        self.layers[depth] = seen

    def end(self, h: torch.Tensor, embedding: torch.Tensor) -> None:
        self.result = self.d.finish(self, h, embedding)
        self.layers.clear()  # the captured states are not needed any more


# --------------------------------------------------------------------------------------------------
# Per-token shares, on demand (the Image page).


def _probabilities(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unablated attention probabilities: x (batch, tokens, width) -> (batch, heads, tokens, tokens)."""
    b, t, _ = x.shape
    n_heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(b, t, n_heads, hd).transpose(1, 2).float()
    k = attn.k_proj(x).view(b, t, n_heads, hd).transpose(1, 2).float()
    return ((q @ k.transpose(-1, -2)) * attn.scale).softmax(dim=-1)


@torch.inference_mode()
def token_shares(model: nn.Module, pixel_values: torch.Tensor, text_norm: torch.Tensor, scale: LogitScale | float,
                 layer: int, head: int | None = None, by: str = "read", component: str = "head") -> torch.Tensor:
    """One component's share of each prompt's logit, split over tokens, on the unablated model.

    component "head": head ``head`` of ``layer`` (None: every head of the layer, out_proj's bias left out);
    ``by`` "read": over the tokens it reads (probability x value: the per-token terms of its output), or
    "written": over the positions its output sits at (what the readout reads; on CLIP the CLS token alone).
    component "mlp": the layer's MLP over the positions it writes (by "written" only). pixel_values: (batch,
    3, size, size); text_norm: (P, E) -> (batch, tokens, P), float32; summed over tokens, the component's share.
    """
    if by not in ("read", "written") or component not in ("head", "mlp") or (component == "mlp" and by == "read"):
        raise ValueError(f"no per-token split of {component} by {by!r}")
    blocks = vision_layers(model)
    h = tokens_in(model, pixel_values)  # (batch, tokens, width)
    for depth, block in enumerate(blocks, start=1):
        x = block.layer_norm1(h)
        a = block.self_attn(hidden_states=x)[0]
        if depth == layer:
            attn = block.self_attn
            b, t, _ = x.shape
            n_heads, hd = attn.num_heads, attn.head_dim
            probs = _probabilities(attn, x)  # (batch, heads, tokens, tokens)
            values = attn.v_proj(x).view(b, t, n_heads, hd).transpose(1, 2).float()  # (batch, heads, tokens, hd)
        h = h + a
        m = block.mlp(block.layer_norm2(h))
        if depth == layer:
            mlp_out = m.float()
        h = h + m
    ro = readout(model, h)
    rows = 1 if has_cls(model) else h.shape[1]
    w = ro.weights  # (batch, K, rows)
    if component == "mlp":
        terms = ro._out(torch.einsum("bkt,btd->btkd", w, mlp_out[:, :rows]))  # (batch, rows, E)
    else:
        chosen = list(range(n_heads)) if head is None else [head]
        p, v = probs[:, chosen, :rows], values[:, chosen]  # (batch, H', rows, tokens), (batch, H', tokens, hd)
        if by == "read":  # the output rows read token j with weight p[t, j]; the readout weights them by w[k, t]
            m_ = torch.einsum("bkt,bhtj,bhje->bkjhe", w, p, v)  # (batch, K, tokens, H', hd)
        else:
            o = p @ v  # (batch, H', rows, hd)
            m_ = torch.einsum("bkt,bhte->bkthe", w, o)  # (batch, K, rows, H', hd)
        w_o = blocks[layer - 1].self_attn.out_proj.weight.float().view(-1, n_heads, hd)[:, chosen]  # (width, H', hd)
        u = torch.einsum("bkjhe,dhe->bjkd", m_, w_o)  # (batch, tokens or rows, K, width)
        terms = ro._out(u)  # (batch, tokens or rows, E)
    s = scale.scale if isinstance(scale, LogitScale) else float(scale)
    shares = s * (terms @ text_norm.float().T) / ro.embedding.norm(dim=-1).view(-1, 1, 1)  # (batch, *, P)
    if shares.shape[1] < h.shape[1]:  # written at the output rows only: the other tokens hold none of it
        full = shares.new_zeros(shares.shape[0], h.shape[1], shares.shape[2])
        full[:, : shares.shape[1]] = shares
        shares = full
    return shares
