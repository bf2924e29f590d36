"""The Heads and Flow pages' table of cells (rows of analysis.heads): each cell's change against baseline
with its interval, McNemar's counts, p and the verdict of the one significance rule."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import stats, tables
from dashboard import clicks

CHANGE_FORMAT = f"%+.{tables.DIGITS}f"  # changes and their intervals as Table 1 shows them


def change_table(cells: pd.DataFrame, keys: list[str], metric: str, ablated: str, key: str) -> dict | None:
    """``keys`` name each cell (layer, head or target), then the change of ``metric`` against baseline, its
    95% interval, McNemar's counts, p and the verdict; ``ablated`` says what differs from baseline ("the
    head ablated"). Rows can be clicked (``key``: the table's): returns the clicked row, else None."""
    shown = cells.assign(p=cells["p"].map(stats.format_p), p_holm=cells["p_holm"].map(stats.format_p))
    shown = shown.reset_index(drop=True)
    return clicks.table(
        shown[["ablation", *keys, "images", "change", "lo", "hi", "only_baseline", "only_ablation", "p", "p_holm",
               "holds"]], key, shown,
        hide_index=True,
        column_config={
            "change": st.column_config.NumberColumn(f"Δ {tables.METRIC_TITLES[metric]}", format=CHANGE_FORMAT),
            "lo": st.column_config.NumberColumn("95% from", format=CHANGE_FORMAT),
            "hi": st.column_config.NumberColumn("95% to", format=CHANGE_FORMAT),
            "only_baseline": st.column_config.NumberColumn("right only under baseline"),
            "only_ablation": st.column_config.NumberColumn(f"right only with {ablated}"),
            "p_holm": st.column_config.TextColumn("p (Holm)"),
            "holds": st.column_config.CheckboxColumn("holds after Holm"),
        },
    )
