"""What every page shares: cached reads of the store, cached chart specs, thumbnails, the run picker.

Reading the store: results are cached on (function, store path, change token, arguments); the change
token is the stat of the store file and of its WAL, so a commit by a running compute job invalidates the
cache without opening the file. On a cache miss a read-only connection is opened; the misses of one
script run share it until the page starts drawing a chart or the run ends (``reading``, ``release``), so it
is held for the queries of one render (a few hundred milliseconds on real sizes) and never while the page
is drawn or sits idle: an open reader blocks the compute stage's next write (DuckDB: one writer or many
readers), which retries until it is gone.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import altair as alt
import duckdb
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from analysis import queries, stats, tables
from analysis.text import md
from compute import store
from dashboard import state

# Altair validates every schema object as it is built (its debug mode): a third of a chart's drawing time,
# on every redraw. The tests validate every builder's output, so the running app skips it.
alt.utils.schemapi.disable_debug_mode()

T = TypeVar("T")
REFRESH_S = 2.0  # how often a page showing a running run checks the store for new batches
THUMB_PX = 160


# --------------------------------------------------------------------------------------------------
# Cached data.


def change_token(db: Path) -> tuple:
    """Changes whenever a writer commits: the stat of the store file and of its write-ahead log."""
    token = []
    for path in (db, Path(f"{db}.wal")):
        try:
            st_ = os.stat(path)
            token.append((st_.st_mtime_ns, st_.st_size))
        except FileNotFoundError:
            token.append(None)
    return tuple(token)


class _Reader:
    """A read-only connection opened on first use (most reruns hit the cache and never open one)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._opened = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            self._opened = store.connect(self.db, read_only=True)
            self.con = self._opened.__enter__()
        return self.con

    def close(self) -> None:
        if self._opened is not None:
            self._opened.__exit__(None, None, None)
        self._opened = self.con = None


_local = threading.local()  # the reader of the script run on this thread


@contextmanager
def reading(db: Path) -> Iterator[None]:
    """Let the cache misses of one script run share one connection, closed when the run ends."""
    _local.reader = _Reader(db)
    _local.chart_rows = 0  # keys of this run's chart rows (chart_columns)
    try:
        yield
    finally:
        _local.reader.close()
        _local.reader = None


def release() -> None:
    """Close this script run's connection now; the next cache miss opens another."""
    reader = getattr(_local, "reader", None)
    if reader is not None:
        reader.close()


def _name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


# The function itself travels unhashed (leading underscore); its qualified name is the cache key.
@st.cache_data(show_spinner=False, max_entries=512)
def _cached_call(fn_name: str, db: str, token: tuple, args: tuple, _fn: Callable[..., Any], _reader: _Reader) -> Any:
    return _fn(_reader.get(), *args)


def load(fn: Callable[..., T], *args: Any) -> T:
    """``fn(con, *args)`` on a read-only connection to the app's store, cached until the store changes.
    ``fn`` is a module-level function of analysis.queries, tables or figures."""
    db = current_db()
    shared = getattr(_local, "reader", None)
    reader = shared or _Reader(db)
    try:
        return _cached_call(_name(fn), str(db), change_token(db), args, fn, reader)
    finally:
        if reader is not shared:
            reader.close()


@st.cache_data(show_spinner=False, max_entries=256)
def _chart_spec(builder_name: str, args: tuple, _builder: Callable[..., Any]) -> dict:
    # Validation costs a third of the conversion; the tests validate every builder's output.
    return _builder(*args).to_dict(validate=False)


def chart(builder: Callable[..., Any], *args: Any, container: Any = None) -> None:
    """Draw ``builder(*args)`` (a pure builder of analysis.charts); its Vega-Lite spec is cached on the
    arguments, so a rerun that changes another part of the page does not rebuild it."""
    release()  # drawing takes longer than reading: let a waiting writer in meanwhile
    spec = _chart_spec(_name(builder), args, builder)
    (container if container is not None else st).vega_lite_chart(spec=spec, width="stretch")


def chart_panels(builder: Callable[..., Any], summary: pd.DataFrame, metrics: list[str]) -> None:
    """One chart per metric (``builder(summary, (metric,), "container")``) side by side in columns that
    wrap on a narrow screen: each fills its column, so none overflows the page (a faceted chart of
    fixed-width panels would)."""
    for col, metric in zip(chart_columns(len(metrics)), metrics, strict=True):
        chart(builder, summary, (metric,), "container", container=col)


