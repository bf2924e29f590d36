"""Images and their labels from COCO-format files (read with pycocotools).

An image's labels come from its instance annotations (category names) and, when the experiment asks,
from its captions: a prompt label such as "black cat" is an image label when one of the image's captions
says so as whole words. Caption labels are the most specific phrases: an image whose captions say "a
black cat on a sink" and "a cat in the bathroom" carries "black cat" but not "cat", since "cat" is part
of a phrase it carries; so a prompt is correct only when it names the most specific true description,
as the bold caption of the study's Figure 5.

The annotation files pass ``compute.validation.check_coco`` before anything else reads them. Every
prompt label must be one some image of the whole file could carry (a category or supercategory name, or
with caption labels a phrase some caption says): a typo is an error naming the closest known labels. An
image file must lie inside the images folder once links are followed; one that does not is not read and
is recorded as a load error, like an unreadable file.

Decoding (``decode``, ``open_image``) reads regular files only: a FIFO, a device or a socket would block
or never end, so it is an error row ("not a regular file"), checked after links are resolved and again on
the opened descriptor. An image of more than MAX_PIXELS pixels is refused before its pixels are decoded.
``to_rgb`` is the one conversion to RGB everything uses (the run's workers, captions, the Image page): the
image processor's own (transformers' ``convert_to_rgb``: transparency composited onto white), except that
images of more than 8 bits per sample are scaled to 8 bits first (``eight_bit``) where the processor would
clip them to white.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from compute.errors import InputError
from compute.validation import NotRegularFile, check_coco, load_json, open_regular

if TYPE_CHECKING:  # only named in annotations: compute.config imports the ablations and torch
    from compute.config import DatasetConfig


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    path: Path  # images folder / file_name, as written (links not followed)
    labels: tuple[str, ...]
    root: Path | None = None  # the images folder the file must stay inside (None: not checked)

    @property
    def stored_path(self) -> str:
        """The path the store lists for this image (the dashboard shows thumbnails from it): empty for a
        file outside the images folder, which is never read."""
        if self.root is not None:
            try:
                inside_path(self.path, self.root)
            except ImageLoadError:
                return ""
        return str(self.path)


class ImageLoadError(Exception):
    """One image could not be read; the run records it in ``errors`` and goes on."""


def _load_json_coco(path: Path, what: str):
    """A checked COCO file, indexed by pycocotools (which then meets only well-formed input)."""
    from pycocotools.coco import COCO

    data = load_json(path, what)
    check_coco(data, path, what)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
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
    supercategories = {c["supercategory"] for c in coco.dataset.get("categories", []) if c.get("supercategory")}

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
    check_labels(cfg, prompt_labels, set(cats.values()) | supercategories, captions_by_image)

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
        file_name = info["file_name"]  # a non-empty string: check_coco
        records.append(ImageRecord(int(image_id), file_name, cfg.images / file_name, tuple(sorted(labels)),
                                   cfg.images))
    return records


def check_labels(cfg: DatasetConfig, prompt_labels: list[str], names: set[str],
                 captions_by_image: dict[int, list[str]]) -> None:
    """InputError for the first prompt label no image of the whole dataset could carry, with the closest
    labels it knows. ``names``: the category and supercategory names of the annotations."""
    problems = label_problems(cfg, prompt_labels, names, captions_by_image)
    if problems:
        raise InputError(next(iter(problems.values())))


def label_problems(cfg: DatasetConfig, prompt_labels: list[str], names: set[str],
                   captions_by_image: dict[int, list[str]]) -> dict[str, str]:
    """Label -> its message, for every prompt label no image of the whole dataset could carry, naming the
    closest labels it knows (``check_labels``' messages, every one of them)."""
    known = names if "categories" in cfg.labels else set()
    said = "\x00".join(c for caps in captions_by_image.values() for c in caps) if "captions" in cfg.labels else ""
    problems = {}
    for label in dict.fromkeys(prompt_labels):
        if label in known or (said and phrase_pattern(label).search(said)):
            continue
        candidates = set(known)
        if said:  # phrases of the label's length that the captions say
            n = len(label.split())
            words = re.findall(r"\w+", said.lower())
            candidates |= {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
        close = difflib.get_close_matches(label, sorted(candidates), n=3, cutoff=0.6)
        sources = [f"categories of {cfg.annotations}" if "categories" in cfg.labels else "",
                   f"captions of {cfg.captions}" if "captions" in cfg.labels else ""]
        problems[label] = (
            f"prompt label {label!r} is carried by no image: the {' or '.join(s for s in sources if s)} never "
            f"name it; " + (f"closest known labels: {', '.join(repr(c) for c in close)}" if close else
                            "no known label is close (a label is a category name, or a phrase of the captions "
                            "with dataset.labels = [\"captions\"])"))
    return problems


def label_vocabulary(cfg: DatasetConfig) -> tuple[set[str], dict[int, list[str]]]:
    """What a prompt label is checked against: the category and supercategory names of the annotations file,
    and with caption labels the captions of every image. Reads the files; InputError when one cannot be read."""
    data = load_json(cfg.annotations, "annotations")
    check_coco(data, cfg.annotations, "annotations")
    names = {c["name"] for c in data.get("categories", [])}
    names |= {c["supercategory"] for c in data.get("categories", []) if c.get("supercategory")}
    captions_by_image: dict[int, list[str]] = {}
    if "captions" in cfg.labels and cfg.captions is not None:
        caps = load_json(cfg.captions, "captions")
        check_coco(caps, cfg.captions, "captions")
        for ann in caps.get("annotations", []):
            captions_by_image.setdefault(ann["image_id"], []).append(str(ann.get("caption", "")))
    return names, captions_by_image


def prompt_label_problems(cfg: DatasetConfig, prompt_labels: list[str],
                          vocabulary: tuple[set[str], dict[int, list[str]]] | None = None) -> dict[str, str]:
    """What ``load_dataset`` checks of prompt labels, for prompts typed elsewhere (the Prompt lab): every label
    no image of the dataset's files could carry, each with the closest known labels. ``vocabulary``:
    ``label_vocabulary(cfg)`` if already read; else it is read (InputError when a file cannot be)."""
    names, captions_by_image = vocabulary if vocabulary is not None else label_vocabulary(cfg)
    return label_problems(cfg, prompt_labels, names, captions_by_image)


def uncarried_labels(records: list[ImageRecord], prompt_labels: list[str]) -> list[str]:
    """Prompt labels (known to the dataset) that none of the selected images carries: their prompts can
    never be correct. Legitimate as distractors ("a photo of a car" among cats and dogs); worth a warning."""
    carried = {label for r in records for label in r.labels}
    return [label for label in dict.fromkeys(prompt_labels) if label not in carried]


def inside_path(path: Path, root: Path) -> Path:
    """``path`` with every link followed, when it lies inside ``root`` (its links followed too); else
    ImageLoadError: the file is not read."""
    try:
        real, top = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a link loop, a name too long
        raise ImageLoadError(f"cannot resolve {path.name}: {e}") from None
    if not real.is_relative_to(top):
        name = path.relative_to(root) if path.is_relative_to(root) else path
        raise ImageLoadError(f"{str(name)!r} resolves outside the images folder {root}: not read")
    return real


# At most 8192 x 8192 = 67 MP per image. Generous for photographs (a 61 MP full-frame camera makes 9504 x
# 6336) and below PIL's own warning threshold (89.5 MP), so PIL never warns about an image we accept; a
# worker holding one decoded image, its RGBA copy and its RGB result stays under about 700 MB. A "bomb" (a
# small file declaring 12000 x 12000) is refused from its header, before its pixels are decoded.
MAX_PIXELS = 8192 * 8192

def _open_regular(path: Path, name: str) -> int:
    """A read descriptor of ``path`` when it is a regular file (compute.validation.open_regular), else
    ImageLoadError saying why."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {path}") from None
    except NotRegularFile as e:
        raise ImageLoadError(f"{name} is not a regular file ({e.kind}): not read") from None
    except OSError as e:  # a link loop, a name too long, a folder without permission
        raise ImageLoadError(f"cannot read {name}: {e.strerror or e}") from None


def _too_many_pixels(name: str, pixels: int | None, size: tuple[int, int] | None = None) -> ImageLoadError:
    shape = f"{size[0]:,} x {size[1]:,} = " if size else ""
    count = f"{pixels:,} pixels" if pixels is not None else "more pixels than PIL allows"
    return ImageLoadError(f"{name} is {shape}{count}, more than the {MAX_PIXELS:,} an image may have "
                          f"(compute.dataset.MAX_PIXELS): not decoded")


def decode(path: str | os.PathLike, root: Path | None = None, draft: int | None = None) -> Image.Image:
    """The image at ``path``, decoded in its own mode. ImageLoadError when it is missing, not a regular
    file, larger than MAX_PIXELS, cannot be decoded, or (with ``root``) lies outside the images folder
    ``root`` once links are followed. ``draft``: a thumbnail's side; formats that can (JPEG) decode at a
    reduced scale no smaller than it."""
    path = Path(path)
    real = inside_path(path, root) if root is not None else path
    name = path.name or str(path)
    fd = _open_regular(real, name)
    try:
        with os.fdopen(fd, "rb") as f:
            with warnings.catch_warnings():  # PIL's bomb warning is an error here, never printed
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(f)
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise _too_many_pixels(name, w * h, (w, h))
            if draft is not None:
                im.draft(None, (draft, draft))
            im.load()  # the first frame's pixels, in memory: the image outlives its file
            return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_many_pixels(name, int(found.group(1)) if found else None) from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"cannot decode {name}: not an image format PIL reads") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for data it cannot decode
        raise ImageLoadError(f"cannot decode {name}: {e}") from None


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8 bits per sample: 16-bit greyscale (``I;16``, ``I;16B``...) and 32-bit integer (``I``,
    taken as 16-bit data, as older PIL decodes 16-bit files) become ``L`` with the high byte of each sample
    (x >> 8, as PIL itself decodes 16-bit RGB files), values outside 0-65535 clipped first. A transparent
    grey value becomes an alpha channel (``LA``). Other modes are returned as they are."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    wide = np.asarray(image).astype(np.int64)  # (h, w)
    grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    out = Image.fromarray(grey)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(wide == transparent, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha)))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB image the model is shown: transformers' ``convert_to_rgb`` (an alpha band or a transparent
    colour composited onto white, everything else PIL's ``convert("RGB")``) after ``eight_bit``."""
    image = eight_bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike, root: Path | None = None) -> Image.Image:
    """Decode an image as the model's RGB (``decode``, then ``to_rgb``). Raises ImageLoadError when it cannot
    be used (see ``decode``)."""
    image = decode(path, root)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as e:  # a mode PIL cannot convert
        raise ImageLoadError(f"cannot convert {Path(path).name} ({image.mode}) to RGB: {e}") from None
