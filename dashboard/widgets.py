"""The select boxes pages share, each bound to a query param (``dashboard.state``): a run's ablations, the
set of them a chart shows when there are too many for one axis (analysis.subsets), and labels with "any"
first."""

from __future__ import annotations

from typing import Any

from analysis import subsets
from dashboard import state
from dashboard.context import Context


def ablation_select(ctx: Context, label: str = "Ablation", param: str = "ablation", default: str | None = None,
                    container: Any = None, with_all: bool = False, own_default: bool = False) -> str:
    """A select box of the run's ablations (sweep order), bound to a query param; ``with_all`` puts "every
    ablation" (the value "") first; ``own_default`` as in state.param_select."""
    options = ([""] if with_all else []) + ctx.ablation_names()
    return state.param_select(label, options, param, default=default, container=container,
                              format_func=lambda a: a or "every ablation", noun="ablation", scope=f"in run {ctx.name}",
                              own_default=own_default)


def label_select(label: str, param: str, labels: list[str], container: Any = None) -> str:
    """A select box of labels with "any" (the value "") first, bound to a query param."""
    return state.param_select(label, [""] + labels, param, container=container,
                              format_func=lambda v: v or "any", scope="in this run")


def ablation_subset(ctx: Context, param: str = "set", near: str | None = None, container: Any = None,
                    with_every: bool = True) -> tuple[list[str], str]:
    """The ablations the page's per-ablation charts and tables show: every one, or, for a run with more than
    analysis.subsets.MAX_LABELS, one subset chosen here (bound to ``param``; by default the one holding
    ``near``). ``with_every``: "every ablation" is a choice too (charts that list ablations down an axis stay
    readable; one that lists them across does not). -> (names, baseline first, in sweep order; a caption
    saying what is shown, "" when it is every ablation)."""
    groups = subsets.subsets(ctx.ablations)
    if len(groups) == 1:
        return ctx.ablation_names(), ""
    options = list(groups) + ([subsets.EVERY] if with_every else [])
    total = len(ctx.ablations) - 1
    chosen = state.param_select("Ablations shown", options, param, default=subsets.subset_of(groups, near),
                                container=container,
                                format_func=lambda g: f"{g} ({total if g == subsets.EVERY else len(groups[g])})")
    if chosen == subsets.EVERY:
        return ctx.ablation_names(), f"Showing all {total} ablations with baseline."
    return subsets.shown(groups, chosen, ctx.baseline_name), subsets.caption(groups, chosen, total + 1)
