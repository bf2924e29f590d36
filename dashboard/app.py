"""CLIP Attention Lab dashboard: ``streamlit run dashboard/app.py -- --db PATH``.

The store comes from ``--db`` (after ``--``), else $CLIP_LAB_DB, else data/results.duckdb. One file per page
under views/ (a folder named pages/ would make Streamlit serve those files as a legacy multipage app,
without this script); the run picker and a running run's progress sit in the sidebar of every page.
"""

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root that holds the
# `dashboard` and `compute` packages.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import state, ui  # noqa: E402

st.set_page_config(page_title="CLIP Attention Lab", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/table_chart:", default=True),
    st.Page("views/layers.py", title="Layers", icon=":material/stacked_line_chart:"),
    st.Page("views/heads.py", title="Heads", icon=":material/grid_on:"),
    st.Page("views/flow.py", title="Flow", icon=":material/swap_horiz:"),
    st.Page("views/image.py", title="Image", icon=":material/image:"),
    st.Page("views/failures.py", title="Failures", icon=":material/grid_view:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("views/prompt_lab.py", title="Prompt lab", icon=":material/science:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
]

page = st.navigation(PAGES)
ui.layout()
db = state.db_path()
token = ui.change_token(db)
with ui.reading(db):
    try:
        st.session_state["ctx"] = ui.sidebar(db)
        page.run()
    except Exception:
        # A writer committed while this script read the store (a run deleted, a batch added): what it read
        # may not fit together, so draw the page again from the new state rather than show the error.
        if ui.change_token(db) != token:
            st.rerun()
        raise
