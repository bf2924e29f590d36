"""What the figure pack is drawn from: one read of the store for one run and one image-level slice (cacheable,
picklable frames), used by analysis.figures, analysis.pack_tables and analysis.pack_text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from analysis import attribution, decomposition, queries, tables
from analysis.slices import EVERYTHING, Slice


@dataclass
class PackData:
    """What the pack is drawn from, for one run and one image-level slice."""

    ablations: pd.DataFrame
    summary: pd.DataFrame
    label_accuracy: pd.DataFrame
    confusion: dict[str, pd.DataFrame] = field(default_factory=dict)  # ablation -> counts
    image_scores: pd.DataFrame | None = None
    image_selections: pd.DataFrame | None = None
    image_id: int | None = None
    image_ablation: str = ""
    chosen: list[str] | None = None  # the ablations the per-ablation figures show, in order (None: all)
    baseline: str = "baseline"  # the run's unablated ablation, chosen or not
    tests: pd.DataFrame | None = None  # McNemar over the same slice, the whole run (the Heads and Flow charts)
    run: dict = field(default_factory=dict)  # queries.run_provenance: where the files came from
    info: dict = field(default_factory=dict)  # the run's row of queries.runs (model, family, counts)
    slice_caption: str = ""  # the image-level slice the per-ablation figures are drawn over
    # attribution (analysis.attribution): the run's estimates and their quality (None: the run has none), and
    # per spec each head's mean estimate (the estimated heatmap)
    attribution: attribution.AttributionData | None = None
    estimate_cells: dict[str, pd.DataFrame] = field(default_factory=dict)
    decomposition: decomposition.Decomposition | None = None  # the run's, when it has one (the whole run)
    effects: pd.DataFrame | None = None  # decomposition.effect_table of the whole run
    lab: pd.DataFrame | None = None  # decomposition.lab_presets


def default_confusion(summary: pd.DataFrame, ablations: pd.DataFrame) -> list[str]:
    """The confusion charts a pack draws unless told: baseline and the least accurate ablation."""
    computed = summary.dropna(subset=["accuracy"])
    names = [tables.baseline_name(ablations)]
    if len(computed) > 1:
        names.append(str(computed.loc[computed["accuracy"].idxmin(), "ablation"]))
    return list(dict.fromkeys(names))


def pack_data(con: queries.Con, run_id: int, where: Slice = EVERYTHING, confusion: Sequence[str] | None = None,
              image_id: int | None = None, image_ablation: str = "",
              ablations: Sequence[str] | None = None) -> PackData:
    """Read everything the pack draws. ``where``: an image-level slice (e.g. one true label) for the
    per-ablation charts. ``confusion``: ablations to draw the confusion chart of (None: ``default_confusion``).
    ``image_id``: also the Image page's charts of that image, baseline against ``image_ablation``, and its
    Figure 5 table. ``ablations``: the ablations the per-ablation charts and Table 1 show, in that order
    (None: every one, in sweep order). A run with a decomposition: its figures and tables too (the whole run)."""
    ab = queries.ablations(con, run_id)
    summary = tables.summary(con, run_id, where)  # significance over the whole run, before any choice
    if confusion is None:
        confusion = default_confusion(summary, ab)
    ids = dict(zip(ab["ablation"], ab["ablation_id"], strict=True))
    chosen = list(dict.fromkeys(ablations)) if ablations is not None else None
    label_accuracy = queries.label_accuracy(con, run_id)
    if chosen is not None:
        label_accuracy = label_accuracy[label_accuracy["ablation_id"].isin([ids[a] for a in chosen])]
    info = queries.runs(con)
    info = info[info["run_id"] == run_id].iloc[0].to_dict()
    data = PackData(tables.select_ablations(ab, chosen), tables.select_ablations(summary, chosen), label_accuracy,
                    chosen=chosen, baseline=tables.baseline_name(ab), tests=tables.mcnemar_of(summary),
                    run=queries.run_provenance(con, run_id), info=info,
                    slice_caption=where.caption if where.sql != EVERYTHING.sql else "")
    for name in dict.fromkeys(confusion):
        counts = queries.confusion(con, run_id, int(ids[name]))
        if len(counts):
            data.confusion[name] = counts
    found = attribution.attribution_data(con, run_id)
    if found.specs:
        data.attribution = found
        data.estimate_cells = {spec: attribution.estimate_cells(con, run_id, spec) for spec in found.specs}
    data.decomposition = decomposition.read(con, run_id)
    if data.decomposition is not None:  # over every decomposed image: a slice of images does not apply
        data.effects = decomposition.effect_table(data.decomposition, ab)
        data.lab = decomposition.lab_presets(con, run_id, data.decomposition)
    if image_id is not None:
        data.image_id, data.image_ablation = image_id, image_ablation or data.baseline
        data.image_scores = queries.image_scores(con, run_id, image_id)
        data.image_selections = queries.image_selections(con, run_id, image_id)
    return data
