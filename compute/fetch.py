"""``python -m compute fetch coco``: the COCO annotations plus only the images a selection needs.

Layout written under ``--out`` (experiment files point at it)::

    OUT/annotations/instances_val2017.json   extracted from the official archive
    OUT/annotations/captions_val2017.json
    OUT/val2017/000000039769.jpg             only the selected images
    OUT/fetch_manifest.json                  split, selection, size and sha256 of every image
    OUT/.cache/annotations_trainval2017.zip  kept so the archive is downloaded once

Every file is written to ``NAME.part`` and renamed only once it is complete and checked, so an
interrupted run never leaves a half file under its final name; running again resumes: the archive
continues with an HTTP Range request, complete images are skipped, broken ones are fetched again.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from compute.dataset import phrase_pattern
from compute.download import (
    CHUNK_BYTES,
    DownloadError,
    download_archive,
    download_image,
    file_entry,
    image_problem,
    with_retries,
)
from compute.errors import InputError
from compute.files import check_out_folder, write_json_atomic

DEFAULT_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("val2017", "train2017")
ARCHIVE_PATH = "annotations/annotations_trainval2017.zip"  # relative to the base URL
MANIFEST_NAME = "fetch_manifest.json"


@dataclass
class FetchResult:
    """What one fetch did; ``failed`` holds (relative path, reason) per image that could not be fetched."""

    out: Path
    split: str
    selected: int
    fetched: int = 0
    present: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    fetched_bytes: int = 0
    retry_helps: bool = False  # some failure was transient (a broken connection): running again may fetch it

    def summary(self) -> str:
        return (
            f"{self.split}: {self.selected} images selected; fetched {self.fetched}, "
            f"already present {self.present}, failed {len(self.failed)} (in {self.out})"
        )


# --- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fetch`` verb's arguments to ``parser``."""
    parser.add_argument("dataset", choices=["coco"], help="dataset to fetch (only 'coco' for now)")
    parser.add_argument("--split", choices=SPLITS, default="val2017", help="COCO split (default: val2017)")
    parser.add_argument(
        "--categories",
        default=None,
        metavar="NAMES",
        help="comma list of COCO category names, e.g. 'cat,dog': keep images with any of them",
    )
    parser.add_argument(
        "--caption-contains",
        default=None,
        metavar="TEXT",
        help="keep images with a caption containing TEXT as a whole phrase (case-insensitive); "
        "with --categories, images must match both",
    )
    parser.add_argument("--out", type=Path, default=Path("data/coco"), metavar="DIR",
                        help="output folder (default: data/coco)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL",
                        help=f"server holding the COCO tree (default: {DEFAULT_BASE_URL})")
    parser.add_argument(
        "--workers", type=int, default=8, metavar="N", help="parallel image downloads (default: 8)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="keep only the first N images by id"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``fetch`` from parsed arguments: 0 when every selected image is present, 1 if some failed.

    Bad input and an unreachable server raise ``InputError`` (the dispatcher prints it, exit 2).
    """
    categories = None
    if args.categories is not None:
        categories = [name.strip() for name in args.categories.split(",") if name.strip()]
        if not categories:
            raise InputError("--categories is empty: give COCO category names such as 'cat,dog'")
    result = fetch_coco(
        args.out,
        split=args.split,
        categories=categories,
        caption_contains=args.caption_contains,
        limit=args.limit,
        base_url=args.base_url,
        workers=args.workers,
    )
    for rel, reason in result.failed[:10]:
        print(f"failed: {rel}: {reason}", file=sys.stderr)
    if len(result.failed) > 10:
        print(f"failed: ... and {len(result.failed) - 10} more", file=sys.stderr)
    print(result.summary())
    if result.failed:
        if result.retry_helps:
            print("run the same command again to retry the failed images", file=sys.stderr)
        else:  # a 404, a file that is not an image: the same request gives the same answer
            print("the server answered every failed image for good: running again will not fetch them",
                  file=sys.stderr)
        return 1
    return 0


# --- the fetch ----------------------------------------------------------------------------------


def fetch_coco(
    out: Path | str,
    split: str = "val2017",
    categories: list[str] | None = None,
    caption_contains: str | None = None,
    limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    workers: int = 8,
    verbose: bool = True,
) -> FetchResult:
    """Fetch the ``split`` annotations and the selected images into ``out``; see the module docstring."""
    out = Path(out)
    base = _check_base_url(base_url)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if caption_contains is not None and not caption_contains.strip():
        raise InputError("--caption-contains is empty")
    check_out_folder(out)  # before anything is downloaded

    instances_path, captions_path = _ensure_annotations(out, split, base, verbose)
    instances = _load_json(instances_path)
    captions = _load_json(captions_path) if caption_contains is not None else {"annotations": []}
    images = select_images(instances, captions, categories, caption_contains, limit)
    if not images:
        raise InputError(f"no {split} image matches {_describe_selection(categories, caption_contains)}")
    for image in images:  # every name checked before the first download
        if unsafe_name(image["file_name"]):  # never let an annotation file write outside OUT/split
            raise InputError(f"image {image['id']} has an unsafe file_name {image['file_name']!r}: a file name "
                             f"must be a plain name, not empty, '.', '..' or a path")
    if verbose:
        print(
            f"selected {len(images)} of {len(instances['images'])} {split} images "
            f"({_describe_selection(categories, caption_contains)}"
            f"{f', first {limit} by id' if limit is not None else ''})",
            file=sys.stderr,
        )

    manifest_path = out / MANIFEST_NAME
    known = _read_manifest(manifest_path)
    result = FetchResult(out=out, split=split, selected=len(images))
    entries = _fetch_images(images, out, split, base, known, workers, verbose, result)
    write_json_atomic(
        manifest_path,
        {
            "dataset": "coco",
            "split": split,
            "base_url": base,
            "selection": {"categories": categories, "caption_contains": caption_contains, "limit": limit},
            "count": len(images),
            "failed": [rel for rel, _ in result.failed],
            "files": dict(sorted(entries.items())),
        },
        indent=1,
    )
    return result


def select_images(
    instances: dict[str, Any],
    captions: dict[str, Any],
    categories: list[str] | None = None,
    caption_contains: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The image entries of ``instances`` that the selection keeps, sorted by id.

    ``categories``: keep images with any annotation of these names (unknown names are an
    ``InputError`` listing close matches). ``caption_contains``: keep images with a caption that holds
    the phrase as whole words, case-insensitively. Both: the intersection. Neither: every image.
    ``limit``: the first N by id.
    """
    images = sorted(instances["images"], key=lambda image: image["id"])
    if categories is not None:
        names = {category["name"].lower(): category["id"] for category in instances["categories"]}
        wanted = set()
        for name in categories:
            key = name.strip().lower()
            if key not in names:
                close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(names))}"
                raise InputError(f"unknown COCO category {name!r}: {hint}")
            wanted.add(names[key])
        keep = {ann["image_id"] for ann in instances["annotations"] if ann["category_id"] in wanted}
        images = [image for image in images if image["id"] in keep]
    if caption_contains is not None:
        # Whole words: "black cat" matches "A Black  cat." but not "black cats" nor "black catalog".
        pattern = phrase_pattern(caption_contains)
        keep = {ann["image_id"] for ann in captions["annotations"] if pattern.search(ann["caption"])}
        images = [image for image in images if image["id"] in keep]
    if limit is not None:
        images = images[:limit]
    return images


