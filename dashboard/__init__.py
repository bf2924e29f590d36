"""CLIP Attention Lab dashboard: a Streamlit app over the DuckDB store (``streamlit run dashboard/app.py``).

Modules: ``queries`` (all SQL), ``slices`` (filters with captions), ``stats`` (bootstrap, McNemar),
``tables`` (the frames pages and export share), ``charts`` (pure Altair builders), ``state`` (URL query
params), ``ui`` (shared widgets and caching), ``views/`` (one file per page;
not ``pages/``, which Streamlit would run as a legacy multipage app, bypassing ``app.py``).
"""
