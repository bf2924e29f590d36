"""The fast sweep against the plain method: patch the modules, rerun the whole CLIP model."""

from __future__ import annotations

import pytest
import torch

from compute.ablations import dedupe, mean_needs, parse_ablation, patched, sweep, vision_layers
from compute.engine import SweepEngine, attention_means, build_tree, count_nodes, plain_batch
from compute.kinds import MEAN_STAT, NORMAL, LayerMode, kind_targets

# Whole layers of every registered kind with every target it takes: single layers, blocks, lists, every layer,
# and the tail of the tower (where CLS-local kinds run on the CLS token alone).
LAYER_SETS = ["5-8", "12", "3", "10-12", "1,12", "2,7", "1-12", "1,5,9", "11,12"]
EXTRAS = ["/".join(filter(None, [f"{kind}:{layers}", target])) for kind, target in kind_targets() for layers in LAYER_SETS]
# Knockouts that change only what patch queries read, in the last layer alone: the CLS token, all the output
# reads, cannot see them (they are held to the plain method all the same).
UNSEEN = {"knockout:12/cls>patches", "knockout:12/patches>patches"}


@pytest.fixture(scope="module")
def model(tiny_clip):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip).eval()


def hooked_means(model, pixel_batches, layers):
    """Reference dataset means via forward hooks on the unpatched model's attention modules."""
    sums, count, handles = {}, 0, []
    for layer in layers:
        def hook(module, args, output, layer=layer):
            sums[layer] = sums.get(layer, 0) + output[0].double().sum(dim=0)
        handles.append(vision_layers(model)[layer - 1].self_attn.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for px in pixel_batches:
                model.get_image_features(pixel_values=px)
                count += px.shape[0]
    finally:
        for h in handles:
            h.remove()
    return {layer: (s / count).float() for layer, s in sums.items()}


def test_engine_logits_match_the_plain_rerun_for_every_image_ablation_and_prompt(model):
    torch.manual_seed(1)
    ablations = dedupe(sweep("paper", 12) + [parse_ablation(t, 12) for t in EXTRAS])
    pixels = torch.randn(6, 3, 32, 32)  # 6 images
    input_ids = torch.tensor([[2, 4, 5, 6, 7, 3], [2, 4, 5, 6, 8, 3], [2, 4, 5, 6, 9, 3], [2, 4, 5, 6, 10, 3]])
    batches = [pixels[:4], pixels[4:]]
    means = {MEAN_STAT: hooked_means(model, batches, mean_needs(ablations)[MEAN_STAT])}

    # The engine's own means agree with the hook-based reference.
    engine_means = attention_means(model, batches, mean_needs(ablations))
    assert set(engine_means) == {MEAN_STAT}
    for layer in means[MEAN_STAT]:
        torch.testing.assert_close(engine_means[MEAN_STAT][layer], means[MEAN_STAT][layer], atol=1e-6, rtol=1e-5)

    engine = SweepEngine(model, ablations, engine_means)
    with torch.inference_mode():
        text = model.get_text_features(input_ids=input_ids).pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
        scale = model.logit_scale.exp()
        fast = {}
        for px in batches:  # two batches, as the runner does
            for a, emb in engine.embeddings(px).items():
                logits = scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.T
                fast.setdefault(a, []).append(logits)
        for a in ablations:
            with patched(model, a, means):
                plain = model(pixel_values=pixels, input_ids=input_ids).logits_per_image  # (images, prompts)
            got = torch.cat(fast[a])
            assert got.shape == (6, 4)
            assert (got - plain).abs().max() < 1e-4, a.label
    # The ablations differ from each other: the comparison is not vacuous.
    base = torch.cat(fast[ablations[0]])
    assert {a.label for a in ablations} >= UNSEEN | {"zero:5-8", "mean:12", "uniform:10-12", "identity:1,5,9"}
    for a in ablations[1:]:
        moved = (torch.cat(fast[a]) - base).abs().max().item()
        assert (moved < 1e-5) if a.label in UNSEEN else (moved > 1e-3), (a.label, moved)


def count_layer_calls(model, run):
    """How many times ``run()`` evaluates one of the vision tower's encoder layers."""
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in vision_layers(model)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def test_paper_sweep_needs_143_layer_evaluations_where_the_plain_method_needs_252(model):
    ablations = sweep("paper", 12)
    assert count_nodes(build_tree(ablations, 12)) == 143
    # The plain method really runs every layer of every ablation: 21 x 12.
    pixels, tokens = torch.randn(2, 3, 32, 32), {"input_ids": torch.tensor([[2, 4, 5, 3]])}
    assert count_layer_calls(model, lambda: plain_batch(model, ablations, pixels, tokens)) == 252
    # A lone baseline is one pass; singles share everything before their layer.
    assert count_nodes(build_tree(sweep("none", 12), 12)) == 12
    assert count_nodes(build_tree(sweep("singles", 12), 12)) == 12 + sum(range(1, 13))


def test_cls_only_layers_are_used_where_every_later_layer_is_tokenwise():
    tree = build_tree([parse_ablation("identity:1-12", 12), parse_ablation("uniform:11-12", 12)], 12)
    ident = tree.children[LayerMode("identity")]
    assert not ident.full_out  # identity at every layer: only the CLS token matters from layer 1
    normal = tree.children[NORMAL]
    assert normal.full_out  # the uniform path needs every token at layer 11
    node = normal
    for _ in range(9):
        node = node.children[NORMAL]
    assert node.depth == 10 and node.full_out
    last = node.children[LayerMode("uniform")].children[LayerMode("uniform")]
    assert last.depth == 12 and not last.full_out


def test_engine_is_deterministic_and_leaves_the_model_untouched(model):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        before = model.get_image_features(pixel_values=pixels).pooler_output.clone()
    engine = SweepEngine(model, sweep("paper", 12))
    a, b = engine.embeddings(pixels), engine.embeddings(pixels)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.inference_mode():
        after = model.get_image_features(pixel_values=pixels).pooler_output
    assert torch.equal(before, after)
    torch.testing.assert_close(a[sweep("none", 12)[0]], before, atol=1e-5, rtol=1e-5)


def test_a_float32_trunk_gives_float32s_unablated_pass_and_branches_from_its_states_in_bfloat16(tiny_clip):
    """Verified low precision (compute.precision) runs the engine with a float32 trunk: its unablated pass is
    the float32 engine's, bit for bit, and every ablation is the plain method on the bfloat16 copy with the
    float32 model's state entering its first ablated layer put in, rounded (transformers' own forward, patched,
    from that layer on): every kind and target, single layers, blocks and the tower's tail."""
    from compute.models import load_clip, with_dtype

    exact = load_clip(str(tiny_clip), "cpu")
    fast = with_dtype(exact, "bfloat16")
    heads = ["identity:3/h1", "zero:2/h0,h3", "mean:5/h2", "knockout:7/patches>cls/h1", "identity:12/h0"]
    ablations = dedupe(sweep("paper", 12) + [parse_ablation(t, 12) for t in EXTRAS + heads])
    torch.manual_seed(2)
    pixels = torch.randn(4, 3, 32, 32)
    means32 = attention_means(exact.model, [pixels], mean_needs(ablations))
    means16 = {name: {layer: m.bfloat16() for layer, m in per.items()} for name, per in means32.items()}
    got = SweepEngine(fast.model, ablations, means16, trunk=exact.model).embeddings(pixels)
    f32 = SweepEngine(exact.model, ablations, means32).embeddings(pixels)
    bf16 = SweepEngine(fast.model, ablations, means16).embeddings(pixels.bfloat16())  # no trunk: all bfloat16
    assert got[ablations[0]].dtype == torch.float32 and torch.equal(got[ablations[0]], f32[ablations[0]])
    assert not torch.equal(bf16[ablations[0]].float(), f32[ablations[0]])  # the copy does round
    with torch.inference_mode():
        states = exact.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    for a in ablations[1:]:
        first = min(a.layers)
        start = states[first - 1].bfloat16()  # (4, 17, 32): float32's state entering layer `first`, rounded

        def enter(_module, args, kwargs, h=start):
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        hook = vision_layers(fast.model)[first - 1].register_forward_pre_hook(enter, with_kwargs=True)
        try:
            with torch.inference_mode(), patched(fast.model, a, means16):
                plain = fast.model.get_image_features(pixel_values=pixels.bfloat16()).pooler_output.float()
        finally:
            hook.remove()
        assert (got[a].float() - plain).abs().max() < 1e-3, a.label  # bit for bit here; bfloat16's unit is 2^-8
        if first > 1:  # branching from bfloat16's own trunk instead comes out measurably elsewhere
            assert (bf16[a].float() - plain).abs().max() > 1e-3, a.label
