"""Which ablations a chart shows at once, for runs with too many to label readably.

A chart that names every ablation on an axis stays readable up to about MAX_LABELS of them (across a
heatmap at 800 px, upright labels about 12 px apart); the demo's heads run has 89 (baseline, 48 single
heads, 36 single-layer knockouts, 4 knockout blocks). Past MAX_LABELS, pages
show one subset at a time and say so. A subset holds ablations of one kind and one grain (one layer,
several layers, one head, several heads), a large one split by knockout target and then into ranges of
layers, each at most MAX_LABELS long; baseline is shown with every subset as the reference. Runs within the
limit have one subset, every ablation, and pages show no chooser.
"""

from __future__ import annotations

import pandas as pd

MAX_LABELS = 24  # ablation labels one axis holds readably, across a heatmap on an 800 px screen too
EVERY = "every ablation"


def _grain(row: pd.Series) -> str:
    if int(row["n_heads"]) == 0:
        return "one layer" if int(row["n_layers"]) == 1 else "several layers"
    return "one head" if int(row["n_heads"]) == 1 and int(row["n_layers"]) == 1 else "several heads"


def _by_layers(name: str, rows: pd.DataFrame, limit: int) -> dict[str, list[str]]:
    """``rows`` (in sweep order) in runs of consecutive first layers, each at most ``limit`` ablations; a
    layer that alone holds more is cut by count."""
    out: dict[str, list[str]] = {}
    chunk: list[tuple[int, str]] = []

    def close() -> None:
        if chunk:
            first, last = chunk[0][0], chunk[-1][0]
            layers = f"layer {first}" if first == last else f"layers {first}-{last}"
            key = f"{name}, {layers}"
            n = sum(1 for k in out if k == key or k.startswith(key + " ("))
            out[key if n == 0 else f"{key} ({n + 1})"] = [a for _, a in chunk]
            chunk.clear()

    for layer, group in rows.groupby("first_layer", sort=False):
        names = [(int(layer), a) for a in group["ablation"]]
        if chunk and len(chunk) + len(names) > limit:
            close()
        while len(names) > limit:
            chunk.extend(names[:limit])
            names = names[limit:]
            close()
        chunk.extend(names)
    close()
    return out


def subsets(ablations: pd.DataFrame, limit: int = MAX_LABELS) -> dict[str, list[str]]:
    """Name -> the ablations (sweep order, baseline left out) a chart shows together. One subset, EVERY, when
    the run's ablations fit on one axis. ``ablations``: queries.ablations."""
    others = ablations[ablations["kind"] != "baseline"]
    if len(ablations) <= limit:
        return {EVERY: list(others["ablation"])}
    keyed = others.assign(grain=[_grain(r) for _, r in others.iterrows()])
    out: dict[str, list[str]] = {}
    for (kind, grain), rows in keyed.groupby(["kind", "grain"], sort=False):
        name = f"{kind}, {grain}"
        if len(rows) <= limit:
            out[name] = list(rows["ablation"])
            continue
        targets = list(dict.fromkeys(rows["target"]))
        for target in targets:
            part = rows[rows["target"] == target]
            part_name = f"{kind} {target}, {grain}" if target else name
            if len(part) <= limit:
                out[part_name] = list(part["ablation"])
            else:
                out.update(_by_layers(part_name, part, limit))
    return out


def subset_of(groups: dict[str, list[str]], ablation: str | None) -> str:
    """The subset holding ``ablation`` (the first subset for baseline, None or an unknown name)."""
    for name, members in groups.items():
        if ablation in members:
            return name
    return next(iter(groups))


def shown(groups: dict[str, list[str]], name: str, baseline: str) -> list[str]:
    """The ablations a chart of subset ``name`` draws: baseline first, then the subset's."""
    return [baseline, *groups[name]]


def caption(groups: dict[str, list[str]], name: str, total: int) -> str:
    """What a page says above charts of one subset."""
    if len(groups) == 1:
        return ""
    return (f"Showing {len(groups[name])} of the run's {total - 1} ablations ({name}) with baseline: past "
            f"{MAX_LABELS} labels an axis stops being readable; choose another set above.")
