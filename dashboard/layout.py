"""How every page is laid out: the CSS that keeps columns readable at any width, columns for charts,
charts drawn from cached Vega-Lite specs of the pure builders in analysis.charts, and a metric's change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import clicks, reading, state

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


def chart(builder: Callable[..., Any], *args: Any, container: Any = None, click: str | None = None,
          fields: Sequence[str] = clicks.FIELDS, width: str = "stretch") -> dict | None:
    """Draw ``builder(*args)`` (a pure builder of analysis.charts); its Vega-Lite spec is cached on the
    arguments, so a rerun that changes another part of the page does not rebuild it. With ``click`` (the
    chart's key) its points, bars and cells can be clicked: returns the clicked datum's ``fields``
    (dashboard.clicks), else None. ``width="content"``: the chart's own size (a square scatter; a stretched
    chart is fitted to its height, legend included, and a tall legend squeezes the plot)."""
    if state.this_run() is not None:  # not in a fragment's own rerun, which reads nothing
        reading.release()  # drawing takes longer than reading: let a waiting writer in meanwhile
    spec = _chart_spec(_name(builder), args, builder)
    if click is not None:
        return clicks.chart(spec, click, fields, container, width=width)
    (container if container is not None else st).vega_lite_chart(spec=spec, width=width)
    return None


def chart_panels(builder: Callable[..., Any], summary: pd.DataFrame, metrics: list[str],
                 click: str | None = None) -> dict | None:
    """One chart per metric (``builder(summary, (metric,), "container")``) side by side in columns that
    wrap on a narrow screen: each fills its column, so none overflows the page (a faceted chart of
    fixed-width panels would). With ``click`` (a key prefix), the datum clicked in any panel, as ``chart``."""
    picked = None
    for col, metric in zip(chart_columns(len(metrics)), metrics, strict=True):
        point = chart(builder, summary, (metric,), "container", container=col,
                      click=None if click is None else f"{click}_{metric}")
        picked = picked or point
    return picked


def grid_cells(n: int, width: int, key: str, container: Any = None) -> list:
    """``n`` containers of one fixed ``width`` (pixels) in a row that wraps onto new lines: a grid whose cells
    keep their size at any window width (wrapped columns would stretch to fill their line instead)."""
    row = (container if container is not None else st).container(horizontal=True, key=key, gap="small")
    return [row.container(width=width) for _ in range(n)]


def chart_columns(spec: int | list[int]) -> list:
    """``st.columns(spec)`` for charts: they wrap onto new lines below a wider minimum than other columns
    (LAYOUT_CSS finds them by their container's key)."""
    run = state.this_run()
    n = 0
    if run is not None:
        run.chart_rows += 1
        n = run.chart_rows
    return st.container(key=f"charts-{n}").columns(spec)


def delta(shown: str) -> dict[str, str]:
    """``st.metric`` arguments for a change as shown ("+0.012", "-0.517 vs baseline"): Streamlit colours it and
    draws an arrow by its sign, so one that shows as zero ("+0.000") is grey and without an arrow (a green ↑
    would say better)."""
    zero = float(shown.split()[0]) == 0
    return {"delta": shown, "delta_color": "off" if zero else "normal", "delta_arrow": "off" if zero else "auto"}
