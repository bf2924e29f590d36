"""Shared fixtures: a tiny random CLIP saved to disk, a tiny COCO-format dataset, experiment files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["cat", "dog", "bird", "car"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A 12-layer random CLIP (width 32, 32 px, patch 8: 17 tokens) in the save_pretrained layout."""
    from compute.random_models import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip", layers=12, width=32, heads=4)


def make_coco(root: Path, n: int = 10, seed: int = 0, broken: tuple[int, ...] = ()) -> Path:
    """``n`` small real JPEGs with cat/dog annotations (some with both, one with a bird), COCO files.

    Image ids in ``broken`` get a corrupt file; an id listed in the JSON but absent is made by the caller.
    """
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns, caps = [], [], []
    for i in range(1, n + 1):
        name = f"{i:012d}.jpg"
        colour = tuple(rng.randrange(256) for _ in range(3))
        im = Image.new("RGB", (40, 30), colour)
        for _ in range(20):
            x, y = rng.randrange(40), rng.randrange(30)
            im.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
        path = root / "images" / name
        if i in broken:
            path.write_bytes(b"not a jpeg at all")
        else:
            im.save(path, quality=90)
        images.append({"id": i, "file_name": name, "width": 40, "height": 30})
        cat_ids = [1 if i % 2 else 2] + ([2 if i % 2 else 1] if i % 5 == 0 else []) + ([3] if i == 7 else [])
        for c in cat_ids:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [1, 1, 10, 10],
                         "area": 100.0, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]})
        word = "black cat" if i % 3 == 0 else ("cat" if i % 2 else "dog")
        caps.append({"id": i, "image_id": i, "caption": f"a {word} sitting on a sink"})
    cats = [{"id": k + 1, "name": name, "supercategory": "thing"} for k, name in enumerate(CATEGORIES)]
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "annotations" / "captions.json").write_text(
        json.dumps({"images": images, "annotations": caps}))
    return root


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    return make_coco(tmp_path / "coco")


PROMPTS = [("a photo of a dog", "dog"), ("a photo of a cat", "cat"), ("a photo of a bird", "bird"),
           ("a photo of a car", "car")]


def experiment_text(model: Path, coco: Path, db: Path, *, name: str = "t", sweep: str = "paper",
                    extra: tuple[str, ...] = (), prompts=PROMPTS, categories=("cat", "dog"),
                    batch_size: int = 4, more: str = "") -> str:
    lines = [
        f'name = "{name}"',
        "[model]",
        f'clip = "{model}"',
        'device = "cpu"',
        f"batch_size = {batch_size}",
        "[dataset]",
        f'images = "{coco / "images"}"',
        f'annotations = "{coco / "annotations" / "instances.json"}"',
        f"categories = {json.dumps(list(categories))}",
        "[ablations]",
        f'sweep = "{sweep}"',
        f"extra = {json.dumps(list(extra))}",
        "[store]",
        f'db = "{db}"',
    ]
    for text, label in prompts:
        lines += ["[[prompts]]", f'text = "{text}"', f'label = "{label}"']
    return "\n".join(lines) + "\n" + more


def write_experiment(path: Path, *args, **kwargs) -> Path:
    path.write_text(experiment_text(*args, **kwargs))
    return path


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m compute ARGS`` as a real process, from the repo root, offline."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "compute", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
