"""The select boxes pages share, each bound to a query param (``dashboard.state``): a run's ablations, and
labels with "any" first."""

from __future__ import annotations

from typing import Any

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
