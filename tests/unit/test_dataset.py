"""COCO-format datasets read with pycocotools: category filters, caption selection and caption labels,
and every shipped experiment file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT

from compute.config import DatasetConfig, load_experiment
from compute.dataset import caption_phrases, load_dataset, open_image, says_any
from compute.errors import InputError
from compute.runner import resolve_ablations
from tools.synthetic import make_coco


def cfg(coco: Path, **kw) -> DatasetConfig:
    return DatasetConfig(images=coco / "images", annotations=coco / "annotations" / "instances.json", **kw)


def test_category_filter_limit_and_labels(tiny_coco):
    everything = load_dataset(cfg(tiny_coco), [])
    assert [r.image_id for r in everything] == list(range(1, 11))
    birds = load_dataset(cfg(tiny_coco, categories=["bird"]), [])
    assert [(r.image_id, r.labels) for r in birds] == [(7, ("bird", "cat"))]
    first = load_dataset(cfg(tiny_coco, categories=["cat", "dog"], limit=3), [])
    assert [r.image_id for r in first] == [1, 2, 3]
    assert first[0].path == tiny_coco / "images" / "000000000001.jpg"


@pytest.mark.parametrize(
    "captions, phrases, expected",
    [
        (["A black cat sitting on a sink"], ["cat", "black cat", "black car"], {"black cat"}),
        (["a black cat on a sink", "a cat in a bathroom"], ["cat", "black cat"], {"black cat"}),
        (["a cat next to a black car"], ["cat", "black cat", "black car"], {"cat", "black car"}),
        (["a black catalog on a table"], ["cat", "black cat"], set()),  # whole words only
        (["two black  cats"], ["black cat"], set()),  # plural is another word
        (["a photo of a DOG"], ["dog"], {"dog"}),
        ([], ["dog"], set()),
    ],
)
def test_caption_labels_are_the_most_specific_phrases(captions, phrases, expected):
    assert caption_phrases(captions, phrases) == expected


def test_caption_selection_and_caption_labels(tiny_coco):
    # The fixture's captions: "a black cat sitting on a sink" for ids divisible by 3, else "a cat ..." /
    # "a dog ...".
    d = cfg(tiny_coco, captions=tiny_coco / "annotations" / "captions.json", caption_contains=["black cat"],
            labels=["captions"])
    records = load_dataset(d, ["cat", "black cat", "black car"])
    assert [r.image_id for r in records] == [3, 6, 9]
    assert all(r.labels == ("black cat",) for r in records)
    both = load_dataset(cfg(tiny_coco, captions=tiny_coco / "annotations" / "captions.json",
                            labels=["categories", "captions"]), ["black cat"])
    assert dict((r.image_id, r.labels) for r in both)[3] == ("black cat", "cat")
    assert says_any(["A Black Cat"], ["black cat"]) and not says_any(["blackcat"], ["black cat"])


def test_dataset_errors(tiny_coco, tmp_path):
    with pytest.raises(InputError, match="no images match"):
        load_dataset(cfg(tiny_coco, captions=tiny_coco / "annotations" / "captions.json",
                         caption_contains=["zebra"]), [])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="not in COCO format"):
        load_dataset(DatasetConfig(images=tiny_coco / "images", annotations=bad), [])
    with pytest.raises(InputError, match="captions file not found"):
        load_dataset(cfg(tiny_coco, captions=tmp_path / "none.json", caption_contains=["cat"]), [])


def test_broken_and_missing_images_raise_a_per_image_error(tmp_path):
    from compute.dataset import ImageLoadError

    coco = make_coco(tmp_path / "c", n=3, broken=(2,))
    assert open_image(coco / "images" / f"{1:012d}.jpg").mode == "RGB"
    with pytest.raises(ImageLoadError, match="cannot decode"):
        open_image(coco / "images" / f"{2:012d}.jpg")
    with pytest.raises(ImageLoadError, match="file not found"):
        open_image(coco / "images" / "nope.jpg")


COCO80 = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
          "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
          "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
          "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
          "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
          "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
          "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
          "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
          "scissors", "teddy bear", "hair drier", "toothbrush"]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_parses_and_validates(path):
    exp = load_experiment(path)
    assert exp.name == path.stem
    assert len(resolve_ablations(exp, 12, 4)) >= 21  # the paper sweep of a 12-layer, 4-head tower, plus extras
    assert exp.store.db.parent == ROOT / "data"
    assert str(exp.dataset.images).startswith(str(ROOT / "data"))
    if exp.name.startswith("demo"):
        assert Path(exp.model.clip) == ROOT / "data" / "demo" / "models" / "clip"
    elif exp.name.endswith("-siglip"):  # the study's experiment on SigLIP: the CLIP file's twin but for the model
        assert exp.model.clip == "google/siglip-base-patch16-224"
        twin = load_experiment(path.with_name(path.name.replace("-siglip", "")))
        assert (exp.dataset, exp.prompts, exp.ablations, exp.captions, exp.store) == (
            twin.dataset, twin.prompts, twin.ablations, twin.captions, twin.store)
        assert exp.model.captioner == twin.model.captioner
    else:
        assert exp.model.clip == "openai/clip-vit-base-patch16"
        assert exp.dataset.annotations == ROOT / "data/coco/annotations/instances_val2017.json"
    if exp.name == "coco80":
        assert [p.label for p in exp.prompts] == COCO80
    if exp.name == "paper-cats-dogs":
        assert exp.dataset.categories == ["cat", "dog"]
        assert [p.text for p in exp.prompts] == [f"a photo of a {w}" for w in ("dog", "cat", "bird", "car")]
    if exp.name == "paper-attributes":
        assert exp.dataset.labels == ["captions"] and exp.dataset.caption_contains == ["black cat"]


def test_the_paper_attribute_experiment_on_a_coco_shaped_fixture(tiny_coco):
    """paper-attributes.toml pointed at a small COCO-format tree: the selection and labels it gets."""
    exp = load_experiment(ROOT / "experiments" / "paper-attributes.toml")
    exp.dataset.images = tiny_coco / "images"
    exp.dataset.annotations = tiny_coco / "annotations" / "instances.json"
    exp.dataset.captions = tiny_coco / "annotations" / "captions.json"
    records = load_dataset(exp.dataset, [p.label for p in exp.prompts])
    assert [(r.image_id, r.labels) for r in records] == [(3, ("black cat",)), (6, ("black cat",)), (9, ("black cat",))]