def _describe_selection(categories: list[str] | None, caption_contains: str | None) -> str:
    parts = []
    if categories is not None:
        parts.append(f"categories {', '.join(categories)}")
    if caption_contains is not None:
        parts.append(f"captions containing {caption_contains!r}")
    return " and ".join(parts) or "all images"


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--base-url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {base_url!r}")
    return base_url.rstrip("/")


def _offline_error(base: str, error: DownloadError) -> InputError:
    return InputError(f"cannot reach {base} ({error}): check your network or --base-url")


# --- annotations --------------------------------------------------------------------------------


def _ensure_annotations(out: Path, split: str, base: str, verbose: bool) -> tuple[Path, Path]:
    """Paths of the split's instances and captions JSON, extracting them from the archive if missing."""
    members = [f"annotations/instances_{split}.json", f"annotations/captions_{split}.json"]
    targets = [out / member for member in members]  # the archive's own layout is the output layout
    missing = [
        (member, target) for member, target in zip(members, targets, strict=True) if not target.is_file()
    ]
    if missing:
        archive = out / ".cache" / Path(ARCHIVE_PATH).name
        if not (archive.is_file() and zipfile.is_zipfile(archive)):
            url = f"{base}/{ARCHIVE_PATH}"
            try:
                with_retries(lambda: download_archive(url, archive, verbose))
            except DownloadError as error:
                if error.unreachable:
                    raise _offline_error(base, error) from error
                hint = "run again to resume" if error.retry else "check --base-url"
                raise InputError(f"cannot download {url} ({error}): {hint}") from error
        _extract(archive, missing, verbose)
    return targets[0], targets[1]


