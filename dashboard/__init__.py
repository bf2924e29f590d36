"""CLIP Attention Lab dashboard: a Streamlit app over the DuckDB store (``streamlit run dashboard/app.py``).

Pages, widgets and URL state only; everything that reads a store without drawing a widget is the read
library ``analysis`` (queries, slices, stats, tables, charts, figures, prompt scores), which the export verb
shares.

- ``app``: the entry: the menu, the sidebar, the page; also the server (an ``st.App`` with ``server``'s
  middleware, which writes the app's root into each page so the browser probes no page path: no 404s).
- ``pages``: the page registry, as data (key, title, file under ``views/``, section); ``navigation``
  turns it into Streamlit pages and the page objects links go through.
- ``state``: every piece of state: the store path, query params and the widgets bound to them, what the
  session remembers, what lives for one script run.
- ``reading``: cached reads of the store, one snapshot and one connection per script run.
- ``context``: the run a page shows (``Context``) and the sidebar that picks it.
- ``widgets``: the shared select boxes; ``layout``: CSS, chart columns, cached charts; ``thumbnails``;
  ``change_table`` (Heads and Flow); ``failure_slice`` (the Failures grid's slice, shared with Image);
  ``attention_ui`` (the Image page's attention maps); ``lab`` (the Prompt lab's cached models and scores);
  ``clicks`` (a chart's mark or a table's row opens Failures); ``keys`` (keyboard shortcuts for a page's
  buttons and links).
- ``views/``: one file per page (not ``pages/``, which Streamlit would serve as a legacy multipage app).
"""