def chart_columns(spec: int | list[int]) -> list:
    """``st.columns(spec)`` for charts: they wrap onto new lines below a wider minimum than other columns."""
    _local.chart_rows = getattr(_local, "chart_rows", 0) + 1
    return st.container(key=f"charts-{_local.chart_rows}").columns(spec)


def current_db() -> Path:
    return st.session_state["db"]


# --------------------------------------------------------------------------------------------------
# Images.


def thumbnail(run_id: int, image_id: int, size: int = THUMB_PX) -> bytes:
    """A JPEG of one image of a run, at most ``size`` pixels on a side. The file is the one the store lists
    for that image of that run (image_t), never a path from a URL or another run; a grey placeholder when
    it is not listed, missing or unreadable."""
    path = load(queries.image_paths, int(run_id)).get(int(image_id))
    return _thumbnail(path, size) if path is not None else _placeholder_jpeg(size, "image not listed")


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, size: int) -> bytes:
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster for big photos
            im = im.convert("RGB")
            im.thumbnail((size, size))
    except (OSError, ValueError, Image.DecompressionBombError):
        im = placeholder(size, "image not found")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _placeholder_jpeg(size: int, text: str) -> bytes:
    buf = io.BytesIO()
    placeholder(size, text).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def placeholder(size: int, text: str) -> Image.Image:
    im = Image.new("RGB", (size, size), (225, 225, 225))
    ImageDraw.Draw(im).text((8, size // 2 - 6), text, fill=(90, 90, 90))
    return im


# --------------------------------------------------------------------------------------------------
# The run and its context, drawn in the sidebar by app.py on every page.


@dataclass(frozen=True)
class Context:
    db: Path
    run: dict  # a row of queries.runs
    ablations: pd.DataFrame  # queries.ablations
    baseline_id: int

    @property
    def run_id(self) -> int:
        return int(self.run["run_id"])

    @property
    def name(self) -> str:
        return str(self.run["run"])

    @property
    def baseline_name(self) -> str:
        return tables.baseline_name(self.ablations)

    def ablation_names(self) -> list[str]:
        return list(self.ablations["ablation"])

    def ablation_id(self, name: str) -> int:
        return int(self.ablations.loc[self.ablations["ablation"] == name, "ablation_id"].iloc[0])


def progress(run: dict) -> tuple[int, int]:
    """(pairs done, pairs expected): every ablation of every image that did not fail to load."""
    expected = (int(run["n_images"]) - int(run["n_failed"])) * int(run["n_ablations"])
    return int(run["n_done"]), max(expected, 0)


def default_run(runs: pd.DataFrame) -> str:
    """The run a page opens without one in the URL: the newest complete run, else the newest."""
    complete = runs[runs["status"] == "complete"]
    return str((complete if len(complete) else runs)["run"].iloc[0])


def sidebar(db: Path) -> Context:
    """The run picker and the run's state; stops the page with an explanation when there is nothing to show."""
    st.session_state["db"] = db
    if not db.is_file():
        st.error(f"No store at {md(db)}.")
        st.markdown("Build one with `python -m compute run EXPERIMENT.toml` (or `make demo`), then start the "
                    "dashboard with `streamlit run dashboard/app.py -- --db PATH`. This page reloads by itself "
                    "when the store appears.")
        _watch(db, change_token(db))
        st.stop()
    runs = load(queries.runs)
    if runs.empty:
        st.info(f"The store {md(db)} has no runs yet. Start one with `python -m compute run EXPERIMENT.toml`.")
        _watch(db, change_token(db))
        st.stop()
    rows = {r["run"]: r for r in runs.to_dict("records")}
    with st.sidebar:
        name = state.param_select("Run", list(rows), "run", default=default_run(runs),
                                  format_func=lambda r: f"{r} ({rows[r]['status']})")
        run = rows[name]
        st.caption(f"{md(run['model'])} · {md(tables.family_text(run.get('family')))}  \n{run['n_images']:,} images × "
                   f"{run['n_ablations']} ablations × {run['n_prompts']} prompts  \n{run['n_failed']:,} unreadable "
                   f"images · store {md(db.name)}")
        if run["status"] == "running":
            run_progress(run)
            _watch(db, change_token(db))
    ablations = load(queries.ablations, int(run["run_id"]))
    if ablations.empty:
        st.warning(f"Run {md(name)} has no ablations.")
        st.stop()
    return Context(db, run, ablations, tables.baseline_id(ablations))


def run_progress(run: dict) -> None:
    """The stage a running run is in, with its progress: the sweep, then (with a captioner) the captions."""
    done, expected = progress(run)
    if done < expected or expected == 0:
        st.progress(min(done / expected, 1.0) if expected else 0.0,
                    text=f"sweep: {done:,} of {expected:,} image × ablation pairs")
        return
    captions = load(queries.caption_progress, int(run["run_id"]))
    if captions is None:
        st.progress(1.0, text=f"sweep done ({expected:,} pairs); finishing")
        return
    generated, needed = captions
    st.progress(generated / needed if needed else 1.0,
                text=f"captions: {generated:,} of {needed:,} generated (sweep done)" if needed
                else "captions: generated; scoring them")


@st.fragment(run_every=REFRESH_S)
def _watch(db: Path, token: tuple) -> None:
    """While a run writes to the store, rerun the page whenever a new batch lands."""
    if change_token(db) != token:
        st.rerun()


def context() -> Context:
    """The context app.py set up for this script run."""
    return st.session_state["ctx"]


def no_results(ctx: Context) -> bool:
    """True (after saying so) when the run has no computed pair yet."""
    if int(ctx.run["n_done"]) == 0:
        st.info(f"Run {md(ctx.name)} has no results yet; this page fills in as its first batch is stored.")
        return True
    return False


def ablation_select(ctx: Context, label: str = "Ablation", param: str = "ablation", default: str | None = None,
                    container: Any = None, with_all: bool = False) -> str:
    """A select box of the run's ablations (sweep order), bound to a query param."""
    options = ([""] if with_all else []) + ctx.ablation_names()
    return state.param_select(label, options, param, default=default, container=container,
                              format_func=lambda a: a or "every ablation")


def label_select(ctx: Context, label: str, param: str, labels: list[str], container: Any = None) -> str:
    """A select box of labels with "any" first, bound to a query param."""
    return state.param_select(label, [""] + labels, param, container=container,
                              format_func=lambda v: v or "any")


def image_href(run: str, image_id: int, ablation: str | None = None) -> str:
    """Relative link to the Image page (relative, so it also works under a server base path)."""
    params = {"run": run, "image": image_id}
    if ablation:
        params["ablation"] = ablation
    return "image?" + urlencode(params)


# Layout that holds at 800 px as at 1440: columns wrap onto a new line instead of shrinking below a
# readable width ("iden…", "ident"), and wide tables scroll inside themselves. A fixed string.
LAYOUT_CSS = """
<style>
[data-testid="stHorizontalBlock"] { flex-wrap: wrap; row-gap: 0.5rem; }
[data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: min(100%, 13rem); }
[class*="st-key-charts-"] [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: min(100%, 18rem); }
[data-testid="stMetricValue"] > div { overflow: visible; text-overflow: clip; }
</style>
"""


def layout() -> None:
    st.markdown(LAYOUT_CSS, unsafe_allow_html=True)  # fixed CSS, no data in it


def change_table(cells: pd.DataFrame, keys: list[str], metric: str, ablated: str) -> None:
    """The Heads and Flow pages' table of cells (analysis.heads): ``keys`` name each cell (layer, head or
    target), then the change of ``metric`` against baseline, its 95% interval, McNemar's counts, p and the
    verdict; ``ablated`` says what differs from baseline ("the head ablated")."""
    shown = cells.assign(p=cells["p"].map(stats.format_p), p_holm=cells["p_holm"].map(stats.format_p))
    st.dataframe(
        shown[["ablation", *keys, "images", "change", "lo", "hi", "only_baseline", "only_ablation", "p", "p_holm",
               "holds"]],
        hide_index=True,
        column_config={
            "change": st.column_config.NumberColumn(f"Δ {tables.METRIC_TITLES[metric]}", format="%+.4f"),
            "lo": st.column_config.NumberColumn("95% from", format="%+.4f"),
            "hi": st.column_config.NumberColumn("95% to", format="%+.4f"),
            "only_baseline": st.column_config.NumberColumn("right only under baseline"),
            "only_ablation": st.column_config.NumberColumn(f"right only with {ablated}"),
            "p_holm": st.column_config.TextColumn("p (Holm)"),
            "holds": st.column_config.CheckboxColumn("holds after Holm"),
        },
    )
