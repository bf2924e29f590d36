"""Data as text: the escaping helper every page uses, checked with a real CommonMark renderer (the one rich
ships; Streamlit's is react-markdown, checked in the browser tests)."""

from __future__ import annotations

import re
from html import unescape

import pytest

from analysis.text import md, md_cell

PAYLOADS = [
    "![x](http://127.0.0.1:9/x)",
    '<img src="http://127.0.0.1:9/x">',
    "[link](javascript:fetch('http://127.0.0.1:9/x'))",
    "![x](http:&#47;&#47;127.0.0.1:9&#47;x).jpg",
    "<http://127.0.0.1:9/x> **bold** _it_ `code` # head | cell $x$ :red[y]",
    "line one\nline two\r\n* item",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_renders_as_exactly_its_text_without_tags(payload):
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md(payload))
    # one paragraph of plain text (entities aside) whose words are the payload's, line breaks as spaces
    assert re.fullmatch(r"<p>[^<>]*</p>\n", html), html
    assert unescape(html[3:-5]).split() == payload.split()


def test_md_cell_keeps_labels_readable_and_disarms_markup():
    assert md_cell("identity:1-3") == "identity:1-3" and md_cell("red circle") == "red circle"
    assert md_cell("a|b") == "a\\|b"
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(md_cell(PAYLOADS[0]))
    assert "<img" not in html and "127.0.0.1:9/x" in html
