"""The dashboard's pages, as data: what each is called, where it lives, which section of the menu holds it.

One list that the app (``navigation``), the screenshot tool, the benches and the tests read, so a page is
added in one place. Importable without Streamlit.

No icons, by choice: Streamlit's ``:material/...:`` icons make the browser fetch a font from an outside host
on every page load, and emoji show as empty boxes where no emoji font is installed (headless Chromium on a
server, so every screenshot); the sections carry the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode


@dataclass(frozen=True)
class PageInfo:
    key: str  # the URL path (/image) and the name the tools and tests use
    title: str  # the menu entry and the page's h1
    file: str  # under dashboard/views/ (not pages/: Streamlit would serve that folder as a legacy app)
    section: str  # the menu's heading above it

    @property
    def path(self) -> str:
        """The file relative to app.py, as ``st.Page`` and ``AppTest.switch_page`` take it."""
        return f"views/{self.file}"


PAGES: tuple[PageInfo, ...] = (
    PageInfo("overview", "Overview", "overview.py", "Results"),
    PageInfo("layers", "Layers", "layers.py", "Results"),
    PageInfo("heads", "Heads", "heads.py", "Results"),
    PageInfo("flow", "Flow", "flow.py", "Results"),
    PageInfo("decomposition", "Decomposition", "decomposition.py", "Results"),
    PageInfo("image", "Image", "image.py", "Images"),
    PageInfo("failures", "Failures", "failures.py", "Images"),
    PageInfo("compare", "Compare", "compare.py", "Images"),
    PageInfo("embeddings", "Embeddings", "embeddings.py", "Images"),
    PageInfo("prompt_lab", "Prompt lab", "prompt_lab.py", "Prompts"),
    PageInfo("export", "Export", "export.py", "Export"),
)
DEFAULT = "overview"  # served at the root URL (st.navigation gives the default page no path of its own)
KEYS = tuple(p.key for p in PAGES)
SECTIONS = tuple(dict.fromkeys(p.section for p in PAGES))  # in menu order


def page_info(key: str) -> PageInfo:
    """The page named ``key``; KeyError (naming the known ones) for another name."""
    for page in PAGES:
        if page.key == key:
            return page
    raise KeyError(f"no page {key!r}: the pages are {', '.join(KEYS)}")


def href(key: str, params: dict[str, object] | None = None) -> str:
    """A relative link to a page with ``params`` in its query string (relative, so it also works under a
    server base path); for table cells, where no page object can go (``st.column_config.LinkColumn``)."""
    path = "" if key == DEFAULT else page_info(key).key
    return path + (f"?{urlencode({k: str(v) for k, v in params.items()})}" if params else "")
