"""Heads and token flow: every registered kind (compute.kinds.KINDS), at layer and head grain and with
every target it takes, through the engine, held to the plain method (patch the modules, rerun the whole
model); the built-in kinds also to an independent formulation (attention probabilities replaced inside
transformers' own eager attention); every kind's probabilities to its outputs and to the attention maps;
the heads a head-level ablation leaves alone to a normal layer, bit for bit in bfloat16; and a toy kind,
registered in one place, through all of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers.models.clip.modeling_clip as modeling_clip

from compute.ablations import Ablation, mean_needs, parse_ablation, sweep, sweeps, vision_layers
from compute.attention_maps import attention_maps, patch_grid, query_probabilities
from compute.engine import (
    SweepEngine,
    attention_means,
    build_tree,
    cls_query_attention,
    count_nodes,
    plain_batch,
)
from compute.errors import InputError
from compute.kinds import (
    HEAD_MEAN_STAT,
    KINDS,
    MEAN_STAT,
    NORMAL,
    Kind,
    LayerMode,
    head_attention,
    kind_targets,
    replacement,
)

N_LAYERS, N_HEADS = 12, 4  # the tiny_clip fixture: 12 layers, width 32, 4 heads, 17 tokens
MIXED = ["identity:5-8/h0,h2", "knockout:3-4/patches>cls/h1", "mean:2/h1", "knockout:9-12/patches>cls",
         "zero:5/h0-3", "zero:5", "mean:3", "mean:1-12/h3", "uniform:12/h1", "knockout:12/cls>patches/h0,h2",
         "identity:11-12/h2", "uniform:1,7/h0,h3"]
INPUT_IDS = torch.tensor([[2, 4, 5, 6, 7, 3], [2, 4, 5, 6, 8, 3], [2, 4, 5, 6, 9, 3], [2, 4, 5, 6, 10, 3]])


@pytest.fixture(scope="module")
def model(tiny_clip):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip).eval()


@pytest.fixture(scope="module")
def eager_model(tiny_clip):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(3)
    return torch.randn(5, 3, 32, 32)  # 5 images


# Every (kind, target) of the registry: a tower with a CLS token, and one without (SigLIP's semantics).
FORMS = kind_targets()
FORMS_NO_CLS = kind_targets(cls=False)


def form_id(kind: str, target: str = "", cls: bool = True) -> str:
    return "/".join(filter(None, [kind, target, "" if cls else "no-cls"]))


def spelled(kind: str, layers: str, target: str = "", heads: str = "") -> str:
    """``KIND:LAYERS[/TARGET][/HEADS]``."""
    return "/".join(filter(None, [f"{kind}:{layers}", target, heads]))


# Forms beyond single layers and heads: the CLS-only tail (9-12), every layer, lists, head sets, every head.
SHAPES = [("9-12", ""), ("1-12", ""), ("1,5,9", ""), ("5-8", "h0,h2"), ("3-4", "h1"), ("1-12", "h3"), ("7", "h0-3"),
          ("1,7", "h0,h3")]


def every_layer_and_head(kind: str, target: str) -> list[Ablation]:
    """Baseline, ``kind`` on every single layer and on every head of every layer, and SHAPES."""
    return [Ablation("baseline"),
            *[Ablation(kind, (layer,), (), target) for layer in range(1, N_LAYERS + 1)],
            *[Ablation(kind, (layer,), (head,), target) for layer in range(1, N_LAYERS + 1) for head in range(N_HEADS)],
            *[parse_ablation(spelled(kind, layers, target, heads), N_LAYERS, N_HEADS) for layers, heads in SHAPES]]


def reads_cls_row_unchanged(ablation: Ablation) -> bool:
    """The ablation changes the last layer alone and blocks no edge of the CLS query there (written out below,
    apart from compute.ablations): the CLS token, all the output reads, cannot see it."""
    return (ablation.layers == (N_LAYERS,) and bool(ablation.target)
            and not blocked_edges(ablation.target, 17)[0].any())


def engine_logits(model, ablations, means, batches):
    """{ablation: (images, prompts)} through the engine, one batch at a time as the runner does."""
    engine = SweepEngine(model, ablations, means)
    with torch.inference_mode():
        text = model.get_text_features(input_ids=INPUT_IDS).pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
        scale = model.logit_scale.exp()
        out: dict[Ablation, list[torch.Tensor]] = {}
        for px in batches:
            for a, emb in engine.embeddings(px).items():
                out.setdefault(a, []).append(scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.T)
    return {a: torch.cat(v) for a, v in out.items()}


@pytest.mark.parametrize("kind, target", FORMS, ids=[form_id(*f) for f in FORMS])
def test_engine_matches_the_plain_method_for_every_layer_and_head_of_every_kind(model, pixels, kind, target):
    ablations = every_layer_and_head(kind, target)
    assert len(ablations) == 1 + N_LAYERS * (1 + N_HEADS) + len(SHAPES)
    batches = [pixels[:3], pixels[3:]]
    means = attention_means(model, batches, mean_needs(ablations))
    if KINDS[kind].needs_mean:  # the dataset statistics of every layer, for whole layers and for heads
        assert {name: set(layers) for name, layers in means.items()} == {
            MEAN_STAT: set(range(1, N_LAYERS + 1)), HEAD_MEAN_STAT: set(range(1, N_LAYERS + 1))}
    else:
        assert means == {}

    fast = engine_logits(model, ablations, means, batches)
    _, plain = plain_batch(model, ablations, pixels, {"input_ids": INPUT_IDS}, means)  # (images, A, prompts)
    assert plain.shape == (5, len(ablations), 4)
    worst = {a.label: (fast[a] - plain[:, i]).abs().max().item() for i, a in enumerate(ablations)}
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])

    # Not vacuous: every ablation moves the logits, except those that only change what patch queries read in
    # the last layer, which the CLS token never sees: those are baseline up to float32 rounding (logits near 1
    # here, one ulp 1.2e-7; seen: 1.1e-6 against a smallest real move of 1.1e-3).
    base = fast[ablations[0]]
    for a in ablations[1:]:
        moved = (fast[a] - base).abs().max().item()
        assert (moved < 1e-5) if reads_cls_row_unchanged(a) else (moved > 1e-4), (a.label, moved)


def test_engine_matches_the_plain_method_for_kinds_mixed_in_one_tree(model, pixels):
    ablations = [Ablation("baseline"), *sweep("flow", N_LAYERS)[1:], *[parse_ablation(t, N_LAYERS, N_HEADS) for t in MIXED]]
    batches = [pixels[:3], pixels[3:]]
    means = attention_means(model, batches, mean_needs(ablations))
    assert set(means[HEAD_MEAN_STAT]) == set(range(1, N_LAYERS + 1)) and set(means[MEAN_STAT]) == {3}
    fast = engine_logits(model, ablations, means, batches)
    _, plain = plain_batch(model, ablations, pixels, {"input_ids": INPUT_IDS}, means)
    worst = {a.label: (fast[a] - plain[:, i]).abs().max().item() for i, a in enumerate(ablations)}
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])
    base = fast[ablations[0]]
    unseen = {"knockout:12/cls>patches", "knockout:12/patches>patches", "knockout:12/cls>patches/h0,h2"}
    for a in ablations[1:]:
        moved = (fast[a] - base).abs().max().item()
        assert (moved < 1e-5) if a.label in unseen else (moved > 1e-4), (a.label, moved)


# --------------------------------------------------------------------------------------------------
# The independent formulation: transformers' eager attention with its probabilities replaced.


def blocked_edges(target: str, tokens: int) -> torch.Tensor:
    """The knockout targets written out edge by edge, apart from compute.ablations."""
    blocked = torch.zeros(tokens, tokens, dtype=torch.bool)
    for query in range(tokens):
        for key in range(tokens):
            cls_query, cls_key = query == 0, key == 0
            if target == "patches>cls":
                blocked[query, key] = cls_query and not cls_key
            elif target == "cls>patches":
                blocked[query, key] = not cls_query and cls_key
            elif target == "patches>patches":
                blocked[query, key] = not cls_query and not cls_key and query != key
    return blocked


class EagerPatch:
    """Replace ``eager_attention_forward`` so chosen vision layers' attention probabilities (or, for mean,
    the head outputs) are what an ablation says, inside the model's own attention code."""

    def __init__(self, model):
        self.model = model
        self.plan: dict[int, tuple[str, list[int], str]] = {}  # id(attention module) -> (kind, heads, target)
        self.head_means: dict[int, torch.Tensor] = {}  # id(module) -> (heads, tokens, head_dim)
        self.captured: dict[int, list[torch.Tensor]] = {}  # id(module) -> head outputs of unablated passes
        self.original = modeling_clip.eager_attention_forward

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = self.original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                     **kwargs)
        if id(module) in self.captured:
            self.captured[id(module)].append(out.detach().clone())  # (batch, tokens, heads, head_dim)
        if id(module) not in self.plan:
            return out, weights
        kind, heads, target = self.plan[id(module)]
        tokens = query.shape[2]
        weights = weights.clone()  # (batch, heads, tokens, tokens)
        for h in heads:
            if kind == "identity":
                weights[:, h] = torch.eye(tokens)
            elif kind == "zero":
                weights[:, h] = 0.0
            elif kind == "uniform":
                weights[:, h] = 1.0 / tokens
            elif kind == "knockout":
                scores = query[:, h] @ key[:, h].transpose(-1, -2) * scaling
                weights[:, h] = scores.masked_fill(blocked_edges(target, tokens), float("-inf")).softmax(-1)
            elif kind == "first":  # the toy kind registered below: every query reads token 0 alone
                weights[:, h] = 0.0
                weights[:, h, :, 0] = 1.0
        out = (weights @ value).transpose(1, 2).contiguous()  # (batch, tokens, heads, head_dim)
        if kind == "mean":
            for h in heads:
                out[:, :, h] = self.head_means[id(module)][h]
        return out, weights

    def __enter__(self):
        modeling_clip.eager_attention_forward = self
        return self

    def __exit__(self, *exc):
        modeling_clip.eager_attention_forward = self.original

    def attn(self, layer: int):
        return vision_layers(self.model)[layer - 1].self_attn

    def set(self, ablation: Ablation) -> None:
        heads = list(ablation.heads) or list(range(N_HEADS))
        self.plan = {id(self.attn(layer)): (ablation.kind, heads, ablation.target) for layer in ablation.layers}


