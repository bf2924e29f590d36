"""Beyond CLIP: SigLIP (SiglipModel), SigLIP 2 NaFlex (Siglip2Model) and an OpenCLIP-shaped CLIPModel, each
saved and reloaded from disk through compute.models.load_clip. The engine is held to the plain method (patch
the modules, rerun the whole model) for the paper sweep, the extras and head-level and knockout forms; the
plain method's baseline to the model's own logits_per_image fed by its own processor; the attention maps of
a tower without CLS to transformers' eager attention and a hand-written pooling head."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compute.ablations import Ablation, mean_needs, parse_ablation, patched, sweep, sweeps
from compute.attention_maps import attention_maps, patch_grid
from compute.engine import SweepEngine, attention_means, build_tree, plain_batch
from compute.errors import InputError
from compute.kinds import kind_targets
from compute.models import load_clip, pixel_values, seen_image
from compute.scoring import cosine_logits, logit_scale, text_embeddings, text_tokens
from compute.towers import (
    has_cls,
    image_inputs,
    n_heads_of,
    n_layers_of,
    patchify,
    pool,
    tokens_in,
    unpatchify,
)

TEXTS = ["a photo of a dog", "a photo of a cat", "a photo of a bird", "a red car on the floor"]


def extras(n: int, cls: bool) -> list[str]:
    """Every registered kind with every target the tower takes, at layer and head grain, for n layers."""
    shapes = [("2-4", ""), (f"1,{n}", ""), (f"1-{n}", ""), (f"{n - 1}-{n}", "h0,h3"), ("2", "h1")]
    return ["/".join(filter(None, [f"{kind}:{layers}", target, heads]))
            for kind, target in kind_targets(cls) for layers, heads in shapes]


def pictures(n: int, size=(40, 30), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module", params=["siglip", "siglip2", "openclip"])
def loaded(request, tiny_siglip, tiny_siglip2, tiny_openclip):
    path = {"siglip": tiny_siglip, "siglip2": tiny_siglip2, "openclip": tiny_openclip}[request.param]
    return load_clip(str(path), "cpu")


def test_each_family_loads_with_its_own_classes_and_float32_scalars(loaded):
    model = loaded.model
    expected = {"siglip": "SiglipModel", "siglip2": "Siglip2Model", "clip": "CLIPModel"}[loaded.family]
    assert type(model).__name__ == expected
    assert has_cls(loaded.model) == (loaded.family == "clip")
    assert loaded.logit_scale == pytest.approx(float(model.logit_scale.exp()))
    if loaded.family == "clip":
        assert model.config.vision_config.hidden_act == "gelu"  # OpenCLIP-shaped: exact GELU, not quick_gelu
        assert loaded.logit_bias == 0.0
    else:
        assert loaded.logit_bias == pytest.approx(float(model.logit_bias)) and abs(loaded.logit_bias) > 1


def test_engine_matches_the_plain_method_for_the_paper_sweep_extras_heads_and_knockout(loaded):
    n, heads, cls = n_layers_of(loaded.model), n_heads_of(loaded.model), has_cls(loaded.model)
    ablations = sweep("paper", n) + [parse_ablation(t, n, heads, cls) for t in extras(n, cls)]
    pixels = pixel_values(loaded, pictures(5)).to(loaded.device, loaded.dtype)  # 5 images
    batches = [pixels[:3], pixels[3:]]
    means = attention_means(loaded.model, batches, mean_needs(ablations))
    engine = SweepEngine(loaded.model, ablations, means)
    text = text_embeddings(loaded, TEXTS)
    fast: dict[Ablation, list[torch.Tensor]] = {}
    for px in batches:  # two batches, as the runner does
        for a, emb in engine.embeddings(px).items():
            fast.setdefault(a, []).append(cosine_logits(emb, text, logit_scale(loaded)))
    embeddings, plain = plain_batch(loaded.model, ablations, pixels, text_tokens(loaded, TEXTS), means)  # (5, A, P)
    for i, a in enumerate(ablations):
        got = torch.cat(fast[a])
        assert got.shape == (5, len(TEXTS))
        assert (got - plain[:, i]).abs().max() < 1e-4, a.label
    # Not vacuous: every ablation moves the logits, and the baseline embedding is the model's own.
    base = torch.cat(fast[ablations[0]])
    assert all((torch.cat(fast[a]) - base).abs().max() > 1e-3 for a in ablations[1:])
    with torch.inference_mode():
        own = loaded.model.get_image_features(**image_inputs(loaded.model, pixels)).pooler_output
    torch.testing.assert_close(embeddings[:, 0], own.float(), atol=1e-5, rtol=1e-5)


def test_plain_baseline_equals_the_models_own_logits_from_its_own_processor(loaded):
    """Our pixels, tokens, scale and bias against the processor's documented call: the same logits."""
    images = pictures(3, size=(32, 32)) if loaded.family == "siglip2" else pictures(3)  # NaFlex: native square
    kwargs = {}
    if loaded.family != "clip":
        kwargs = dict(padding="max_length", max_length=loaded.model.config.text_config.max_position_embeddings,
                      truncation=True)
    if loaded.family == "siglip2":
        vc = loaded.model.config.vision_config
        kwargs.update(patch_size=vc.patch_size, max_num_patches=vc.num_patches)
    elif loaded.family == "clip":
        kwargs = dict(padding=True)
    inputs = loaded.processor(text=TEXTS, images=images, return_tensors="pt", **kwargs)
    with torch.inference_mode():
        own = loaded.model(**inputs).logits_per_image  # (images, prompts)
    pixels = pixel_values(loaded, images)
    _, plain = plain_batch(loaded.model, [Ablation("baseline")], pixels, text_tokens(loaded, TEXTS))
    torch.testing.assert_close(plain[:, 0], own.float(), atol=1e-5, rtol=1e-5)
    # ... and the engine's logits, made from the embeddings with the float32 scale and bias, too.
    emb = SweepEngine(loaded.model, [Ablation("baseline")]).embeddings(pixels)[Ablation("baseline")]
    torch.testing.assert_close(cosine_logits(emb, text_embeddings(loaded, TEXTS), logit_scale(loaded)), own.float(),
                               atol=1e-4, rtol=1e-5)
    if loaded.family != "clip":  # the bias is there: without it the logits are off by it
        without = cosine_logits(emb, text_embeddings(loaded, TEXTS), loaded.logit_scale)
        assert (without - own).abs().min() > 1


