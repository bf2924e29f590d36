"""Click-through: a click on a chart's mark or a table's row opens the Failures page on what it shows (the
ablation, and the true and selected label where the mark is one), through Streamlit's selection events.

The pure chart builders (analysis.charts) stay static, as the figure export saves them: ``clickable`` adds a
point selection to the drawn spec only, on each layer whose marks stand for something (points, bars, cells),
carrying ``fields`` of the clicked datum: one selection per layer (``PICK`` and a number; Vega refuses one
selection over two layers of a chart). ``chart`` draws such a spec and ``table`` a dataframe with single-row
selection; both return what was clicked, and ``open_failures`` goes there with every filter of the Failures
page set (a filter left from another page would hide what was clicked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import pandas as pd
import streamlit as st

from dashboard import navigation
from dashboard.context import Context

PICK = "pick"  # the selection parameters' names start so
MARKS = ("point", "circle", "square", "bar", "rect")  # the marks that stand for a datum (not rules, bands, text)
HINT = "Click a point, bar or cell to open its images on the Failures page."
FIELDS = ("ablation",)


def clickable(spec: dict, fields: Sequence[str] = FIELDS, marks: Sequence[str] = MARKS) -> dict:
    """``spec`` (a Vega-Lite dict) with a click selection over ``fields`` on every layer drawing one of ``marks``
    (named ``selections(spec)``), and a pointer cursor there. The spec is copied, not changed."""
    out = dict(spec)
    names: list[str] = []

    def kind(view: dict) -> str | None:
        mark = view.get("mark")
        return mark.get("type") if isinstance(mark, dict) else mark

    def visit(view: dict) -> dict:
        view = dict(view)
        if "layer" in view:
            # Rules (a baseline, zero) drawn first, under the marks: Vega gives a click to the topmost item, and a
            # point lying on the baseline could not be clicked otherwise.
            layers = sorted(view["layer"], key=lambda v: kind(v) != "rule")
            view["layer"] = [visit(v) for v in layers]
            return view
        mark = view.get("mark")
        if kind(view) in marks:
            view["name"] = f"{PICK}_view_{len(names)}"
            names.append(view["name"])
            view["mark"] = {**(mark if isinstance(mark, dict) else {"type": mark}), "cursor": "pointer"}
        return view

    out = visit(out)
    if names:
        out["params"] = [*out.get("params", []), *({
            "name": f"{PICK}_{k}", "select": {"type": "point", "fields": list(fields), "on": "click", "clear": False},
            "views": [name]} for k, name in enumerate(names))]
    return out


def selections(spec: dict) -> list[str]:
    """The names of the click selections ``clickable`` added to ``spec``."""
    return [p["name"] for p in spec.get("params", []) if str(p.get("name", "")).startswith(PICK + "_")]


def picked(event: Any) -> dict | None:
    """The clicked datum's fields from Streamlit's selection event (None: nothing clicked)."""
    try:
        chosen = event["selection"]
        points = [p for name in sorted(chosen) if name.startswith(PICK) for p in chosen[name] or []]
    except (KeyError, TypeError, AttributeError):
        return None
    return next((dict(p) for p in points if isinstance(p, dict) and p), None)


def chart(spec: dict, key: str, fields: Sequence[str] = FIELDS, container: Any = None,
          width: str = "stretch") -> dict | None:
    """Draw ``spec`` with its marks clickable (``clickable``); returns the clicked datum's ``fields``, or None."""
    box = container if container is not None else st
    drawn = clickable(spec, fields)
    if not selections(drawn):  # nothing to click (no such mark)
        box.vega_lite_chart(spec=spec, width=width)
        return None
    event = box.vega_lite_chart(spec=drawn, width=width, on_select="rerun", selection_mode=selections(drawn),
                                key=key)
    return picked(event)


def table(data: Any, key: str, rows: pd.DataFrame, container: Any = None, **kwargs: Any) -> dict | None:
    """``st.dataframe(data, **kwargs)`` whose rows can be clicked; returns the clicked row of ``rows`` (the
    frame behind ``data``, in the same order) as a dict, or None."""
    box = container if container is not None else st
    event = box.dataframe(data, key=key, on_select="rerun", selection_mode="single-row", **kwargs)
    try:
        chosen = list(event["selection"]["rows"])
    except (KeyError, TypeError):
        return None
    return rows.iloc[chosen[0]].to_dict() if chosen and 0 <= chosen[0] < len(rows) else None


def open_failures(ctx: Context, ablation: str, *, label: str = "", selected: str = "",
                  outcome: str | None = None) -> NoReturn:
    """Switch to the Failures page on ``ablation`` with these filters ("" for any), from its first page.
    ``outcome`` by default: the images whose correctness flips against baseline, or for baseline itself
    the images it gets wrong."""
    if outcome is None:
        outcome = "wrong" if ablation == ctx.baseline_name else "flip"
    known = set(ctx.ablation_names())
    st.switch_page(navigation.page("failures"), query_params={
        "run": ctx.name, "ablation": ablation if ablation in known else ctx.baseline_name, "outcome": outcome,
        "label": label, "selected": selected, "page": "1"})


def follow(ctx: Context, point: dict | None, *, ablation: str | None = None, label: str = "",
           outcome: str | None = None, labels: Callable[[dict], tuple[str, str]] | None = None) -> None:
    """Open the Failures page for a clicked ``point`` (nothing when None): on its "ablation" (else
    ``ablation``), with the true label ``label`` (the page's filter), or the point's own labels as
    ``labels(point)`` reads them: (true label, selected label)."""
    if not point:
        return
    name = str(point.get("ablation") or ablation or "")
    if not name:
        return
    true, selected = labels(point) if labels is not None else (label, "")
    open_failures(ctx, name, label=true, selected=selected, outcome=outcome)
