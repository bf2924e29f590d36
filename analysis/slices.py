"""Filters over a run's selections, each returned as (SQL fragment, bound values, human caption).

The caption is shown above whatever the filter feeds, so a reader always knows what a chart or grid
holds (datasette's filters work the same way). Fragments refer to the aliases every query that takes a
slice provides (see ``analysis.queries``):

    s  selection_t row under the ablation being looked at
    i  image_t row of the image
    p  prompt_t row of the selected prompt
    b  selection_t row of the same image under baseline (LEFT JOINed: NULL until it is computed)

Values always travel as parameters; fragments are fixed strings chosen here, never user text.
"""

from __future__ import annotations

from dataclasses import dataclass

ANY = ""  # the "no filter" choice of a select box; kept out of the URL


@dataclass(frozen=True)
class Slice:
    sql: str = "TRUE"
    params: tuple = ()
    caption: str = ""

    def __and__(self, other: Slice) -> Slice:
        return Slice(
            sql=f"({self.sql}) AND ({other.sql})",
            params=self.params + other.params,
            caption="; ".join(c for c in (self.caption, other.caption) if c),
        )


EVERYTHING = Slice()


def ablation(ablation_id: int | None, name: str = "") -> Slice:
    """Selections under one ablation, or under all of them (None)."""
    if ablation_id is None:
        return Slice(caption="every ablation")
    return Slice("s.ablation_id = ?", (int(ablation_id),), f"ablation {name or ablation_id}")


def true_label(label: str) -> Slice:
    """Images carrying ``label`` among their ground-truth labels (an image may carry several)."""
    if label == ANY:
        return Slice(caption="any true label")
    return Slice("list_contains(i.labels, ?)", (label,), f"images labelled {label!r}")


def selected_label(label: str) -> Slice:
    """Selections whose chosen prompt carries ``label``."""
    if label == ANY:
        return Slice(caption="any selected label")
    return Slice("p.label = ?", (label,), f"selected prompt labelled {label!r}")


# Outcome of a selection, alone or against the same image under baseline.
OUTCOMES: dict[str, tuple[str, str]] = {
    "wrong": ("NOT s.correct", "picks a wrong prompt"),
    "flip": ("s.correct <> b.correct", "correctness flips against baseline"),
    "broken": ("b.correct AND NOT s.correct", "right under baseline, wrong here"),
    "fixed": ("s.correct AND NOT b.correct", "wrong under baseline, right here"),
    "changed": ("s.prompt_id <> b.prompt_id", "selects another prompt than baseline"),
    "right": ("s.correct", "picks a right prompt"),
    "all": ("TRUE", "any outcome"),
}


def outcome(name: str) -> Slice:
    if name not in OUTCOMES:
        raise ValueError(f"unknown outcome {name!r}: choose one of {', '.join(OUTCOMES)}")
    sql, caption = OUTCOMES[name]
    return Slice(sql, (), caption)
