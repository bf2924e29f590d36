"""Ablation syntax, canonical labels, sweeps, the registry of kinds, and the temporary patching of the plain
method; the registry-wide tests run over every kind in compute.kinds.KINDS."""

from __future__ import annotations

import pytest
import torch

from compute.ablations import Ablation, mean_needs, parse_ablation, patched, sweep
from compute.errors import InputError
from compute.kinds import (
    HEAD_MEAN_STAT,
    KINDS,
    MEAN_STAT,
    Kind,
    kind_targets,
    knockout_edges,
    zero_heads,
    zero_probabilities,
)

FORMS = kind_targets()  # every (kind, target) of the registry, on a tower with a CLS token


def form_id(kind: str, target: str) -> str:
    return f"{kind}/{target}" if target else kind


@pytest.mark.parametrize(
    "text, label, layers",
    [
        ("identity:3", "identity:3", (3,)),
        ("identity:1-3", "identity:1-3", (1, 2, 3)),
        ("identity:1,5,9", "identity:1,5,9", (1, 5, 9)),
        ("identity: 9,1,5", "identity:1,5,9", (1, 5, 9)),
        ("zero:1,2,3", "zero:1-3", (1, 2, 3)),  # a contiguous list is written as a range
        ("mean:1-2,7", "mean:1,2,7", (1, 2, 7)),
        ("uniform:12", "uniform:12", (12,)),
        ("identity:4-4", "identity:4", (4,)),
        ("baseline", "baseline", ()),
    ],
)
def test_parse_and_canonical_label(text, label, layers):
    a = parse_ablation(text, n_layers=12)
    assert a.label == label
    assert a.layers == layers
    assert parse_ablation(a.label, 12) == a  # the label parses back to the same ablation


@pytest.mark.parametrize(
    "text, message",
    [
        ("identity", "malformed ablation"),
        ("identity:", "malformed layers"),
        ("identity:1-", "malformed layers"),
        ("identity:a", "malformed layers"),
        ("identity:3-1", "start is after end"),
        ("identity:0", "out of range"),
        ("identity:13", "out of range"),
        ("zero:5-14", "layer 13 does not exist"),
        ("dropout:3", "unknown ablation kind 'dropout'"),
    ],
)
def test_bad_ablations_name_the_problem(text, message):
    with pytest.raises(InputError, match=message):
        parse_ablation(text, n_layers=12)


def test_paper_sweep_for_12_layers_is_the_studys_21():
    labels = [a.label for a in sweep("paper", 12)]
    assert labels[0] == "baseline"
    assert labels[1:13] == [f"identity:{i}" for i in range(1, 13)]
    assert labels[13:] == ["identity:1-3", "identity:4-6", "identity:7-9", "identity:10-12",
                           "identity:1-4", "identity:5-8", "identity:9-12", "identity:1-12"]
    assert len(labels) == 21


@pytest.mark.parametrize(
    "n, expected",
    [
        (6, ["1-3", "4-6", "1-4", "5-6", "1-6"]),
        (5, ["1-3", "4-5", "1-4", "5", "1-5"]),  # short last blocks kept; identity:5 is a duplicate
        (1, ["1"]),
    ],
)
def test_paper_sweep_tiles_other_depths_and_drops_duplicates(n, expected):
    labels = [a.label for a in sweep("paper", n)]
    singles = [f"identity:{i}" for i in range(1, n + 1)]
    assert labels[: n + 1] == ["baseline", *singles]
    assert labels[n + 1 :] == [f"identity:{b}" for b in expected if f"identity:{b}" not in singles]
    assert len(labels) == len(set(labels))


def test_other_sweeps():
    assert [a.label for a in sweep("none", 12)] == ["baseline"]
    assert len(sweep("singles", 12)) == 13
    with pytest.raises(InputError, match="unknown sweep"):
        sweep("all", 12)


def _outputs(model, pixels):
    with torch.inference_mode():
        return model.get_image_features(pixel_values=pixels).pooler_output.clone()


