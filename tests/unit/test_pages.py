"""The dashboard's page registry: every page file listed once and every listed file there, unique keys and
titles, links built from it, no string path to a page left in the views, and no ``:material/...:`` icon
anywhere in the app (the browser would fetch it from an outside host)."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

from dashboard import pages

VIEWS = ROOT / "dashboard" / "views"


def test_every_view_is_registered_once_and_every_registered_file_exists():
    assert sorted(p.file for p in pages.PAGES) == sorted(f.name for f in VIEWS.glob("*.py"))
    assert len(set(pages.KEYS)) == len(pages.KEYS) and len({p.title for p in pages.PAGES}) == len(pages.PAGES)
    assert pages.DEFAULT in pages.KEYS
    assert all((ROOT / "dashboard" / p.path).is_file() for p in pages.PAGES)
    # A section's pages stand together, so the menu lists them in registry order.
    assert [p.section for p in pages.PAGES] == sorted((p.section for p in pages.PAGES), key=pages.SECTIONS.index)


def test_no_module_of_the_app_names_a_material_icon():
    strays = [f"{f.relative_to(ROOT)}" for f in (ROOT / "dashboard").rglob("*.py")
              if re.search(r"[\"']:material/", f.read_text())]
    assert strays == []


def test_links_between_pages_go_through_page_objects_not_file_paths():
    strays = [f"{f.name}: {m}" for f in VIEWS.glob("*.py")
              for m in re.findall(r"(?:page_link|switch_page)\(\s*[\"'][^\"']*", f.read_text())]
    assert strays == []


def test_href_and_lookup():
    assert pages.href("image", {"run": "a b", "image": 3}) == "image?run=a+b&image=3"
    assert pages.href(pages.DEFAULT) == ""
    assert pages.page_info("prompt_lab").path == "views/prompt_lab.py"
    with pytest.raises(KeyError, match="no page 'nope'"):
        pages.page_info("nope")