def _extract(archive: Path, members: list[tuple[str, Path]], verbose: bool) -> None:
    """Extract only ``members`` (the other splits' and keypoint files are large and unused)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member, target in members:
                if member not in names:
                    raise InputError(f"{archive} has no {member}: delete it and run again")
                if verbose:
                    print(f"extracting {member}", file=sys.stderr)
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                with zf.open(member) as source, open(part, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)  # reading checks the member's CRC
                os.replace(part, target)
    except zipfile.BadZipFile as error:
        raise InputError(f"{archive} is damaged ({error}): delete it and run again") from error


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error}): delete it and run again") from error


# --- images -------------------------------------------------------------------------------------


def _fetch_images(
    images: list[dict[str, Any]],
    out: Path,
    split: str,
    base: str,
    known: dict[str, dict[str, Any]],
    workers: int,
    verbose: bool,
    result: FetchResult,
) -> dict[str, dict[str, Any]]:
    """Make every selected image present and checked; fills ``result``, returns the manifest entries."""
    entries: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    bar = tqdm(total=len(images), unit="img", desc=f"{split} images", disable=None if verbose else True)
    try:
        futures = {}
        for image in images:
            name = image["file_name"]
            rel = f"{split}/{name}"
            expected = (image["width"], image["height"]) if "width" in image and "height" in image else None
            job = (f"{base}/{rel}", out / rel, expected, known.get(rel))
            futures[pool.submit(_ensure_image, *job)] = rel
        for future in as_completed(futures):
            rel = futures[future]
            try:
                fetched, entry = future.result()
            except DownloadError as error:
                if error.unreachable and result.fetched == 0:
                    # No image came through in this run and the host cannot be reached: we are offline.
                    raise _offline_error(base, error) from error
                result.failed.append((rel, str(error)))
                result.retry_helps = result.retry_helps or error.retry
            else:
                entries[rel] = entry
                if fetched:
                    result.fetched += 1
                    result.fetched_bytes += entry["size"]
                else:
                    result.present += 1
            bar.update(1)
            bar.set_postfix_str(tqdm.format_sizeof(result.fetched_bytes, "B"))
    finally:
        # On an error or Ctrl-C, drop the queued downloads instead of running them all first.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    result.failed.sort()
    return entries


def unsafe_name(name: object) -> bool:
    """True unless ``name`` is a plain file name: a string, not empty, not '.' or '..', no folder in it."""
    if not isinstance(name, str) or name.strip() in ("", ".", ".."):
        return True
    return Path(name).name != name or "\x00" in name


def _ensure_image(
    url: str, dest: Path, expected: tuple[int, int] | None, known: dict[str, Any] | None
) -> tuple[bool, dict[str, Any]]:
    """(fetched now?, manifest entry) for one image: keep a good local copy, else download it."""
    if dest.is_file():
        entry = file_entry(dest)
        if known is not None:
            # The manifest says what this file was when we checked it: size and checksum suffice.
            if entry == {"size": known.get("size"), "sha256": known.get("sha256")}:
                return False, entry
        elif image_problem(dest, expected) is None:
            return False, entry
    with_retries(lambda: download_image(url, dest, expected))
    return True, file_entry(dest)


# --- manifest -----------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The per-file entries of an earlier fetch; an unreadable manifest only costs a full decode check."""
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