def test_patching_is_temporary_and_the_model_pristine_afterwards(clip_in_memory):
    model = clip_in_memory
    pixels = torch.randn(2, 3, 32, 32)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _outputs(model, pixels)
    ablation = parse_ablation("identity:2-5", 12)
    with patched(model, ablation):
        during = _outputs(model, pixels)
        assert all("forward" in model.vision_model.encoder.layers[i - 1].self_attn.__dict__ for i in (2, 3, 4, 5))
    assert not torch.allclose(during, before)  # the patch did change the model
    # An exception inside the block still restores every module.
    with pytest.raises(RuntimeError), patched(model, parse_ablation("zero:1-12", 12)):
        raise RuntimeError("boom")
    for layer in model.vision_model.encoder.layers:
        assert "forward" not in layer.self_attn.__dict__
    assert torch.equal(_outputs(model, pixels), before)
    after_state = model.state_dict()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)


def test_identity_patch_matches_the_definition(clip_in_memory):
    """identity:L returns out_proj(v_proj(x)) for the layer-normed input x, nothing else changes."""
    model = clip_in_memory
    layer = model.vision_model.encoder.layers[0]
    x = torch.randn(2, 17, 32)
    with torch.inference_mode(), patched(model, Ablation("identity", (1,))):
        out, weights = layer.self_attn(hidden_states=x)
        expected = torch.nn.functional.linear(
            torch.nn.functional.linear(x, layer.self_attn.v_proj.weight, layer.self_attn.v_proj.bias),
            layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias)
    assert weights is None
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------------------------------
# Heads, targets and the full form KIND:LAYERS[/TARGET][/HEADS].


@pytest.mark.parametrize(
    "text, label, layers, heads, target",
    [
        ("identity:6/h0,h3", "identity:6/h0,h3", (6,), (0, 3), ""),
        ("zero:5-8/h2-4", "zero:5-8/h2-4", (5, 6, 7, 8), (2, 3, 4), ""),
        ("zero:5-8/h4,h2,h3", "zero:5-8/h2-4", (5, 6, 7, 8), (2, 3, 4), ""),  # sorted, written as a range
        ("mean:2/h1", "mean:2/h1", (2,), (1,), ""),
        ("uniform:1,5/h0-1,h7", "uniform:1,5/h0,h1,h7", (1, 5), (0, 1, 7), ""),
        ("identity:3/h0,2", "identity:3/h0,h2", (3,), (0, 2), ""),  # the h of later items may be left out
        ("knockout:9-12/patches>cls", "knockout:9-12/patches>cls", (9, 10, 11, 12), (), "patches>cls"),
        ("knockout:10/patches>cls/h7", "knockout:10/patches>cls/h7", (10,), (7,), "patches>cls"),
        ("knockout: 3-4 / cls>patches / h1", "knockout:3-4/cls>patches/h1", (3, 4), (1,), "cls>patches"),
        ("knockout:1/patches>patches", "knockout:1/patches>patches", (1,), (), "patches>patches"),
    ],
)
def test_full_form_parses_to_its_canonical_label(text, label, layers, heads, target):
    a = parse_ablation(text, n_layers=12, n_heads=12)
    assert (a.label, a.layers, a.heads, a.target) == (label, layers, heads, target)
    assert parse_ablation(a.label, 12, 12) == a
    assert str(a) == label


def test_zero_of_a_whole_layer_and_of_all_its_heads_stay_two_ablations():
    # zero:L returns zeros; zero:L/h0-3 returns out_proj's bias: both are kept as written.
    assert parse_ablation("zero:5", 12, 4) != parse_ablation("zero:5/h0-3", 12, 4)


@pytest.mark.parametrize(
    "text, message",
    [
        ("identity:3/h4", r"head 4 does not exist \(its layers have heads 0-3\)"),
        ("identity:3/h0-9", "head 4 does not exist"),
        ("identity:3/patches>cls", "identity takes no target"),
        ("knockout:3", "knockout needs a target"),
        ("knockout:3/h1", "knockout needs a target"),
        ("knockout:3/cls>cls", "unknown knockout target 'cls>cls'"),
        ("knockout:3/h1/patches>cls", "malformed ablation"),
        ("identity:3/", "malformed ablation"),
        ("identity:3/h", "malformed heads 'h'"),
        ("identity:3/h1,", "malformed heads"),
        ("identity:3/hx", "malformed heads"),
        ("identity:3/h2-1", "start is after end"),
        ("knockout:3/patches>cls/h1/h2", "malformed ablation"),
        ("zero:13/h0", "layer 13 does not exist"),
    ],
)
def test_bad_heads_and_targets_name_the_problem(text, message):
    with pytest.raises(InputError, match=message):
        parse_ablation(text, n_layers=12, n_heads=4)


