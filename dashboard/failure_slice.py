"""The Failures grid's slice as both pages that use it see it: the Failures page draws it a page at a time,
the Image page (opened from it, the filters in its URL) steps through it and links back to the grid page
an image sits on."""

from __future__ import annotations

from analysis import queries, slices
from dashboard import reading
from dashboard.context import Context

PAGE_SIZE = 24  # images per page of the grid
OUTCOMES = ["wrong", "flip", "broken", "fixed", "changed", "right", "all"]  # the grid's choices, of slices.OUTCOMES
FILTERS = ("outcome", "label", "selected", "sort")  # the query params a link into the slice carries
FROM = "failures"  # the value of the "from" param on the Image page opened from the grid


def where(ctx: Context, ablation: str, outcome: str, label: str, selected: str) -> slices.Slice:
    """Images under ``ablation`` with ``outcome``, true ``label`` and ``selected`` label ("" for any)."""
    return (slices.ablation(ctx.ablation_id(ablation), ablation) & slices.outcome(outcome)
            & slices.true_label(label) & slices.selected_label(selected))


def worst(ctx: Context) -> str | None:
    """The ablation with the lowest accuracy so far (the first in sweep order on a tie; baseline aside): what
    the grid opens on when nobody asked for one; before any is computed, the first after baseline (None when
    the run has baseline alone)."""
    accuracy = reading.load(queries.ablation_accuracy, ctx.run_id)
    others = accuracy[(accuracy["ablation_id"] != ctx.baseline_id) & (accuracy["images"] > 0)]
    if others.empty:
        return ctx.default_ablation()
    ablation_id = int(others.sort_values(["accuracy", "ablation_id"], kind="stable").iloc[0]["ablation_id"])
    return str(ctx.ablations.loc[ctx.ablations["ablation_id"] == ablation_id, "ablation"].iloc[0])


def grid_page(position: int) -> int:
    """The grid page (from 1) that shows the image at ``position`` (from 0) of the slice."""
    return position // PAGE_SIZE + 1