def test_a_siglip_prompt_scores_the_same_whatever_prompts_stand_beside_it(tiny_siglip):
    clip = load_clip(str(tiny_siglip), "cpu")
    alone = text_embeddings(clip, ["a cat"])
    beside = text_embeddings(clip, ["a cat", "a photo of a black cat on a sink with a small white dog"])
    torch.testing.assert_close(alone[0], beside[0])  # padded to the full length, pooled at the last position
    assert text_tokens(clip, ["a cat"]).keys() == {"input_ids"}  # what SigLIP 1's tokenizer returns


def test_bfloat16_keeps_logit_scale_and_bias_in_float32(tiny_siglip):
    full = load_clip(str(tiny_siglip), "cpu")
    half = load_clip(str(tiny_siglip), "cpu", "bfloat16")
    assert half.model.vision_model.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert half.model.logit_scale.dtype == torch.float32 and half.model.logit_bias.dtype == torch.float32
    assert (half.logit_scale, half.logit_bias) == (full.logit_scale, full.logit_bias)
    pixels = pixel_values(half, pictures(2)).to(half.device, half.dtype)
    with torch.inference_mode():
        out = half.model(**image_inputs(half.model, pixels), **text_tokens(half, TEXTS))
    assert out.logits_per_image.dtype == torch.float32  # the model's own logits use the float32 scalars


def test_a_tower_without_cls_refuses_cls_targets_and_keeps_every_token(tiny_siglip):
    clip = load_clip(str(tiny_siglip), "cpu")
    n, heads = n_layers_of(clip.model), n_heads_of(clip.model)
    for text in ("knockout:3/patches>cls", "knockout:2/cls>patches/h1"):
        with pytest.raises(InputError, match="needs a CLS token, and this vision tower has none"):
            parse_ablation(text, n, heads, cls=False)
        with pytest.raises(InputError, match="needs a CLS token"):
            SweepEngine(clip.model, [parse_ablation(text)])  # parsed without the model: the engine refuses
    flow = sweeps("flow", n, heads, cls=False)
    assert [a.target for a in flow[1:]] == ["patches>patches"] * n  # flow without CLS: one target per layer
    # No CLS-only shortcut: every node of the tree keeps every token, even where CLIP's would not.
    tree = build_tree(sweep("paper", n), n, cls=False)
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children.values())
    assert all(node.full_out for node in nodes)
    assert not all(node.full_out for node in _walk(build_tree(sweep("paper", n), n, cls=True)))


def _walk(node):
    yield node
    for child in node.children.values():
        yield from _walk(child)


def test_the_pooling_head_is_never_patched_and_the_model_is_left_pristine(tiny_siglip):
    clip = load_clip(str(tiny_siglip), "cpu")
    head = clip.model.vision_model.head
    pixels = pixel_values(clip, pictures(2))
    with torch.inference_mode():
        before = clip.model.get_image_features(pixel_values=pixels).pooler_output.clone()
    with patched(clip.model, parse_ablation("zero:1-6")):
        assert "forward" not in vars(head) and "forward" not in vars(head.attention)
        assert all("forward" in vars(layer.self_attn) for layer in clip.model.vision_model.encoder.layers)
    assert not any("forward" in vars(m) for m in clip.model.modules())
    with torch.inference_mode():
        h = tokens_in(clip.model, pixels)
        for layer in clip.model.vision_model.encoder.layers:  # zero attention: residual and MLP alone
            h = h + layer.mlp(layer.layer_norm2(h))
        by_hand = pool(clip.model, h)
        after = clip.model.get_image_features(pixel_values=pixels).pooler_output
    engine = SweepEngine(clip.model, [parse_ablation("zero:1-6")]).embeddings(pixels)[parse_ablation("zero:1-6")]
    torch.testing.assert_close(engine, by_hand, atol=1e-5, rtol=1e-5)  # then the head, as the model runs it
    assert torch.equal(before, after)


