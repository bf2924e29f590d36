"""Heads and token flow: every per-head kind and every knockout target through the engine, held to the
plain method (patch the modules, rerun the whole model) and to an independent formulation (attention
probabilities replaced inside transformers' own eager attention), and the CLS attention maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers.models.clip.modeling_clip as modeling_clip

from compute.ablations import (
    HEAD_MEAN_STAT,
    MEAN_STAT,
    Ablation,
    mean_needs,
    parse_ablation,
    sweep,
    sweeps,
    vision_layers,
)
from compute.attention_maps import cls_attention, patch_grid
from compute.engine import SweepEngine, attention_means, build_tree, count_nodes, plain_batch

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


def every_head_and_target() -> list[Ablation]:
    per_head = [Ablation(kind, (layer,), (head,)) for kind in ("identity", "zero", "mean", "uniform")
                for layer in range(1, N_LAYERS + 1) for head in range(N_HEADS)]
    return [Ablation("baseline"), *per_head, *sweep("flow", N_LAYERS)[1:],
            *[parse_ablation(t, N_LAYERS, N_HEADS) for t in MIXED]]


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


def test_engine_matches_the_plain_method_for_every_head_kind_target_and_mixed_form(model, pixels):
    ablations = every_head_and_target()
    assert len(ablations) == 1 + 4 * N_LAYERS * N_HEADS + 3 * N_LAYERS + len(MIXED)
    batches = [pixels[:3], pixels[3:]]
    means = attention_means(model, batches, mean_needs(ablations))
    assert set(means[HEAD_MEAN_STAT]) == set(range(1, N_LAYERS + 1)) and set(means[MEAN_STAT]) == {3}

    fast = engine_logits(model, ablations, means, batches)
    _, plain = plain_batch(model, ablations, pixels, {"input_ids": INPUT_IDS}, means)  # (images, A, prompts)
    assert plain.shape == (5, len(ablations), 4)
    worst = {a.label: (fast[a] - plain[:, i]).abs().max().item() for i, a in enumerate(ablations)}
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])

    # Not vacuous: every ablation moves the logits, except the three that only change what patch queries read
    # in the last layer, which the CLS token never sees: those are baseline up to float32 rounding (logits
    # near 1 here, one ulp 1.2e-7; seen: 1.1e-6 against a smallest real move of 1.1e-3).
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
# CLS attention maps.


def test_baseline_maps_are_transformers_own_attention_probabilities(model, eager_model, pixels):
    maps = cls_attention(model, pixels[:2])  # (images, layers, heads, tokens)
    assert maps.shape == (2, N_LAYERS, N_HEADS, 17)
    with torch.inference_mode():
        out = eager_model.vision_model(pixel_values=pixels[:2], output_attentions=True)
    reference = torch.stack([a[:, :, 0] for a in out.attentions], dim=1).numpy()  # CLS rows
    assert abs(maps - reference).max() < 1e-5
    assert patch_grid(maps).shape == (2, N_LAYERS, N_HEADS, 4, 4)


@pytest.mark.parametrize("layer", [1, 6, 12])
def test_identity_map_at_its_layer_is_the_identity_pattern(model, pixels, layer):
    base = cls_attention(model, pixels[:2])
    maps = cls_attention(model, pixels[:2], parse_ablation(f"identity:{layer}", N_LAYERS, N_HEADS))
    at = maps[:, layer - 1]  # (images, heads, tokens)
    assert (at[:, :, 0] == 1).all() and (at[:, :, 1:] == 0).all()  # CLS attends only to itself
    assert np.allclose(maps[:, : layer - 1], base[:, : layer - 1], rtol=0, atol=1e-6)  # layers below untouched
    if layer < N_LAYERS:
        assert abs(maps[:, layer:] - base[:, layer:]).max() > 1e-4  # what comes after sees the change


def test_maps_under_head_level_ablations_and_knockout(model, pixels):
    base = cls_attention(model, pixels[:2])
    one_head = cls_attention(model, pixels[:2], parse_ablation("identity:4/h1", N_LAYERS, N_HEADS))[:, 3]
    assert (one_head[:, 1, 0] == 1).all() and (one_head[:, 1, 1:] == 0).all()
    assert abs(one_head[:, [0, 2, 3]] - base[:, 3, [0, 2, 3]]).max() < 1e-6  # other heads run normally
    knocked = cls_attention(model, pixels[:2], parse_ablation("knockout:5/patches>cls", N_LAYERS, N_HEADS))[:, 4]
    assert (knocked[:, :, 1:] == 0).all() and abs(knocked[:, :, 0] - 1).max() < 1e-6
    # Patch queries losing the CLS key change nothing in the CLS row of that layer.
    other = cls_attention(model, pixels[:2], parse_ablation("knockout:5/cls>patches", N_LAYERS, N_HEADS))[:, 4]
    assert abs(other - base[:, 4]).max() < 1e-6
    uniform = cls_attention(model, pixels[:2], parse_ablation("uniform:2/h3", N_LAYERS, N_HEADS))[:, 1]
    assert abs(uniform[:, 3] - 1 / 17).max() < 1e-7
    assert abs(uniform.sum(axis=-1) - 1).max() < 1e-5


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
