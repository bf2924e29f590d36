"""The Failures grid's slice as both pages that use it see it: the Failures page draws it a page at a time,
the Image page (opened from it, the filters in its URL) steps through it and links back to the grid page
an image sits on."""

from __future__ import annotations

from analysis import slices
from dashboard.context import Context

PAGE_SIZE = 24  # images per page of the grid
OUTCOMES = ["wrong", "flip", "broken", "fixed", "changed"]  # the grid's choices, of slices.OUTCOMES
FILTERS = ("outcome", "label", "selected", "sort")  # the query params a link into the slice carries
FROM = "failures"  # the value of the "from" param on the Image page opened from the grid


def where(ctx: Context, ablation: str, outcome: str, label: str, selected: str) -> slices.Slice:
    """Images under ``ablation`` with ``outcome``, true ``label`` and ``selected`` label ("" for any)."""
    return (slices.ablation(ctx.ablation_id(ablation), ablation) & slices.outcome(outcome)
            & slices.true_label(label) & slices.selected_label(selected))


def grid_page(position: int) -> int:
    """The grid page (from 1) that shows the image at ``position`` (from 0) of the slice."""
    return position // PAGE_SIZE + 1