@pytest.mark.parametrize("which", ["siglip", "siglip2"])
def test_siglip_attention_maps_are_each_layers_mean_over_queries_then_the_pooling_head(which, tiny_siglip,
                                                                                        tiny_siglip2):
    from transformers import AutoModel

    path = {"siglip": tiny_siglip, "siglip2": tiny_siglip2}[which]
    clip = load_clip(str(path), "cpu")
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    pixels = pixel_values(clip, pictures(2))
    maps = attention_maps(clip.model, pixels)  # (images, layers + 1, heads, tokens)
    n, t = n_layers_of(clip.model), 16
    assert maps.shape == (2, n + 1, n_heads_of(clip.model), t)
    with torch.inference_mode():
        out = eager.vision_model(**image_inputs(eager, pixels), output_attentions=True)
    for layer, probs in enumerate(out.attentions):  # (images, heads, queries, keys)
        np.testing.assert_allclose(maps[:, layer], probs.mean(dim=2).numpy(), atol=1e-5)
    # The pooling head by hand: the probe's query against the final tokens' keys, per head.
    vision = eager.vision_model
    with torch.inference_mode():
        x = out.last_hidden_state  # post_layernorm'd, every token
        w, b = vision.head.attention.in_proj_weight, vision.head.attention.in_proj_bias
        d, heads = x.shape[-1], n_heads_of(clip.model)
        q = (vision.head.probe @ w[:d].T + b[:d]).view(1, heads, d // heads).transpose(0, 1)  # (heads, 1, hd)
        k = (x @ w[d : 2 * d].T + b[d : 2 * d]).view(2, t, heads, d // heads).transpose(1, 2)  # (2, heads, t, hd)
        probe = ((q.unsqueeze(0) @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1)[:, :, 0]
    np.testing.assert_allclose(maps[:, n], probe.numpy(), atol=1e-5)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    # Under ablations: identity and patches>patches leave each query reading itself (1/t on average).
    ident = attention_maps(clip.model, pixels, parse_ablation("identity:2", n, cls=False))
    np.testing.assert_allclose(ident[:, 1], 1.0 / t, atol=1e-6)
    np.testing.assert_allclose(ident[:, 0], maps[:, 0], atol=1e-6)  # earlier layers unchanged
    knocked = attention_maps(clip.model, pixels, parse_ablation("knockout:3/patches>patches/h1", n, cls=False))
    np.testing.assert_allclose(knocked[:, 2, 1], 1.0 / t, atol=1e-6)
    np.testing.assert_allclose(knocked[:, 2, 0], maps[:, 2, 0], atol=1e-6)
    assert patch_grid(maps, cls=False).shape == (2, n + 1, n_heads_of(clip.model), 4, 4)


def test_siglip2_pixels_are_the_native_square_grid_the_picture_shows(tiny_siglip2):
    clip = load_clip(str(tiny_siglip2), "cpu")
    image = pictures(1, size=(80, 24))[0]  # wide: NaFlex alone would keep the aspect ratio and pad
    pixels = pixel_values(clip, [image])
    assert pixels.shape == (1, 3, 32, 32)  # carried as an image, like every family's
    square = image.resize((32, 32), Image.BILINEAR)
    own = clip.processor.image_processor(images=[square], patch_size=8, max_num_patches=16, return_tensors="pt")
    assert torch.equal(image_inputs(clip.model, pixels)["pixel_values"], own["pixel_values"])  # the model's input
    assert torch.equal(unpatchify(patchify(pixels, 8), 4, 8), pixels)
    seen = seen_image(clip, pixels[0]).astype(int)  # (32, 32, 3)
    assert seen.shape == (32, 32, 3) and np.abs(seen - np.asarray(square).astype(int)).max() <= 1


def test_the_run_loader_gives_every_family_the_processors_own_pixels(loaded):
    from compute.dataset import ImageRecord
    from compute.loader import Loader

    with tempfile.TemporaryDirectory() as tmp:
        images = pictures(3, size=(50, 30))
        records = []
        for i, im in enumerate(images):
            im.save(f"{tmp}/{i}.png")
            records.append(ImageRecord(i, f"{i}.png", Path(f"{tmp}/{i}.png"), ("cat",)))
        with Loader(loaded.image_processor, "cpu", torch.float32, 2, workers=1) as loader:
            got = torch.cat([b.pixel_values for b in loader.batches(records)])
    torch.testing.assert_close(got, pixel_values(loaded, images), atol=0, rtol=0)
