"""Downloads that survive a bad network: retries with back-off for transient errors, resumption of a
large file with HTTP Range, and checks before a file takes its final name (``NAME.part`` until then).

Used by ``compute.fetch``; nothing here knows about COCO.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from PIL import Image
from tqdm import tqdm

TRIES = 3
RETRY_BACKOFF_S = 0.5  # sleep before retry k is RETRY_BACKOFF_S * 2**(k-1); tests set it to 0
TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 16
USER_AGENT = "clip-attention-lab-fetch/0.1"


class DownloadError(Exception):
    """One download went wrong. ``retry``: another try may help; ``unreachable``: no connection at all."""

    def __init__(
        self, message: str, *, retry: bool = True, unreachable: bool = False, status: int | None = None
    ):
        super().__init__(message)
        self.retry = retry
        self.unreachable = unreachable
        self.status = status

def download_archive(url: str, dest: Path, verbose: bool) -> None:
    """Download ``url`` to ``dest``, continuing a ``dest.part`` left by an earlier try with HTTP Range."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = open_url(url, offset)
    except DownloadError as error:
        if error.status == 416 and zipfile.is_zipfile(part):
            os.replace(part, dest)  # the part was already whole (a run stopped just before renaming)
            return
        if error.status == 416:  # the part is longer than the file (it changed?): the next try starts over
            part.unlink()
            raise DownloadError("the partial download does not fit the file on the server") from error
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range and sends the whole file: start over
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()  # a range we did not ask for: the safest resume is none
            raise DownloadError(
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
        raise DownloadError(f"connection closed after {received} of {length} bytes")
    if not zipfile.is_zipfile(part):
        part.unlink()
        raise DownloadError(f"{url} is not a zip archive", retry=False)
    os.replace(part, dest)

def download_image(url: str, dest: Path, expected: tuple[int, int] | None) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with open_url(url) as response:
            length = _content_length(response)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as sink:
                received = _copy(response, sink)
        if length is not None and received != length:
            raise DownloadError(f"connection closed after {received} of {length} bytes")
        problem = image_problem(part, expected)
        if problem is not None:
            raise DownloadError(f"downloaded file is not a valid image ({problem})")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)  # images are small: a retry starts over rather than resuming


def image_problem(path: Path, expected: tuple[int, int] | None) -> str | None:
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


def file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}

def open_url(url: str, offset: int = 0) -> http.client.HTTPResponse:
    """GET ``url`` (from byte ``offset`` on), every failure turned into a ``DownloadError``."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as error:
        error.close()
        transient = error.code >= 500 or error.code == 429
        raise DownloadError(
            f"HTTP {error.code} {error.reason}", retry=transient, status=error.code
        ) from None
    except URLError as error:  # no HTTP answer at all: DNS failure, refused, unreachable, timeout
        raise DownloadError(f"URLError: {error.reason}", unreachable=True) from error
    except (OSError, http.client.HTTPException) as error:  # the connection broke mid-answer
        raise DownloadError(f"{type(error).__name__}: {error}") from error


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
            raise DownloadError(
                f"connection broke after {received} bytes ({type(error).__name__}: {error})"
            ) from error
        if not chunk:
            return received
        sink.write(chunk)
        received += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))


def with_retries(attempt: Callable[[], None]) -> None:
    """Run ``attempt`` up to TRIES times, backing off between tries, while its errors are transient."""
    for k in range(TRIES):
        try:
            attempt()
            return
        except DownloadError as error:
            if not error.retry or k == TRIES - 1:
                raise
        time.sleep(RETRY_BACKOFF_S * 2**k)
