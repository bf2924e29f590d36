"""The embedded demo's synthetic dataset: coloured shapes on plain backgrounds, in COCO format.

Every image holds one large main object (5 shapes x 6 colours) on a plain background and, for a
fraction of images, a small distractor of another shape and colour in a corner. The same code
renders the images the toy CLIP trains on (in memory, ``sample_specs`` + ``render``) and the
held-out split the demo runs on (on disk, ``write_coco``), so both always agree. Long because of that:
sampling, rendering and the COCO writer stay in one file so they cannot drift apart.

    python -m compute.demo.data --out data/demo/shapes [--n-val 600] [--n-train 0] [--seed 0]

On disk (``OUT`` = ``--out``)::

    OUT/SPLIT/000000000001.png ...
    OUT/annotations/instances_SPLIT.json             categories = the 5 shapes; main object + distractor
    OUT/annotations/instances_attributes_SPLIT.json  categories = "red circle" ... (30); main object only
    OUT/annotations/captions_SPLIT.json              one regular caption per image
    OUT/manifest.json                                {split: {n, seed, version}}; written last
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from compute.errors import InputError
from compute.files import write_json_atomic

IMAGE_SIZE = 64
# Bump when rendering or annotation content changes: the manifest then no longer matches and
# an existing split is regenerated instead of being kept.
DATA_VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
# Saturated, well separated hues; names double as prompt words.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 30),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
}
# "blue" is also an object colour: an object is never drawn in its background's colour (see
# _FORBIDDEN_ON), and a red circle on a blue background is a natural colour-binding trap.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "blue": (70, 110, 200),
}
# Object colours that are hard to see (or mean the same word) on a background.
_FORBIDDEN_ON: dict[str, frozenset[str]] = {
    "white": frozenset(),
    "gray": frozenset(),
    "black": frozenset(),
    "blue": frozenset({"blue", "purple"}),
}

DISTRACTOR_FRACTION = 0.4
SPECKLE_FRACTION = 0.2
MAIN_RADIUS = (18, 28)  # circumradius in pixels, inclusive
DISTRACTOR_RADIUS = (5, 7)
COLOUR_JITTER = 12  # +- per channel, object colours
BACKGROUND_JITTER = 10  # +- per channel
SPLITS = ("val", "train")

# Every word a caption or a demo prompt can use; the toy CLIP's tokenizer is built from this.
PROMPT_TEMPLATE = "a photo of a {}"
CAPTION_WORDS: tuple[str, ...] = ("a", "photo", "of", "on", "background", "with", "small")


@dataclass(frozen=True)
class ObjectSpec:
    """One drawn object. ``radius`` is the circumradius; ``rgb`` already holds the colour jitter."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to draw one image; ``render`` is a pure function of it."""

    main: ObjectSpec
    background: str
    background_rgb: tuple[int, int, int]
    speckle_seed: int | None  # None: plain background
    distractor: ObjectSpec | None

    @property
    def label(self) -> str:
        """The attribute label of the main object, e.g. "red circle"."""
        return f"{self.main.colour} {self.main.shape}"


def attribute_names() -> list[str]:
    """All 30 "colour shape" phrases, colour-major, in a fixed order."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def caption(spec: ImageSpec) -> str:
    """The one regular full caption, e.g. "a photo of a red circle on a blue background with a small green square"."""
    text = PROMPT_TEMPLATE.format(f"{spec.label} on a {spec.background} background")
    if spec.distractor is not None:
        text += f" with a small {spec.distractor.colour} {spec.distractor.shape}"
    return text


def vocabulary() -> list[str]:
    """Every word ``caption`` and the demo prompts can produce, in a fixed order."""
    words: list[str] = []
    for w in (*CAPTION_WORDS, *COLOURS, *BACKGROUNDS, *SHAPES):
        if w not in words:
            words.append(w)
    return words


def polygon(obj: ObjectSpec) -> list[tuple[float, float]]:
    """The outline of an object as (x, y) vertices; used for drawing and for COCO segmentation."""
    cx, cy, r = obj.cx, obj.cy, obj.radius
    if obj.shape == "circle":
        n = 32
        pts = [(r * math.cos(2 * math.pi * k / n), r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    elif obj.shape == "square":
        h = r / math.sqrt(2)  # corners on the circumcircle
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif obj.shape == "triangle":
        # Equilateral, pointing up; y grows downwards in images.
        pts = [(r * math.cos(a), -r * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    elif obj.shape == "cross":
        a, w = r / math.sqrt(1 + 0.35**2), 0.35 * r / math.sqrt(1 + 0.35**2)  # arm tips on the circumcircle
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
               (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]  # fmt: skip
    elif obj.shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            ang = math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(ang), -rr * math.sin(ang)))
    else:
        raise InputError(f"unknown shape {obj.shape!r}; expected one of {', '.join(SHAPES)}")
    return [(cx + x, cy + y) for x, y in pts]


def bbox(obj: ObjectSpec) -> tuple[float, float, float, float]:
    """COCO bbox [x, y, width, height] of the object's polygon, clipped to the image."""
    pts = polygon(obj)
    x0 = max(0.0, min(p[0] for p in pts))
    y0 = max(0.0, min(p[1] for p in pts))
    x1 = min(float(IMAGE_SIZE), max(p[0] for p in pts))
    y1 = min(float(IMAGE_SIZE), max(p[1] for p in pts))
    return (x0, y0, x1 - x0, y1 - y0)


