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
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from PIL import Image
from tqdm import tqdm

from compute.errors import InputError

DEFAULT_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("val2017", "train2017")
ARCHIVE_PATH = "annotations/annotations_trainval2017.zip"  # relative to the base URL
MANIFEST_NAME = "fetch_manifest.json"

TRIES = 3
RETRY_BACKOFF_S = 0.5  # sleep before retry k is RETRY_BACKOFF_S * 2**(k-1); tests set it to 0
TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 16
USER_AGENT = "clip-attention-lab-fetch/0.1"


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

    def summary(self) -> str:
        return (
            f"{self.split}: {self.selected} images selected; fetched {self.fetched}, "
            f"already present {self.present}, failed {len(self.failed)} (in {self.out})"
        )


class _DownloadError(Exception):
    """One download went wrong. ``retry``: another try may help; ``unreachable``: no connection at all."""

    def __init__(
        self, message: str, *, retry: bool = True, unreachable: bool = False, status: int | None = None
    ):
        super().__init__(message)
        self.retry = retry
        self.unreachable = unreachable
        self.status = status


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
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/coco"),
        metavar="DIR",
        help="output folder (default: data/coco)",
    )
    parser.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"server holding the COCO tree (default: {DEFAULT_BASE_URL})",
    )
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
        print("run the same command again to retry the failed images", file=sys.stderr)
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

    instances_path, captions_path = _ensure_annotations(out, split, base, verbose)
    instances = _load_json(instances_path)
    captions = _load_json(captions_path) if caption_contains is not None else {"annotations": []}
    images = select_images(instances, captions, categories, caption_contains, limit)
    if not images:
        raise InputError(f"no {split} image matches {_describe_selection(categories, caption_contains)}")
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
    _write_json_atomic(
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
        words = caption_contains.split()
        pattern = re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE)
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


def _offline_error(base: str, error: _DownloadError) -> InputError:
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
                _with_retries(lambda: _download_archive(url, archive, verbose))
            except _DownloadError as error:
                if error.unreachable:
                    raise _offline_error(base, error) from error
                hint = "run again to resume" if error.retry else "check --base-url"
                raise InputError(f"cannot download {url} ({error}): {hint}") from error
        _extract(archive, missing, verbose)
    return targets[0], targets[1]


def _download_archive(url: str, dest: Path, verbose: bool) -> None:
    """Download ``url`` to ``dest``, continuing a ``dest.part`` left by an earlier try with HTTP Range."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset)
    except _DownloadError as error:
        if error.status == 416 and zipfile.is_zipfile(part):
            os.replace(part, dest)  # the part was already whole (a run stopped just before renaming)
            return
        if error.status == 416:  # the part is longer than the file (it changed?): the next try starts over
            part.unlink()
            raise _DownloadError("the partial download does not fit the file on the server") from error
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range and sends the whole file: start over
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()  # a range we did not ask for: the safest resume is none
            raise _DownloadError(
                f"server answered Range {offset}- with {response.headers.get('Content-Range')}"
            )
        length = _content_length(response)
        dest.parent.mkdir(parents=True, exist_ok=True)  # only now: an offline run leaves nothing behind
        total = offset + length if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as sink,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=None if verbose else True,
            ) as bar,
        ):
            received = _copy(response, sink, bar.update)
    if length is not None and received != length:
        raise _DownloadError(f"connection closed after {received} of {length} bytes")
    if not zipfile.is_zipfile(part):
        part.unlink()
        raise _DownloadError(f"{url} is not a zip archive", retry=False)
    os.replace(part, dest)


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
            if Path(name).name != name:  # never let an annotation file write outside OUT/split
                raise InputError(f"image {image['id']} has an unsafe file_name {name!r}")
            rel = f"{split}/{name}"
            expected = (image["width"], image["height"]) if "width" in image and "height" in image else None
            job = (f"{base}/{rel}", out / rel, expected, known.get(rel))
            futures[pool.submit(_ensure_image, *job)] = rel
        for future in as_completed(futures):
            rel = futures[future]
            try:
                fetched, entry = future.result()
            except _DownloadError as error:
                if error.unreachable and result.fetched == 0:
                    # No image came through in this run and the host cannot be reached: we are offline.
                    raise _offline_error(base, error) from error
                result.failed.append((rel, str(error)))
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


def _ensure_image(
    url: str, dest: Path, expected: tuple[int, int] | None, known: dict[str, Any] | None
) -> tuple[bool, dict[str, Any]]:
    """(fetched now?, manifest entry) for one image: keep a good local copy, else download it."""
    if dest.is_file():
        entry = _entry(dest)
        if known is not None:
            # The manifest says what this file was when we checked it: size and checksum suffice.
            if entry == {"size": known.get("size"), "sha256": known.get("sha256")}:
                return False, entry
        elif _image_problem(dest, expected) is None:
            return False, entry
    _with_retries(lambda: _download_image(url, dest, expected))
    return True, _entry(dest)


def _download_image(url: str, dest: Path, expected: tuple[int, int] | None) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with _open(url) as response:
            length = _content_length(response)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as sink:
                received = _copy(response, sink)
        if length is not None and received != length:
            raise _DownloadError(f"connection closed after {received} of {length} bytes")
        problem = _image_problem(part, expected)
        if problem is not None:
            raise _DownloadError(f"downloaded file is not a valid image ({problem})")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)  # images are small: a retry starts over rather than resuming


def _image_problem(path: Path, expected: tuple[int, int] | None) -> str | None:
    """None when ``path`` decodes fully as an image of the expected size, else what is wrong."""
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums where the format has them (PNG)
        with Image.open(path) as image:  # verify() leaves the image unusable, hence a second open
            image.load()  # a truncated JPEG passes verify() but fails a full decode
            size = image.size
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        return f"{type(error).__name__}: {error}"
    if expected is not None and tuple(size) != tuple(expected):
        return f"size {size[0]}x{size[1]}, the annotations say {expected[0]}x{expected[1]}"
    return None


def _entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


# --- manifest -----------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The per-file entries of an earlier fetch; an unreadable manifest only costs a full decode check."""
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(part, path)


# --- HTTP ---------------------------------------------------------------------------------------


def _open(url: str, offset: int = 0) -> http.client.HTTPResponse:
    """GET ``url`` (from byte ``offset`` on), every failure turned into a ``_DownloadError``."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as error:
        error.close()
        transient = error.code >= 500 or error.code == 429
        raise _DownloadError(
            f"HTTP {error.code} {error.reason}", retry=transient, status=error.code
        ) from None
    except URLError as error:  # no HTTP answer at all: DNS failure, refused, unreachable, timeout
        raise _DownloadError(f"URLError: {error.reason}", unreachable=True) from error
    except (OSError, http.client.HTTPException) as error:  # the connection broke mid-answer
        raise _DownloadError(f"{type(error).__name__}: {error}") from error


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _copy(response: http.client.HTTPResponse, sink: Any, on_chunk: Callable[[int], Any] | None = None) -> int:
    """Copy the body to ``sink``; the byte count, since a closed connection reads as a short body."""
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise _DownloadError(
                f"connection broke after {received} bytes ({type(error).__name__}: {error})"
            ) from error
        if not chunk:
            return received
        sink.write(chunk)
        received += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))


def _with_retries(attempt: Callable[[], None]) -> None:
    """Run ``attempt`` up to TRIES times, backing off between tries, while its errors are transient."""
    for k in range(TRIES):
        try:
            attempt()
            return
        except _DownloadError as error:
            if not error.retry or k == TRIES - 1:
                raise
        time.sleep(RETRY_BACKOFF_S * 2**k)