EAGER_CASES = ["identity:5-8/h0,h2", "knockout:3-4/patches>cls/h1", "mean:2/h1", "zero:7/h1,h3", "uniform:4/h2",
               "knockout:9-12/patches>cls", "knockout:6/cls>patches/h0", "knockout:2/patches>patches",
               "knockout:1-12/patches>patches/h3", "identity:12/h3", "zero:5/h0-3", "identity:3", "uniform:10",
               "mean:9-10/h0,h2"]


def test_engine_matches_probabilities_replaced_inside_transformers_eager_attention(model, eager_model, pixels):
    ablations = [parse_ablation(t, N_LAYERS, N_HEADS) for t in EAGER_CASES]
    means = attention_means(model, [pixels], mean_needs(ablations))
    fast = engine_logits(model, ablations, means, [pixels])
    with EagerPatch(eager_model) as patch, torch.inference_mode():
        # The heads' dataset means, from the eager attention's own outputs on an unablated pass.
        mean_layers = means[HEAD_MEAN_STAT]
        patch.captured = {id(patch.attn(layer)): [] for layer in mean_layers}
        eager_model.get_image_features(pixel_values=pixels)
        for layer in mean_layers:
            outs = torch.cat(patch.captured[id(patch.attn(layer))])  # (images, tokens, heads, head_dim)
            reference = outs.mean(dim=0).transpose(0, 1)  # (heads, tokens, head_dim)
            patch.head_means[id(patch.attn(layer))] = reference
            ours = means[HEAD_MEAN_STAT][layer].view(17, N_HEADS, -1).transpose(0, 1)
            torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
        patch.captured = {}
        for a in ablations:
            patch.set(a)
            eager = eager_model(pixel_values=pixels, input_ids=INPUT_IDS).logits_per_image
            assert (fast[a] - eager).abs().max() < 1e-4, a.label
        patch.plan = {}
        baseline = eager_model(pixel_values=pixels, input_ids=INPUT_IDS).logits_per_image
    assert all((fast[a] - baseline).abs().max() > 1e-5 for a in ablations)  # each case changed something
    assert modeling_clip.eager_attention_forward is patch.original


