"""The read side: everything that reads a results store and does not draw widgets.

queries (the SQL, one place) -> slices (filters that say what they do) -> stats (the one significance
rule) -> tables (per-ablation summaries) -> charts (Altair builders) -> figures (files: the export pack).
Beside them: heads (cells of the Heads and Flow grids), projection (2-D maps of embeddings), overlays
(attention maps drawn on images), text (escaping for Markdown); for the pack's files: print_layout
(charts laid out for a paper's column), textwidth (the figures' font metrics), latex (tables that compile
and fit), provenance (where a file came from, written into it).

Both the Streamlit dashboard (``dashboard/``: pages, widgets and URL state only) and ``python -m compute
export`` stand on this package; it imports neither ``streamlit`` nor ``dashboard``. Importing the package
itself is light (no altair, pandas or torch): the command line's --help reads the names below.
"""

FORMATS = ("png", "svg", "pdf")  # figure file formats
# A figure's width in points for each layout (None: as on the screen); 1 px of the SVG is 1 pt of the PDF.
SIZES: dict[str, int | None] = {"screen": None, "one-column": 252, "two-column": 504}