def _area(pts: list[tuple[float, float]]) -> float:
    # Shoelace formula: the polygon area COCO expects in "area".
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True))) / 2


def render(spec: ImageSpec) -> Image.Image:
    """Draw one 64x64 RGB image. Pure: the same spec always gives the same pixels."""
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)  # (height, width, rgb)
    canvas[:] = spec.background_rgb
    if spec.speckle_seed is not None:
        # Light speckle: about a third of the pixels move by up to +-20 per channel.
        rng = np.random.default_rng(spec.speckle_seed)
        noise = rng.integers(-20, 21, size=canvas.shape, dtype=np.int16)
        mask = rng.random((IMAGE_SIZE, IMAGE_SIZE, 1)) < 0.35
        canvas += noise * mask
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in (spec.main, spec.distractor):
        if obj is None:
            continue
        if obj.shape == "circle":
            # A true ellipse is smoother than the 32-gon used for the segmentation.
            draw.ellipse(
                (obj.cx - obj.radius, obj.cy - obj.radius, obj.cx + obj.radius, obj.cy + obj.radius),
                fill=obj.rgb,
            )
        else:
            draw.polygon(polygon(obj), fill=obj.rgb)
    return img


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)
    return (r, g, b)


def _sample_one(rng: np.random.Generator, distractor_fraction: float, speckle_fraction: float) -> ImageSpec:
    background = str(rng.choice(list(BACKGROUNDS)))
    allowed = [c for c in COLOURS if c not in _FORBIDDEN_ON[background]]
    shape = str(rng.choice(SHAPES))
    colour = str(rng.choice(allowed))
    radius = float(rng.integers(MAIN_RADIUS[0], MAIN_RADIUS[1] + 1))
    has_distractor = rng.random() < distractor_fraction
    speckle_seed = int(rng.integers(2**31)) if rng.random() < speckle_fraction else None

    distractor = None
    if has_distractor:
        d_shape = str(rng.choice([s for s in SHAPES if s != shape]))
        d_colour = str(rng.choice([c for c in allowed if c != colour]))
        d_radius = float(rng.integers(DISTRACTOR_RADIUS[0], DISTRACTOR_RADIUS[1] + 1))
        sx, sy = (int(v) for v in rng.choice([-1, 1], size=2))  # corner: -1 = left/top, +1 = right/bottom
        margin = d_radius + 1
        dx = margin if sx < 0 else IMAGE_SIZE - margin
        dy = margin if sy < 0 else IMAGE_SIZE - margin
        distractor = ObjectSpec(
            d_shape, d_colour, _jitter(rng, COLOURS[d_colour], COLOUR_JITTER), dx, dy, d_radius
        )
        # The main object keeps clear of the distractor: shift it away from that corner and,
        # where the circumcircles would still touch, shrink it.
        shift = float(rng.integers(2, 5))
        cx, cy = IMAGE_SIZE / 2 - sx * shift, IMAGE_SIZE / 2 - sy * shift
        gap = math.hypot(cx - dx, cy - dy) - d_radius - 2
        radius = float(min(radius, math.floor(gap)))
    else:
        cx, cy = (IMAGE_SIZE / 2 + float(v) for v in rng.integers(-3, 4, size=2))
    # Keep the main object inside the frame.
    radius = min(radius, cx, cy, IMAGE_SIZE - cx, IMAGE_SIZE - cy)
    main = ObjectSpec(shape, colour, _jitter(rng, COLOURS[colour], COLOUR_JITTER), cx, cy, radius)
    return ImageSpec(
        main, background, _jitter(rng, BACKGROUNDS[background], BACKGROUND_JITTER), speckle_seed, distractor
    )


def sample_specs(
    rng: np.random.Generator,
    n: int,
    distractor_fraction: float = DISTRACTOR_FRACTION,
    speckle_fraction: float = SPECKLE_FRACTION,
) -> list[ImageSpec]:
    """Draw ``n`` image specs from ``rng`` (shapes, colours and backgrounds uniform)."""
    return [_sample_one(rng, distractor_fraction, speckle_fraction) for _ in range(n)]