# --------------------------------------------------------------------------------------------------
# The prefix tree at head grain.


def test_heads_sweep_shares_prefixes_and_counts_its_layer_evaluations(model, pixels):
    # ViT-B/16's shape: 145 ablations; per batch the plain method runs 145 x 12 layers.
    assert count_nodes(build_tree(sweep("heads", 12, 12), 12)) == 12 + 12 * sum(range(1, 13))  # 948, not 1,740
    assert count_nodes(build_tree(sweep("flow", 12), 12)) == 12 + 3 * sum(range(1, 13))
    # The engine evaluates exactly the tree's nodes (counted here by the layer norm each layer opens with).
    ablations = sweeps(["heads", "flow"], N_LAYERS, N_HEADS)
    engine = SweepEngine(model, ablations)
    calls = []
    handles = [layer.layer_norm1.register_forward_hook(lambda *_: calls.append(1)) for layer in vision_layers(model)]
    try:
        engine.embeddings(pixels[:2])
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == engine.layer_evaluations == count_nodes(build_tree(ablations, N_LAYERS))


def test_the_tree_keys_on_heads_and_target_and_keeps_cls_only_where_exact():
    a, b, c = (parse_ablation(t, 12, 4) for t in ("identity:3/h1", "identity:3/h2", "identity:3"))
    tree = build_tree([a, b, c], 12)
    third = tree.children[next(iter(tree.children))].children[next(iter(tree.children))]
    assert len(third.children) == 3  # one branch per (kind, heads, target) at layer 3
    # A head-level layer reads every token (its other heads run normally): the layers above stay full.
    tree = build_tree([parse_ablation("identity:12/h1", 12, 4)], 12)
    node = tree
    for _ in range(11):
        node = next(iter(node.children.values()))
    assert node.depth == 11 and node.full_out
    # A knocked-out patches>cls layer lets the CLS token read itself alone: from layer 9 on only CLS is kept.
    tree = build_tree([parse_ablation("knockout:9-12/patches>cls", 12, 4)], 12)
    node = tree
    for _ in range(8):
        node = next(iter(node.children.values()))
    assert node.depth == 8 and not node.full_out


