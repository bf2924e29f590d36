"""CLIP Attention Lab dashboard: a Streamlit app over the DuckDB store (``streamlit run dashboard/app.py``).

The Streamlit side: ``app`` (entry and navigation), ``state`` (the store path and the URL query params),
``ui`` (cached reads, charts, thumbnails, the run picker), ``views/`` (one file per page; not ``pages/``,
which Streamlit would run as a legacy multipage app, bypassing ``app``), ``lab`` (the Prompt lab's models
and scoring).

The read side, free of Streamlit so the export verb and the tests use it as is: ``queries`` (all of the
dashboard's SQL), ``slices`` (filters with captions), ``stats`` (bootstrap, McNemar, Holm: the one
significance rule), ``tables`` (Table 1 and the tests, with their renderings), ``charts`` (pure Altair
builders), ``figures`` (the figure pack written to files, sizes for a paper, Figure 5), ``projection``
(PCA of stored embeddings) and ``text`` (data shown as text, never as Markdown or HTML).
"""