@pytest.mark.parametrize("text", ["identity:1-99999999999999999999", "zero:3/h0-99999999999",
                                  "knockout:1-99999999999/patches>cls", "identity:5,1-1000000000"])
@pytest.mark.parametrize("model_known", [True, False])
def test_huge_ranges_fail_fast_without_being_expanded(text, model_known):
    """Sizes are checked before any range is built: no memory is spent on the text's numbers."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            parse_ablation(text, *((12, 12) if model_known else ()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and "out of range" in message
    assert peak < 1_000_000  # a range of even 10^6 layers would take tens of megabytes


def test_heads_and_flow_sweeps_of_a_vit_b16_tower():
    heads = sweep("heads", 12, 12)
    assert len(heads) == 145
    assert heads[0].label == "baseline"
    assert [a.label for a in heads[1:4]] == ["identity:1/h0", "identity:1/h1", "identity:1/h2"]
    assert heads[-1].label == "identity:12/h11"
    flow = sweep("flow", 12, 12)
    assert len(flow) == 37
    assert [a.label for a in flow[1:4]] == ["knockout:1/patches>cls", "knockout:1/cls>patches",
                                            "knockout:1/patches>patches"]
    assert len({a.label for a in heads + flow}) == 145 + 37 - 1


def test_a_list_of_sweeps_runs_in_order_with_duplicates_dropped():
    from compute.ablations import sweeps

    both = sweeps(["flow", "heads", "flow", "singles"], 12, 4)
    labels = [a.label for a in both]
    assert labels[0] == "baseline" and labels.count("baseline") == 1
    assert len(labels) == len(set(labels)) == 1 + 36 + 48 + 12
    assert labels[1] == "knockout:1/patches>cls" and labels[37] == "identity:1/h0"
    assert sweeps("paper", 12) == sweep("paper", 12)


def test_a_tower_without_cls_knows_only_patches_to_patches():
    from compute.ablations import sweeps
    from compute.kinds import knockout_edges

    flow = sweep("flow", 12, 12, cls=False)
    assert len(flow) == 13 and {a.target for a in flow[1:]} == {"patches>patches"}
    assert sweeps(["paper", "flow"], 12, 12, cls=False)[:21] == sweep("paper", 12)  # paper is the same
    # every token is a patch: each reads itself alone (with CLS, a patch still reads token 0)
    assert torch.equal(knockout_edges("patches>patches", 5, 5, cls=False), ~torch.eye(5, dtype=torch.bool))
    assert not knockout_edges("patches>patches", 5, 5)[1, 0]
    with pytest.raises(ValueError, match="needs a CLS token"):
        knockout_edges("patches>cls", 1, 5, cls=False)
    for text in ("knockout:3/patches>cls", "knockout:1-2/cls>patches/h0"):
        with pytest.raises(InputError, match="needs a CLS token, and this vision tower has none"):
            parse_ablation(text, 12, 12, cls=False)
        assert parse_ablation(text, 12, 12).target in text  # fine on CLIP
    assert parse_ablation("knockout:3/patches>patches/h1", 12, 12, cls=False).heads == (1,)


# --------------------------------------------------------------------------------------------------
# Every registered kind.


@pytest.mark.parametrize("kind, target", FORMS, ids=[form_id(*f) for f in FORMS])
def test_every_kind_parses_to_its_canonical_label_at_layer_and_head_grain(kind, target):
    t = f"/{target}" if target else ""
    whole = parse_ablation(f"{kind}: 3,1,2{t}", 12, 12)
    assert (whole.label, whole.kind, whole.layers, whole.heads, whole.target) == (f"{kind}:1-3{t}", kind, (1, 2, 3),
                                                                                  (), target)
    heads = parse_ablation(f"{kind}:9,5{t}/h4,h0-1", 12, 12)
    assert (heads.label, heads.layers, heads.heads) == (f"{kind}:5,9{t}/h0,h1,h4", (5, 9), (0, 1, 4))
    for a in (whole, heads):
        assert parse_ablation(a.label, 12, 12) == a
    with pytest.raises(InputError, match="layer 13 does not exist"):
        parse_ablation(f"{kind}:13{t}", 12, 12)
    with pytest.raises(InputError, match="head 12 does not exist"):
        parse_ablation(f"{kind}:1{t}/h12", 12, 12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_takes_a_target_exactly_when_it_says_so(kind):
    spec = KINDS[kind]
    if not spec.targets:
        with pytest.raises(InputError, match=f"{kind} takes no target"):
            parse_ablation(f"{kind}:3/patches>cls", 12, 4)
        assert [t for k, t in kind_targets() + kind_targets(cls=False) if k == kind] == ["", ""]
        return
    with pytest.raises(InputError, match=f"{kind} needs a target"):
        parse_ablation(f"{kind}:3", 12, 4)
    with pytest.raises(InputError, match=f"unknown {kind} target 'nowhere'"):
        parse_ablation(f"{kind}:3/nowhere/h1", 12, 4)
    for target in spec.targets:
        assert parse_ablation(f"{kind}:3/{target}/h1", 12, 4).target == target
        if target in spec.cls_targets:
            with pytest.raises(InputError, match="needs a CLS token, and this vision tower has none"):
                parse_ablation(f"{kind}:3/{target}", 12, 4, cls=False)
        else:
            assert parse_ablation(f"{kind}:3/{target}", 12, 4, cls=False).target == target
    assert [t for k, t in kind_targets(cls=False) if k == kind] == [t for t in spec.targets if t not in spec.cls_targets]


@pytest.mark.parametrize("kind, target", FORMS, ids=[form_id(*f) for f in FORMS])
def test_every_kind_asks_for_the_dataset_statistics_it_needs(kind, target):
    t = f"/{target}" if target else ""
    ablations = [parse_ablation(f"{kind}:2-3{t}", 12, 4), parse_ablation(f"{kind}:5{t}/h1", 12, 4)]
    assert mean_needs(ablations) == ({MEAN_STAT: {2, 3}, HEAD_MEAN_STAT: {5}} if KINDS[kind].needs_mean else {})


def test_a_kind_gives_its_heads_outputs_or_the_edges_it_blocks_and_only_targets_it_takes():
    with pytest.raises(ValueError, match="one of them"):
        Kind(probabilities=zero_probabilities)
    with pytest.raises(ValueError, match="one of them"):
        Kind(probabilities=zero_probabilities, heads=zero_heads, blocked=knockout_edges)
    with pytest.raises(ValueError, match="cls_targets"):
        Kind(probabilities=zero_probabilities, blocked=knockout_edges, targets=("a",), cls_targets=("b",))
    kind = Kind(probabilities=zero_probabilities, blocked=knockout_edges, targets=("a", "b"), cls_targets=("b",))
    assert kind.takes() == ("a", "b") and kind.takes(cls=False) == ("a",)


@pytest.mark.parametrize("kind, target", FORMS, ids=[form_id(*f) for f in FORMS])
def test_every_kinds_patch_changes_the_model_and_is_undone(tiny_clip_model, kind, target):
    from compute.engine import attention_means

    model = tiny_clip_model
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    before = _outputs(model, pixels)
    t = f"/{target}" if target else ""
    for text in (f"{kind}:2-5{t}", f"{kind}:2-5{t}/h1"):
        ablation = parse_ablation(text, 12, 4)
        means = attention_means(model, [pixels], mean_needs([ablation]))
        with patched(model, ablation, means):
            during = _outputs(model, pixels)
            patched_layers = [i for i, layer in enumerate(model.vision_model.encoder.layers, start=1)
                              if "forward" in layer.self_attn.__dict__]
        assert patched_layers == [2, 3, 4, 5], text
        assert (during - before).abs().max() > 1e-4, text  # the patch did change the model
        assert all("forward" not in layer.self_attn.__dict__ for layer in model.vision_model.encoder.layers)
        assert torch.equal(_outputs(model, pixels), before)


@pytest.fixture(scope="module")
def tiny_clip_model(tiny_clip):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip).eval()
