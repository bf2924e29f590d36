"""CLIP Attention Lab dashboard: ``streamlit run dashboard/app.py -- --db PATH``.

The store comes from ``--db`` (after ``--``), else $CLIP_LAB_DB, else data/results.duckdb. The pages are
listed once, in dashboard/pages.py, and shown in sections; the run picker and a running run's progress sit
in the sidebar of every page. Every read of one script run comes from one state of the store
(dashboard.reading), so a compute run committing meanwhile cannot make a page mix two states.

This file is both the server and the script. ``streamlit run`` finds ``app`` below (an ``st.App``) and serves
it (dashboard.server says why: no 404s on a page's first load); the server then runs this file as the script of
every session, where ``__name__`` is "__main__" (AppTest runs it the same way).
"""

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root that holds the
# `dashboard`, `analysis` and `compute` packages.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dashboard import server  # noqa: E402

# Served by `streamlit run`; importing this module (uvicorn does) must not import the pages' modules, whose
# caches would then be made before Streamlit's runtime exists.
app = st.App(__file__, middleware=[Middleware(server.RootUrl)])


def main() -> None:
    from dashboard import context, layout, navigation, reading, state

    server.freeze_imports()  # the server's collection after each run walks only what the app made since

    # No page_icon: Streamlit's own favicon is served by this server (a material icon would come from an outside
    # font host; see dashboard/pages.py).
    st.set_page_config(page_title="CLIP Attention Lab", layout="wide")
    page = navigation.menu()
    layout.css()
    db = state.db_path()
    with reading.render(db) as run:
        run.notices = st.container()  # above the page: what the URL names that is not there (state.notice)
        context.sidebar(db)
        page.run()


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run` (uvicorn) to serve `app`
    server.serving = True
