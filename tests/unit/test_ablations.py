"""Ablation syntax, canonical labels, sweeps, and the temporary patching of the plain method."""

from __future__ import annotations

import pytest
import torch

from compute.ablations import Ablation, parse_ablation, patched, sweep
from compute.errors import InputError


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


def test_patching_is_temporary_and_the_model_pristine_afterwards(tiny_clip):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip).eval()
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


def test_identity_patch_matches_the_definition(tiny_clip):
    """identity:L returns out_proj(v_proj(x)) for the layer-normed input x, nothing else changes."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    layer = model.vision_model.encoder.layers[0]
    x = torch.randn(2, 17, 32)
    with torch.inference_mode(), patched(model, Ablation("identity", (1,))):
        out, weights = layer.self_attn(hidden_states=x)
        expected = torch.nn.functional.linear(
            torch.nn.functional.linear(x, layer.self_attn.v_proj.weight, layer.self_attn.v_proj.bias),
            layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias)
    assert weights is None
    torch.testing.assert_close(out, expected)
