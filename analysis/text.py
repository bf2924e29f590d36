"""Data as text, never as markup: the one escaping helper every page uses.

Streamlit renders Markdown (with its own directives) in captions, metrics, image captions, expander and
link labels, alerts and st.table cells. A category name, prompt, caption, file name, run name, ablation
label or error message comes from data someone else wrote, so wherever one lands in such a place it goes
through ``md``: every ASCII punctuation character is backslash-escaped (CommonMark's escape turns each
back into itself, literally), and line breaks become spaces. ``![x](http://...)`` then shows as those
characters instead of fetching the URL; ``<img ...>`` and ``[a](javascript:...)`` likewise.
"""

from __future__ import annotations

import re
import string

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all also
# disarms GFM autolinks ("http://" loses its colon and slashes), HTML, tables, emphasis, math ($) and
# Streamlit's directives (:red[...], :material/x:).
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def md(value: object) -> str:
    """``value`` as Markdown that renders as exactly its text, on one line."""
    text = _BREAKS.sub(" ", str(value))
    return _PUNCTUATION.sub(r"\\\1", text)


def md_list(values: object, sep: str = ", ") -> str:
    """Several values, each escaped, joined by ``sep`` (a fixed separator)."""
    return sep.join(md(v) for v in values)  # type: ignore[attr-defined]


# In a Markdown *file* (the exported tables) only the characters that start markup are escaped, so the
# file stays readable as text: "identity:1-3" stays as is, "a|b" and "![x](...)" cannot act.
_ACTIVE = re.compile(r"([\\`*_\[\]<>|!$#~])")


def md_cell(value: object) -> str:
    """``value`` for a cell of an exported Markdown table: markup characters escaped, on one line."""
    return _ACTIVE.sub(r"\\\1", _BREAKS.sub(" ", str(value)))
