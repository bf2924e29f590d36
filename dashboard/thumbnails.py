"""Thumbnails of a run's images, decoded at reduced scale and cached; a grey placeholder saying why when a
file is missing or cannot be used. A thumbnail is asked for by (run, image) only: the file is the one the store
lists for that image of that run, never a path from a URL or another run.

Decoding is compute.dataset's, the one path every image takes (``decode`` + ``to_rgb``): only a regular file is
read (a FIFO at a listed path would block the page forever), an image of more than MAX_PIXELS is refused from
its header, and transparency is composited onto white as the model is shown it."""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw

from analysis import queries
from compute.dataset import ImageLoadError, decode, to_rgb
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


# A few words for the placeholder, from compute.dataset's message (shown whole on the Image page's maps).
_REASONS = (("file not found", "image not found"), ("not a regular file", "not a regular file"),
            ("MAX_PIXELS", "too many pixels"))


def _reason(e: ImageLoadError) -> str:
    return next((words for key, words in _REASONS if key in str(e)), "unreadable image")


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, size: int) -> bytes:
    try:
        im = to_rgb(decode(path, draft=size))  # JPEG: decoded at reduced scale, much faster for big photos
        im.thumbnail((size, size))
    except ImageLoadError as e:
        im = _placeholder(size, _reason(e))
    except (OSError, ValueError):  # a mode PIL cannot convert
        im = _placeholder(size, "unreadable image")
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
