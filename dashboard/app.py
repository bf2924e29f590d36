"""CLIP Attention Lab dashboard: ``streamlit run dashboard/app.py -- --db PATH``.

The store comes from ``--db`` (after ``--``), else $CLIP_LAB_DB, else data/results.duckdb. The pages are
listed once, in dashboard/pages.py, and shown in sections; the run picker and a running run's progress sit
in the sidebar of every page. Every read of one script run comes from one state of the store
(dashboard.reading), so a compute run committing meanwhile cannot make a page mix two states.
"""

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root that holds the
# `dashboard`, `analysis` and `compute` packages.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import context, layout, navigation, reading, state  # noqa: E402

# No page_icon: Streamlit's own favicon is served by this server (a material icon would come from an outside
# font host; see dashboard/pages.py).
st.set_page_config(page_title="CLIP Attention Lab", layout="wide")

page = navigation.menu()
layout.css()
db = state.db_path()
with reading.render(db):
    context.sidebar(db)
    page.run()
