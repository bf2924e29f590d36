"""The demo's synthetic shapes dataset (compute.demo.data): layout, determinism, what the annotations say
against the pixels, reruns and bad input. (The shipped toy CLIP is tested in regression/test_demo_clip.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from compute.demo import data as demo_data
from compute.demo.data import BACKGROUNDS, COLOURS, SHAPES, write_coco
from compute.errors import InputError

N = 40


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.abs(rgb - np.array(palette[name])).sum()))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    assert write_coco(out, "val", N, seed=0) is True
    return out


def test_layout(shapes: Path) -> None:
    assert sorted(p.name for p in (shapes / "val").iterdir())[:2] == ["000000000001.png", "000000000002.png"]
    assert len(list((shapes / "val").iterdir())) == N
    assert sorted(p.name for p in (shapes / "annotations").iterdir()) == [
        "captions_val.json", "instances_attributes_val.json", "instances_val.json",
    ]  # fmt: skip
    assert not [p for p in shapes.iterdir() if p.name.startswith(".tmp")]  # no leftovers
    img = Image.open(shapes / "val" / "000000000001.png")
    assert (img.size, img.mode) == ((64, 64), "RGB")


def test_same_seed_same_bytes_other_seed_differs(shapes: Path, tmp_path: Path) -> None:
    write_coco(tmp_path / "again", "val", N, seed=0)
    write_coco(tmp_path / "other", "val", N, seed=1)
    first, again, other = _files(shapes), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    assert first["annotations/instances_val.json"] != other["annotations/instances_val.json"]
    assert first["val/000000000001.png"] != other["val/000000000001.png"]


def test_render_is_pure() -> None:
    spec = demo_data.sample_specs(demo_data.split_rng("val", 0), 1, speckle_fraction=1.0)[0]
    assert np.array_equal(np.asarray(demo_data.render(spec)), np.asarray(demo_data.render(spec)))


def test_pycocotools_reads_instances(shapes: Path) -> None:
    coco = COCO(str(shapes / "annotations" / "instances_val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    assert {c["supercategory"] for c in coco.loadCats(coco.getCatIds())} == {"shape"}
    assert sorted(coco.getImgIds()) == list(range(1, N + 1))
    (circle,) = coco.getCatIds(catNms=["circle"])
    assert coco.getImgIds(catIds=[circle])
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["iscrowd"] == 0 and ann["area"] > 0 and len(ann["bbox"]) == 4
        assert ann["attributes"]["colour"] in COLOURS
        assert coco.annToMask(ann).sum() > 0  # the polygon is a real segmentation


def test_pycocotools_reads_attributes_and_captions(shapes: Path) -> None:
    attrs = COCO(str(shapes / "annotations" / "instances_attributes_val.json"))
    names = [c["name"] for c in attrs.loadCats(attrs.getCatIds())]
    assert len(names) == 30 and names == demo_data.attribute_names()
    assert len(attrs.getCatIds(catNms=["red circle", "blue star"])) == 2
    assert attrs.getCatIds(catNms=["circle"]) == []  # a shape alone is never an attribute label
    caps = COCO(str(shapes / "annotations" / "captions_val.json"))
    assert all(len(caps.getAnnIds(imgIds=[i])) == 1 for i in caps.getImgIds())


def test_annotations_match_pixels(shapes: Path) -> None:
    """Main object, attribute label, caption and background agree with what is actually drawn."""
    inst = COCO(str(shapes / "annotations" / "instances_val.json"))
    attrs = COCO(str(shapes / "annotations" / "instances_attributes_val.json"))
    caps = COCO(str(shapes / "annotations" / "captions_val.json"))
    n_distractors = 0
    for image_id in inst.getImgIds():
        info = inst.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(shapes / "val" / info["file_name"]), dtype=np.int32)  # (64, 64, 3)
        anns = sorted(inst.loadAnns(inst.getAnnIds(imgIds=[image_id])), key=lambda a: -a["area"])
        main, rest = anns[0], anns[1:]
        shape = inst.loadCats(main["category_id"])[0]["name"]
        colour = main["attributes"]["colour"]

        # The pixel at the main object's bbox centre is its colour (every shape covers that point).
        x, y, w, h = main["bbox"]
        assert _nearest(pixels[int(y + h / 2), int(x + w / 2)], COLOURS) == colour
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (256, 3)
        background = _nearest(np.median(border, axis=0), BACKGROUNDS)
        assert background == info["background"]

        (attr,) = attrs.loadAnns(attrs.getAnnIds(imgIds=[image_id]))
        assert attrs.loadCats(attr["category_id"])[0]["name"] == f"{colour} {shape}"
        assert attr["bbox"] == main["bbox"]

        text = caps.loadAnns(caps.getAnnIds(imgIds=[image_id]))[0]["caption"]
        expected = f"a photo of a {colour} {shape} on a {background} background"
        if rest:
            n_distractors += 1
            (d,) = rest
            d_shape, d_colour = inst.loadCats(d["category_id"])[0]["name"], d["attributes"]["colour"]
            assert d_shape != shape and d_colour != colour
            assert d["area"] < main["area"] / 2
            expected += f" with a small {d_colour} {d_shape}"
        assert text == expected
        assert colour != background  # never drawn on its own colour
    assert 0 < n_distractors < N


def test_distractor_rules_hold_on_many_specs() -> None:
    specs = demo_data.sample_specs(demo_data.split_rng("train", 3), 2000)
    with_d = [s for s in specs if s.distractor is not None]
    assert 0.3 < len(with_d) / len(specs) < 0.5
    for s in with_d:
        d = s.distractor
        assert d.shape != s.main.shape and d.colour != s.main.colour and d.colour != s.background
        # Circumcircles never touch, so the objects never overlap.
        assert np.hypot(d.cx - s.main.cx, d.cy - s.main.cy) > d.radius + s.main.radius
    for s in specs:
        assert s.main.colour != s.background
        assert 18 <= s.main.radius <= 28
        assert s.main.radius <= min(s.main.cx, s.main.cy, 64 - s.main.cx, 64 - s.main.cy)
    assert {s.main.shape for s in specs} == set(SHAPES) and {s.main.colour for s in specs} == set(COLOURS)


def test_rerun_is_idempotent(shapes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in shapes.rglob("*")}
    assert write_coco(shapes, "val", N, seed=0) is False
    assert demo_data.main(["--out", str(shapes), "--n-val", str(N), "--seed", "0"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in shapes.rglob("*")} == before


def test_changed_n_regenerates(tmp_path: Path) -> None:
    write_coco(tmp_path, "val", 5, seed=0)
    assert write_coco(tmp_path, "val", 7, seed=0) is True
    assert len(list((tmp_path / "val").iterdir())) == 7
    assert json.loads((tmp_path / "manifest.json").read_text())["val"]["n"] == 7


def test_interrupted_run_leaves_nothing_half_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_render(spec: demo_data.ImageSpec) -> Image.Image:
        calls.append(spec)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return Image.new("RGB", (64, 64))

    monkeypatch.setattr(demo_data, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        write_coco(tmp_path, "val", 10, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == []
    monkeypatch.undo()
    assert write_coco(tmp_path, "val", 10, seed=0) is True


def test_bad_input() -> None:
    with pytest.raises(InputError):
        write_coco(Path("unused"), "test", 5, seed=0)
    with pytest.raises(InputError):
        write_coco(Path("unused"), "val", 0, seed=0)