# --------------------------------------------------------------------------------------------------
# Attention maps, and what every kind's probabilities mean.


def test_baseline_maps_are_transformers_own_attention_probabilities(model, eager_model, pixels):
    maps = attention_maps(model, pixels[:2])  # (images, layers, heads, tokens)
    assert maps.shape == (2, N_LAYERS, N_HEADS, 17)
    with torch.inference_mode():
        out = eager_model.vision_model(pixel_values=pixels[:2], output_attentions=True)
    reference = torch.stack([a[:, :, 0] for a in out.attentions], dim=1).numpy()  # CLS rows
    assert abs(maps - reference).max() < 1e-5
    assert patch_grid(maps).shape == (2, N_LAYERS, N_HEADS, 4, 4)


@pytest.mark.parametrize("layer", [1, 6, 12])
def test_identity_map_at_its_layer_is_the_identity_pattern(model, pixels, layer):
    base = attention_maps(model, pixels[:2])
    maps = attention_maps(model, pixels[:2], parse_ablation(f"identity:{layer}", N_LAYERS, N_HEADS))
    at = maps[:, layer - 1]  # (images, heads, tokens)
    assert (at[:, :, 0] == 1).all() and (at[:, :, 1:] == 0).all()  # CLS attends only to itself
    assert np.allclose(maps[:, : layer - 1], base[:, : layer - 1], rtol=0, atol=1e-6)  # layers below untouched
    if layer < N_LAYERS:
        assert abs(maps[:, layer:] - base[:, layer:]).max() > 1e-4  # what comes after sees the change


def test_maps_under_head_level_ablations_and_knockout(model, pixels):
    base = attention_maps(model, pixels[:2])
    one_head = attention_maps(model, pixels[:2], parse_ablation("identity:4/h1", N_LAYERS, N_HEADS))[:, 3]
    assert (one_head[:, 1, 0] == 1).all() and (one_head[:, 1, 1:] == 0).all()
    assert abs(one_head[:, [0, 2, 3]] - base[:, 3, [0, 2, 3]]).max() < 1e-6  # other heads run normally
    knocked = attention_maps(model, pixels[:2], parse_ablation("knockout:5/patches>cls", N_LAYERS, N_HEADS))[:, 4]
    assert (knocked[:, :, 1:] == 0).all() and abs(knocked[:, :, 0] - 1).max() < 1e-6
    # Patch queries losing the CLS key change nothing in the CLS row of that layer.
    other = attention_maps(model, pixels[:2], parse_ablation("knockout:5/cls>patches", N_LAYERS, N_HEADS))[:, 4]
    assert abs(other - base[:, 4]).max() < 1e-6
    uniform = attention_maps(model, pixels[:2], parse_ablation("uniform:2/h3", N_LAYERS, N_HEADS))[:, 1]
    assert abs(uniform[:, 3] - 1 / 17).max() < 1e-7
    assert abs(uniform.sum(axis=-1) - 1).max() < 1e-5


