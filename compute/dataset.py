"""Images and their labels from COCO-format files (read with pycocotools).

An image's labels come from its instance annotations (category names) and, when the experiment asks,
from its captions: a prompt label such as "black cat" is an image label when one of the image's captions
says so as whole words. Caption labels are the most specific phrases: an image whose captions say "a
black cat on a sink" and "a cat in the bathroom" carries "black cat" but not "cat", since "cat" is part
of a phrase it carries; so a prompt is correct only when it names the most specific true description,
as the bold caption of the study's Figure 5.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from compute.config import DatasetConfig
from compute.errors import InputError


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    path: Path
    labels: tuple[str, ...]


class ImageLoadError(Exception):
    """One image could not be read; the run records it in ``errors`` and goes on."""


def _load_json_coco(path: Path, what: str):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} file {path} is not valid JSON ({e})") from None
    except (KeyError, TypeError, AssertionError) as e:
        raise InputError(f"{what} file {path} is not in COCO format (problem with {e})") from None
    if "images" not in coco.dataset:
        raise InputError(f"{what} file {path} is not in COCO format (no 'images' list)")
    return coco


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """``phrase`` as whole words in any case and spacing: "black cat" matches "A Black  cat." but not
    "black cats" nor "black catalog"."""
    words = [re.escape(w) for w in phrase.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def caption_phrases(captions: list[str], phrases: list[str]) -> set[str]:
    """The most specific of ``phrases`` that the captions say (whole words, any case)."""
    found = {p for p in set(phrases) if any(phrase_pattern(p).search(c) for c in captions)}
    # Drop a phrase that is part of another found phrase ("cat" when "black cat" is found).
    return {p for p in found if not any(q != p and phrase_pattern(p).search(q) for q in found)}


def says_any(captions: list[str], phrases: list[str]) -> bool:
    return any(phrase_pattern(p).search(c) for p in phrases for c in captions)


def load_dataset(cfg: DatasetConfig, prompt_labels: list[str]) -> list[ImageRecord]:
    """The run's images, sorted by id and limited, with their labels. Raises InputError on bad input."""
    if not cfg.images.is_dir():
        raise InputError(f"images directory not found: {cfg.images}")
    coco = _load_json_coco(cfg.annotations, "annotations")
    cats = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}

    image_ids = sorted(coco.getImgIds())
    if cfg.categories:
        known = set(cats.values())
        unknown = [c for c in cfg.categories if c not in known]
        if unknown:
            raise InputError(
                f"unknown category {unknown[0]!r} in dataset.categories "
                f"(the annotations have: {', '.join(sorted(known)[:20])}{'...' if len(known) > 20 else ''})"
            )
        keep: set[int] = set()
        for cat_id in coco.getCatIds(catNms=cfg.categories):
            keep.update(coco.getImgIds(catIds=[cat_id]))
        image_ids = [i for i in image_ids if i in keep]

    captions_by_image: dict[int, list[str]] = {}
    if cfg.captions is not None:
        caps = _load_json_coco(cfg.captions, "captions")
        for ann in caps.dataset.get("annotations", []):
            captions_by_image.setdefault(ann["image_id"], []).append(str(ann.get("caption", "")))
        if cfg.caption_contains:
            image_ids = [i for i in image_ids if says_any(captions_by_image.get(i, []), cfg.caption_contains)]

    if cfg.limit is not None:
        image_ids = image_ids[: cfg.limit]
    if not image_ids:
        raise InputError(f"no images match the dataset selection in {cfg.annotations}")

    records = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        labels: set[str] = set()
        if "categories" in cfg.labels:
            labels.update(cats[a["category_id"]] for a in coco.imgToAnns.get(image_id, []) if a["category_id"] in cats)
        if "captions" in cfg.labels:
            labels.update(caption_phrases(captions_by_image.get(image_id, []), prompt_labels))
        file_name = info.get("file_name")
        if not file_name:
            raise InputError(f"image {image_id} in {cfg.annotations} has no file_name")
        records.append(ImageRecord(int(image_id), file_name, cfg.images / file_name, tuple(sorted(labels))))
    return records


def open_image(path: Path) -> Image.Image:
    """Decode an image as RGB. Raises ImageLoadError when it is missing or cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"cannot decode {path.name}: {e}") from None
