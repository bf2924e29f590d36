"""The page registry (``dashboard.pages``) as Streamlit pages: the menu in sections, and the page objects
that links between pages go through (``st.page_link(navigation.page("image"), ...)``,
``st.switch_page(navigation.page("failures"), ...)``) instead of file paths."""

from __future__ import annotations

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from dashboard.pages import DEFAULT, PAGES, SECTIONS, PageInfo, page_info


def _page(info: PageInfo) -> StreamlitPage:
    # Built the same way every time: Streamlit matches a page object to the registered page by its URL path
    # and file, so a link's page object and the menu's are interchangeable.
    return st.Page(info.path, title=info.title, url_path=info.key, default=info.key == DEFAULT)


def menu() -> StreamlitPage:
    """``st.navigation`` over every page, in sections; returns the page this script run shows."""
    return st.navigation({section: [_page(p) for p in PAGES if p.section == section] for section in SECTIONS})


def page(key: str) -> StreamlitPage:
    """The page object of ``key`` (a key of ``pages.PAGES``), for ``st.page_link`` and ``st.switch_page``."""
    return _page(page_info(key))