def layer_input(model, pixels, layer: int) -> torch.Tensor:
    """The residual stream entering vision layer ``layer`` on the unablated model, as the model's own forward
    hands it over. -> (batch, tokens, width)."""
    from compute.towers import image_inputs

    seen = []

    def grab(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = vision_layers(model)[layer - 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            model.vision_model(**image_inputs(model, pixels))
    finally:
        handle.remove()
    return seen[0]


def scores_of(attn, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """The scaled dot products of one layer's heads, written out: x (batch, tokens, width) -> (batch, heads,
    rows, tokens) float32."""
    b, t, _ = x.shape
    r = rows or t
    q = (x[:, :r] @ attn.q_proj.weight.T + attn.q_proj.bias).view(b, r, attn.num_heads, -1).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T + attn.k_proj.bias).view(b, t, attn.num_heads, -1).transpose(1, 2)
    return (q @ k.transpose(-1, -2)).float() * attn.head_dim ** -0.5


def values_of(attn, x: torch.Tensor) -> torch.Tensor:
    """x (batch, tokens, width) -> the heads' values (batch, heads, tokens, head_dim)."""
    b, t, _ = x.shape
    return (x @ attn.v_proj.weight.T + attn.v_proj.bias).view(b, t, attn.num_heads, -1).transpose(1, 2)


def heads_in(attn, run) -> torch.Tensor:
    """What out_proj reads while ``run()`` runs the block: the heads' outputs, (batch, rows, heads, head_dim)."""
    seen = []
    handle = attn.out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            run()
    finally:
        handle.remove()
    (o,) = seen
    return o.view(*o.shape[:2], attn.num_heads, -1)


@pytest.fixture(scope="module")
def siglip(tiny_siglip):
    from compute.models import load_clip

    return load_clip(str(tiny_siglip), "cpu").model  # 6 layers, 4 heads, 16 tokens, no CLS


MAP_CASES = [("clip", *f) for f in FORMS] + [("siglip", *f) for f in FORMS_NO_CLS]


@pytest.mark.parametrize("heads", ["", "h1,h3"])
@pytest.mark.parametrize("tower, kind, target", MAP_CASES,
                         ids=[f"{tower}-{form_id(k, t)}" for tower, k, t in MAP_CASES])
def test_maps_show_every_kinds_probabilities_at_its_layer_and_run_the_rest_as_usual(model, siglip, pixels, tower,
                                                                                    kind, target, heads):
    net = model if tower == "clip" else siglip
    cls, layer = tower == "clip", 3
    ablation = parse_ablation(spelled(kind, str(layer), target, heads), None, None, cls)
    means = attention_means(net, [pixels[:2]], mean_needs([ablation]))
    base = attention_maps(net, pixels[:2])  # (images, layers[+1], heads, tokens)
    maps = attention_maps(net, pixels[:2], ablation, means)
    # At its layer: the chosen heads' probabilities are the kind's, from the scores the test computes on the
    # unablated input; the other heads' are the normal softmax.
    attn = vision_layers(net)[layer - 1].self_attn
    with torch.inference_mode():
        scores = scores_of(attn, vision_layers(net)[layer - 1].layer_norm1(layer_input(net, pixels[:2], layer)))
    chosen = list(ablation.heads) or list(range(attn.num_heads))
    probs = scores.softmax(dim=-1)
    probs[:, chosen] = KINDS[kind].probabilities(scores[:, chosen], target, cls)
    expected = (probs[:, :, 0] if cls else probs.mean(dim=2)).numpy()  # the CLS row, or the mean over queries
    np.testing.assert_allclose(maps[:, layer - 1], expected, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(maps[:, : layer - 1], base[:, : layer - 1], atol=1e-6)  # layers below untouched
    others = [h for h in range(attn.num_heads) if h not in chosen]
    np.testing.assert_allclose(maps[:, layer - 1, others], base[:, layer - 1, others], atol=1e-6)
    # What comes after sees the change. The random model's attention is near uniform (about 1/17 each), so a
    # uniform layer moves later maps by only ~3e-5: far above float32 rounding (~1e-8 here), below 1e-4.
    assert np.abs(maps[:, layer:] - base[:, layer:]).max() > 1e-6


@pytest.mark.parametrize("rows", [None, 1])
@pytest.mark.parametrize("kind, target, cls", [(*f, True) for f in FORMS] + [(*f, False) for f in FORMS_NO_CLS],
                         ids=[form_id(*f) for f in FORMS] + [form_id(*f, cls=False) for f in FORMS_NO_CLS])
def test_every_kinds_probabilities_are_what_its_heads_compute(model, kind, target, cls, rows):
    """The maps show a kind's probabilities; its heads must compute exactly probabilities @ values (a kind
    that replaces the output by something else says so with NaN), and the heads left alone the softmax."""
    attn = vision_layers(model)[4].self_attn
    torch.manual_seed(0)
    x, head_mean = torch.randn(3, 17, 32), torch.randn(17, 32)
    chosen, others = [1, 3], [0, 2]
    got = heads_in(attn, lambda: head_attention(attn, x, rows, kind=kind, heads=tuple(chosen), target=target,
                                                head_mean=head_mean, cls=cls)).transpose(1, 2)  # (b, heads, rows, hd)
    with torch.inference_mode():
        scores, v = scores_of(attn, x, rows), values_of(attn, x)
        probs = KINDS[kind].probabilities(scores[:, chosen], target, cls)  # (3, 2, rows, 17)
        torch.testing.assert_close(got[:, others], scores[:, others].softmax(-1) @ v[:, others], atol=1e-6, rtol=1e-5)
    assert probs.shape == scores[:, chosen].shape
    if probs.isnan().any():
        assert probs.isnan().all()  # probabilities for every edge, or none
    else:
        assert ((probs >= 0) & (probs.sum(-1, keepdim=True) <= 1 + 1e-6)).all()
        torch.testing.assert_close(got[:, chosen], probs @ v[:, chosen], atol=1e-6, rtol=1e-5)


CLS_LOCAL = [f for f in FORMS if LayerMode(f[0], (), f[1]).cls_local]  # the others keep every token


@pytest.mark.parametrize("kind, target", CLS_LOCAL, ids=[form_id(*f) for f in CLS_LOCAL])
def test_a_kind_said_to_be_cls_local_gives_the_cls_token_from_its_input_alone(model, kind, target):
    """The engine computes a CLS-local layer on the CLS token only: that must be exact."""
    mode = LayerMode(kind, (), target)
    attn = vision_layers(model)[2].self_attn
    torch.manual_seed(1)
    x = torch.randn(3, 17, 32)
    means = {MEAN_STAT: {3: torch.randn(17, 32)}, HEAD_MEAN_STAT: {3: torch.randn(17, 32)}}
    fn = replacement(mode, 3, means)
    with torch.inference_mode():
        full = fn(attn, x, None)[:, :1]
        alone = fn(attn, x[:, :1], None)
        other = x.clone()
        other[:, 1:] += torch.randn(3, 16, 32)  # change every other token
        changed = fn(attn, other, 1)
    torch.testing.assert_close(alone, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(changed, full, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# The heads a head-level ablation leaves alone run exactly as a normal layer runs them.


@pytest.fixture(scope="module")
def bf16_model(tiny_clip):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip).to(torch.bfloat16).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [None, 1])
@pytest.mark.parametrize("kind, target", FORMS, ids=[form_id(*f) for f in FORMS])
def test_heads_left_alone_equal_the_normal_layers_bit_for_bit(model, bf16_model, kind, target, rows, dtype):
    net = bf16_model if dtype == torch.bfloat16 else model
    attn = vision_layers(net)[5].self_attn
    torch.manual_seed(2)
    x = torch.randn(3, 17, 32).to(dtype)
    if rows is None:
        normal = heads_in(attn, lambda: attn(hidden_states=x))  # the model's own module
    else:
        normal = heads_in(attn, lambda: cls_query_attention(attn, x))  # the engine's normal layer for CLS alone
    ablated = heads_in(attn, lambda: head_attention(attn, x, rows, kind=kind, heads=(1,), target=target,
                                                    head_mean=torch.randn(17, 32).to(dtype)))
    assert ablated.dtype == dtype
    assert torch.equal(ablated[:, :, [0, 2, 3]], normal[:, :, [0, 2, 3]])
    if rows is None:
        assert not torch.equal(ablated[:, :, 1], normal[:, :, 1])  # head 1 did change


# --------------------------------------------------------------------------------------------------
# A toy kind registered in one place flows through the parser, the engine, the plain method and the maps.


def first_heads(v: torch.Tensor, rows: int) -> torch.Tensor:
    # v: (batch, chosen heads, tokens, head_dim): every query reads token 0's value alone.
    return v[:, :, :1].expand(-1, -1, rows, -1)


def first_layer(attn, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    # The whole block: out_proj of token 0's value, at every position.
    return attn.out_proj(attn.v_proj(x[:, :1])).expand(-1, rows or x.shape[1], -1)


def first_probabilities(scores: torch.Tensor, target: str, cls: bool) -> torch.Tensor:
    probs = torch.zeros_like(scores)
    probs[..., 0] = 1.0
    return probs


@pytest.fixture
def first_kind(monkeypatch):
    """The kind "first" (every head attends to token 0 alone), in the registry for one test only."""
    monkeypatch.setitem(KINDS, "first", Kind(heads=first_heads, layer=first_layer, probabilities=first_probabilities,
                                             cls_local=lambda target: True))
    return "first"


def test_a_toy_kind_registered_in_one_place_runs_everywhere(first_kind, model, eager_model, pixels):
    # The parser and the labels.
    a = parse_ablation("first: 7,5,6 / h2,h0", N_LAYERS, N_HEADS)
    assert (a.kind, a.layers, a.heads, a.label) == ("first", (5, 6, 7), (0, 2), "first:5-7/h0,h2")
    assert parse_ablation(a.label, N_LAYERS, N_HEADS) == a
    with pytest.raises(InputError, match="first takes no target"):
        parse_ablation("first:3/patches>cls", N_LAYERS, N_HEADS)
    with pytest.raises(InputError, match="known kinds are .*first"):
        parse_ablation("second:3")
    assert [x.label for x in sweep("heads", N_LAYERS, N_HEADS, kind="first")[1:3]] == ["first:1/h0", "first:1/h1"]
    assert ("first", "") in kind_targets() and ("first", "") in kind_targets(cls=False)

    # The engine against the plain method, over whole layers (9-12: the CLS-only tail), heads and head sets.
    texts = ["first:1", "first:6", "first:12", "first:9-12", "first:1,5,9", "first:2/h1", "first:12/h3",
             "first:5-8/h0,h2", "first:1-12/h3", "first:7/h0-3"]
    ablations = [Ablation("baseline"), *[parse_ablation(t, N_LAYERS, N_HEADS) for t in texts]]
    tree = build_tree(ablations, N_LAYERS)
    tail = tree
    for _ in range(8):
        tail = tail.children[NORMAL]
    assert not tail.children[LayerMode("first")].full_out  # its CLS-local layers run on the CLS token alone
    fast = engine_logits(model, ablations, {}, [pixels[:3], pixels[3:]])
    _, plain = plain_batch(model, ablations, pixels, {"input_ids": INPUT_IDS})
    for i, ablation in enumerate(ablations):
        assert (fast[ablation] - plain[:, i]).abs().max() < 1e-4, ablation.label
        if i:
            assert (fast[ablation] - fast[ablations[0]]).abs().max() > 1e-4, ablation.label  # not vacuous
    # ... and against transformers' eager attention with the probabilities written out here.
    with EagerPatch(eager_model) as patch, torch.inference_mode():
        for ablation in ablations[1:]:
            patch.set(ablation)
            eager = eager_model(pixel_values=pixels, input_ids=INPUT_IDS).logits_per_image
            assert (fast[ablation] - eager).abs().max() < 1e-4, ablation.label

    # The maps: at layer 6, head 1 reads token 0 alone, in every query's row; the other heads as usual.
    maps = attention_maps(model, pixels[:2], parse_ablation("first:6/h1", N_LAYERS, N_HEADS))
    base = attention_maps(model, pixels[:2])
    assert (maps[:, 5, 1, 0] == 1).all() and (maps[:, 5, 1, 1:] == 0).all()
    np.testing.assert_allclose(maps[:, 5, [0, 2, 3]], base[:, 5, [0, 2, 3]], atol=1e-6)
    attn = vision_layers(model)[5].self_attn
    with torch.inference_mode():
        x = vision_layers(model)[5].layer_norm1(layer_input(model, pixels[:2], 6))
        every_row = query_probabilities(attn, x, LayerMode("first", (1,)), 17)  # (images, heads, 17, 17)
        normal = scores_of(attn, x)[:, [0, 2, 3]].softmax(-1)
    one_hot = torch.zeros(17, 17)
    one_hot[:, 0] = 1
    assert torch.equal(every_row[:, 1], one_hot.expand(2, -1, -1))
    torch.testing.assert_close(every_row[:, [0, 2, 3]], normal, atol=1e-6, rtol=1e-5)


def test_the_toy_kind_is_gone_after_its_test():
    assert "first" not in KINDS
    with pytest.raises(InputError, match="unknown ablation kind 'first'"):
        parse_ablation("first:3")


# --------------------------------------------------------------------------------------------------
# A run end to end: the store records each ablation's parts; engine and plain method agree.

RUN_EXTRAS = ("mean:2/h1", "mean:3", "knockout:3-4/patches>cls/h1", "identity:5-8/h0,h2")


def _experiment(path, model, coco, db, sweep_list, extra=RUN_EXTRAS):
    from tools.synthetic import experiment_text

    text = experiment_text(model, coco, db, extra=extra, batch_size=3)
    path.write_text(text.replace('sweep = "paper"', f"sweep = {json.dumps(sweep_list)}"))
    return path


def test_a_heads_and_flow_run_records_every_part_and_matches_the_plain_method(tiny_clip, tmp_path):
    from helpers import sql

    from compute.__main__ import main
    from tools.synthetic import make_coco

    coco = make_coco(tmp_path / "coco", n=5)
    dbs = {}
    for method in ("engine", "plain"):
        dbs[method] = tmp_path / f"{method}.duckdb"
        exp = _experiment(tmp_path / f"{method}.toml", tiny_clip, coco, dbs[method], ["flow", "heads", "flow"])
        assert main(["run", str(exp), "--method", method, "--no-progress"]) == 0
    n_ablations = 1 + 36 + 48 + len(RUN_EXTRAS)
    rows = sql(dbs["engine"], "SELECT ablation_id, ablation, kind, layers, heads, target FROM ablation_t ORDER BY 1")
    assert len(rows) == n_ablations
    by_label = {r[1]: r[2:] for r in rows}
    assert by_label["baseline"] == ("baseline", [], [], None)
    assert by_label["knockout:1/patches>cls"] == ("knockout", [1], [], "patches>cls")
    assert by_label["identity:12/h3"] == ("identity", [12], [3], None)
    assert by_label["knockout:3-4/patches>cls/h1"] == ("knockout", [3, 4], [1], "patches>cls")
    assert by_label["identity:5-8/h0,h2"] == ("identity", [5, 6, 7, 8], [0, 2], None)
    assert [r[1] for r in rows[:3]] == ["baseline", "knockout:1/patches>cls", "knockout:1/cls>patches"]
    stats = sql(dbs["engine"], "SELECT name, layer, shape FROM stat_t ORDER BY ALL")
    assert stats == [("attention_head_mean", 2, [17, 32]), ("attention_mean", 3, [17, 32])]

    query = "SELECT image_id, ablation, prompt, logit FROM scores ORDER BY image_id, ablation, prompt"
    fast, plain = sql(dbs["engine"], query), sql(dbs["plain"], query)
    assert len(fast) == len(plain) == 5 * n_ablations * 4
    assert [r[:3] for r in fast] == [r[:3] for r in plain]
    assert max(abs(a[3] - b[3]) for a, b in zip(fast, plain, strict=True)) < 1e-4


@pytest.mark.parametrize("extra, message", [
    ("identity:3/h4", "ablation 'identity:3/h4' is out of range: head 4 does not exist (its layers have heads 0-3)"),
    ("knockout:13/patches>cls",
     "ablation 'knockout:13/patches>cls' is out of range: layer 13 does not exist (the vision tower has layers 1-12)"),
])
def test_a_head_the_model_lacks_is_one_line_exit_2_and_writes_nothing(tiny_clip, tiny_coco, tmp_path, capsys,
                                                                       extra, message):
    from compute.__main__ import main

    exp = _experiment(tmp_path / "bad.toml", tiny_clip, tiny_coco, tmp_path / "bad.duckdb", ["heads"], (extra,))
    assert main(["run", str(exp), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {message}"
    assert not (tmp_path / "bad.duckdb").exists()
