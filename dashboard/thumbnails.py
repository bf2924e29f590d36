"""Thumbnails of a run's images, decoded at reduced scale and cached; a grey placeholder when a file is
missing or unreadable. A thumbnail is asked for by (run, image) only: the file is the one the store lists
for that image of that run, never a path from a URL or another run."""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw

from analysis import queries
from dashboard import reading

THUMB_PX = 160


def image_paths(run_id: int) -> dict[int, str]:
    """The run's image files by id. Pages that draw thumbnails read this before they draw (see
    dashboard.reading: a read after drawing has begun may start the render over)."""
    return reading.load(queries.image_paths, int(run_id))


def thumbnail(run_id: int, image_id: int, size: int = THUMB_PX) -> bytes:
    """A JPEG of one image of a run, at most ``size`` pixels on a side; a placeholder when the store does not
    list it, or its file is missing or unreadable."""
    path = image_paths(run_id).get(int(image_id))
    return _thumbnail(path, size) if path is not None else _placeholder_jpeg(size, "image not listed")


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, size: int) -> bytes:
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster for big photos
            im = im.convert("RGB")
            im.thumbnail((size, size))
    except (OSError, ValueError, Image.DecompressionBombError):
        im = _placeholder(size, "image not found")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _placeholder_jpeg(size: int, text: str) -> bytes:
    buf = io.BytesIO()
    _placeholder(size, text).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _placeholder(size: int, text: str) -> Image.Image:
    im = Image.new("RGB", (size, size), (225, 225, 225))
    ImageDraw.Draw(im).text((8, size // 2 - 6), text, fill=(90, 90, 90))
    return im
