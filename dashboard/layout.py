"""How every page is laid out: the CSS that keeps columns readable at any width, columns for charts, and
charts drawn from cached Vega-Lite specs of the pure builders in analysis.charts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import reading, state

# Altair validates every schema object as it is built (its debug mode): a third of a chart's drawing time,
# on every redraw. The tests validate every builder's output, so the running app skips it.
alt.utils.schemapi.disable_debug_mode()

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


def css() -> None:
    st.markdown(LAYOUT_CSS, unsafe_allow_html=True)  # fixed CSS, no data in it


def _name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@st.cache_data(show_spinner=False, max_entries=256)
def _chart_spec(builder_name: str, args: tuple, _builder: Callable[..., Any]) -> dict:
    # Validation costs a third of the conversion; the tests validate every builder's output.
    return _builder(*args).to_dict(validate=False)


def chart(builder: Callable[..., Any], *args: Any, container: Any = None, width: str = "stretch") -> None:
    """Draw ``builder(*args)`` (a pure builder of analysis.charts); its Vega-Lite spec is cached on the
    arguments, so a rerun that changes another part of the page does not rebuild it. ``width="content"``:
    the chart's own size (a square scatter; a stretched chart is fitted to its height, legend included, and
    a tall legend squeezes the plot)."""
    reading.release()  # drawing takes longer than reading: let a waiting writer in meanwhile
    spec = _chart_spec(_name(builder), args, builder)
    (container if container is not None else st).vega_lite_chart(spec=spec, width=width)


def chart_panels(builder: Callable[..., Any], summary: pd.DataFrame, metrics: list[str]) -> None:
    """One chart per metric (``builder(summary, (metric,), "container")``) side by side in columns that
    wrap on a narrow screen: each fills its column, so none overflows the page (a faceted chart of
    fixed-width panels would)."""
    for col, metric in zip(chart_columns(len(metrics)), metrics, strict=True):
        chart(builder, summary, (metric,), "container", container=col)


def chart_columns(spec: int | list[int]) -> list:
    """``st.columns(spec)`` for charts: they wrap onto new lines below a wider minimum than other columns
    (LAYOUT_CSS finds them by their container's key)."""
    run = state.this_run()
    n = 0
    if run is not None:
        run.chart_rows += 1
        n = run.chart_rows
    return st.container(key=f"charts-{n}").columns(spec)