def split_rng(split: str, seed: int) -> np.random.Generator:
    """The generator for one split: different splits of the same seed never share a stream."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def coco_documents(specs: list[ImageSpec], seed: int, split: str) -> dict[str, dict]:
    """The three COCO JSON documents for a list of specs (image ids start at 1)."""
    info = {
        "description": "CLIP Attention Lab synthetic shapes",
        "version": str(DATA_VERSION),
        "split": split,
        "seed": seed,
    }
    images = [
        {
            "id": i,
            "file_name": file_name(i),
            "width": IMAGE_SIZE,
            "height": IMAGE_SIZE,
            "background": s.background,
        }
        for i, s in enumerate(specs, start=1)
    ]
    shape_ids = {s: k for k, s in enumerate(SHAPES, start=1)}
    attr_ids = {a: k for k, a in enumerate(attribute_names(), start=1)}

    def ann(ann_id: int, image_id: int, obj: ObjectSpec, category_id: int) -> dict:
        pts = polygon(obj)
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [round(v, 2) for v in bbox(obj)],
            "area": round(_area(pts), 2),
            "iscrowd": 0,
            "segmentation": [[round(v, 2) for p in pts for v in p]],
            "attributes": {"colour": obj.colour},
        }

    instances, attributes, captions = [], [], []
    for image_id, s in enumerate(specs, start=1):
        instances.append(ann(len(instances) + 1, image_id, s.main, shape_ids[s.main.shape]))
        if s.distractor is not None:
            instances.append(ann(len(instances) + 1, image_id, s.distractor, shape_ids[s.distractor.shape]))
        attributes.append(ann(image_id, image_id, s.main, attr_ids[s.label]))
        captions.append({"id": image_id, "image_id": image_id, "caption": caption(s)})
    return {
        f"instances_{split}.json": {
            "info": info, "licenses": [], "images": images, "annotations": instances,
            "categories": [{"id": k, "name": s, "supercategory": "shape"} for s, k in shape_ids.items()],
        },
        f"instances_attributes_{split}.json": {
            "info": info, "licenses": [], "images": images, "annotations": attributes,
            "categories": [{"id": k, "name": a, "supercategory": a.split()[1]} for a, k in attr_ids.items()],
        },
        f"captions_{split}.json": {"info": info, "licenses": [], "images": images, "annotations": captions},
    }  # fmt: skip


def _read_manifest(out_dir: Path) -> dict:
    path = out_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def is_current(out_dir: Path, split: str, n: int, seed: int) -> bool:
    """True when ``out_dir`` already holds this split made from the same n, seed and data version."""
    entry = _read_manifest(out_dir).get(split)
    files = [
        out_dir / "annotations" / name
        for name in (
            f"instances_{split}.json",
            f"instances_attributes_{split}.json",
            f"captions_{split}.json",
        )
    ]
    return (
        entry == {"n": n, "seed": seed, "version": DATA_VERSION}
        and (out_dir / split).is_dir()
        and all(f.is_file() for f in files)
    )


def write_coco(out_dir: Path, split: str, n: int, seed: int, progress: bool = False) -> bool:
    """Write one split to ``out_dir``; returns False (and touches nothing) when it is already current.

    Everything is built in a temporary folder inside ``out_dir`` and moved into place at the end;
    the manifest is updated last, so an interrupted run is redone on the next call.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if n < 1:
        raise InputError(f"--n-{split} must be at least 1, got {n}")
    out_dir = Path(out_dir)
    if is_current(out_dir, split, n, seed):
        return False
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    specs = sample_specs(split_rng(split, seed), n)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=out_dir))
    try:
        (tmp / split).mkdir()
        for image_id, spec in enumerate(
            tqdm(specs, desc=f"rendering {split}", disable=not progress), start=1
        ):
            render(spec).save(tmp / split / file_name(image_id), format="PNG")
        docs = coco_documents(specs, seed, split)
        for name, doc in docs.items():
            (tmp / name).write_text(json.dumps(doc, separators=(",", ":")))

        (out_dir / "annotations").mkdir(exist_ok=True)
        # Forget the split in the manifest first: if we stop between the moves below, the next
        # run sees a stale split and regenerates it.
        manifest = _read_manifest(out_dir)
        manifest.pop(split, None)
        write_json_atomic(out_dir / "manifest.json", manifest, indent=2, sort_keys=True)
        if (out_dir / split).exists():
            shutil.rmtree(out_dir / split)
        os.replace(tmp / split, out_dir / split)
        for name in docs:
            os.replace(tmp / name, out_dir / "annotations" / name)
        manifest[split] = {"n": n, "seed": seed, "version": DATA_VERSION}
        write_json_atomic(out_dir / "manifest.json", manifest, indent=2, sort_keys=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compute.demo.data",
        description="Write the demo's synthetic shapes dataset (COCO instances, attribute instances and captions).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/demo/shapes")
    parser.add_argument(
        "--n-val", type=int, default=600, help="images in the held-out val split (default 600)"
    )
    parser.add_argument("--n-train", type=int, default=0, help="images in the train split (default 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        for split, n in (("val", args.n_val), ("train", args.n_train)):
            if split == "train" and n == 0:
                continue
            if write_coco(args.out, split, n, args.seed, progress=True):
                print(f"wrote {n} {split} images to {args.out / split}")
            else:
                print(f"{args.out / split} already holds {n} images with seed {args.seed}; nothing to do")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
