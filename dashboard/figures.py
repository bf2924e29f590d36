"""The figure pack of a run: every chart of the Overview and Layers pages (and of one image), Table 1, the
McNemar tests and the run's selections, as files. Used by the Export page and ``python -m compute export``;
the charts and tables are the very functions the pages draw, so a figure in a paper matches the screen.

Data and drawing are apart: ``pack_data`` reads the store once (cacheable, picklable frames) and
``pack_charts`` turns it into chart builders that run only when a file is asked for.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd
import vl_convert as vlc

from compute import store
from compute.errors import InputError
from dashboard import charts, heads, queries, tables
from dashboard.slices import EVERYTHING, Slice

FORMATS = ("png", "svg", "pdf")
PNG_SCALE = 2.0  # print resolution

ChartBuilder = Callable[[], alt.TopLevelMixin]


def slug(text: str) -> str:
    """A file-name-safe form of an ablation label: identity:1-3 -> identity_1-3."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def find_run_id(con: queries.Con, name: str) -> int:
    runs = queries.runs(con)
    match = runs[runs["run"] == name]
    if match.empty:
        names = ", ".join(sorted(runs["run"])) or "none"
        raise InputError(f"no run named {name!r} in DB; runs: {names}")
    return int(match["run_id"].iloc[0])


@dataclass
class PackData:
    """What the pack's charts are drawn from, for one run and one image-level slice."""

    ablations: pd.DataFrame
    summary: pd.DataFrame
    label_accuracy: pd.DataFrame
    confusion: dict[str, pd.DataFrame] = field(default_factory=dict)  # ablation -> counts
    image_scores: pd.DataFrame | None = None
    image_selections: pd.DataFrame | None = None
    image_id: int | None = None
    image_ablation: str = ""
    tests: pd.DataFrame | None = None  # tables.mcnemar over the same slice (the Heads and Flow charts)


def pack_data(con: queries.Con, run_id: int, where: Slice = EVERYTHING, confusion: Sequence[str] | None = None,
              image_id: int | None = None, image_ablation: str = "") -> PackData:
    """Read everything the pack draws. ``where``: an image-level slice (e.g. one true label) for the
    per-ablation charts. ``confusion``: ablations to draw the confusion chart of (None: baseline and the
    least accurate one). ``image_id``: also the Image page's charts of that image, baseline against
    ``image_ablation``."""
    ab = queries.ablations(con, run_id)
    summary = tables.summary(con, run_id, where)
    if confusion is None:
        computed = summary.dropna(subset=["accuracy"])
        confusion = [tables.baseline_name(ab)]
        if len(computed) > 1:
            confusion.append(str(computed.loc[computed["accuracy"].idxmin(), "ablation"]))
    ids = dict(zip(ab["ablation"], ab["ablation_id"], strict=True))
    data = PackData(ab, summary, queries.label_accuracy(con, run_id), tests=tables.mcnemar(con, run_id, where))
    for name in dict.fromkeys(confusion):
        counts = queries.confusion(con, run_id, int(ids[name]))
        if len(counts):
            data.confusion[name] = counts
    if image_id is not None:
        data.image_id, data.image_ablation = image_id, image_ablation or tables.baseline_name(ab)
        data.image_scores = queries.image_scores(con, run_id, image_id)
        data.image_selections = queries.image_selections(con, run_id, image_id)
    return data


def pack_charts(data: PackData) -> dict[str, ChartBuilder]:
    """Every chart of the pack, by file name (no extension), as a builder called when it is needed."""
    s, ab = data.summary, data.ablations
    pack: dict[str, ChartBuilder] = {
        "table1": lambda: charts.table1_chart(s),
        "change_vs_baseline": lambda: charts.change_chart(s),
    }
    whole_single = (ab["n_layers"] == 1) & (ab["n_heads"] == 0) & (ab["target"] == "")
    for metric in [m for m in tables.METRICS if m != "caption_score" or tables.has_captions(s)]:
        if whole_single.any():
            pack[f"layers_{metric}"] = lambda m=metric: charts.layer_curve(s, m)
        if (ab["n_layers"] > 1).any():
            pack[f"blocks_{metric}"] = lambda m=metric: charts.block_bars(s, m)
    pack["label_accuracy"] = lambda: charts.label_heatmap(data.label_accuracy, ab)
    if data.tests is not None:
        for family in heads.head_families(ab):
            cells = heads.head_cells(s, data.tests, family, "accuracy")
            if len(cells):
                pack[f"heads_{slug(family)}"] = lambda c=cells, f=family: charts.head_heatmap(c, "accuracy", f)
        flow = heads.flow_cells(s, data.tests, "accuracy")
        if len(flow):
            pack["flow"] = lambda: charts.flow_chart(flow, "accuracy")
    for name, counts in data.confusion.items():
        pack[f"confusion_{slug(name)}"] = lambda c=counts, n=name: charts.confusion_chart(c, n)
    if data.image_scores is not None and len(data.image_scores):
        shown = list(dict.fromkeys([tables.baseline_name(ab), data.image_ablation]))
        pack[f"image{data.image_id}_logits"] = lambda: charts.logit_heatmap(data.image_scores, data.image_selections)
        pack[f"image{data.image_id}_logits_{slug(data.image_ablation)}"] = (
            lambda: charts.logit_bars(data.image_scores, shown))
    return pack


def chart_files(chart: alt.TopLevelMixin, formats: Sequence[str] = FORMATS) -> dict[str, bytes]:
    """The chart in each of ``formats`` (png, svg, pdf), rendered by vl-convert.

    Altair's save renders the SVG; PNG and PDF are made from that SVG (what vl-convert does inside its own
    PNG and PDF paths), so the costly Vega render runs once per chart instead of once per format.
    """
    svg_io = io.StringIO()
    chart.save(svg_io, format="svg")
    svg = svg_io.getvalue()
    makers = {
        "svg": lambda: svg.encode(),
        "png": lambda: vlc.svg_to_png(svg, scale=PNG_SCALE),
        "pdf": lambda: vlc.svg_to_pdf(svg),
    }
    return {fmt: makers[fmt]() for fmt in formats}


def selections_frame(con: queries.Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """The slice's selections, one row per image x ablation, for CSV and Parquet (no local paths)."""
    ab = queries.ablations(con, run_id)
    rows = queries.slice_rows(con, run_id, tables.baseline_id(ab), where, sort="image")
    return rows.drop(columns=["path"]).assign(labels=rows["labels"].map("|".join))


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def attention_png(con: queries.Con, run: str, image_id: int, ablation: str, heads: str = "mean") -> bytes:
    """The Image page's attention maps of one image (baseline and ``ablation``) as a PNG, computed from the
    run's model (loaded here: a headless export has no server cache)."""
    import torch

    from compute.ablations import BASELINE, mean_needs, parse_ablation
    from compute.models import load_clip
    from dashboard import overlays

    run_id = find_run_id(con, run)
    info = queries.image(con, run_id, image_id)
    if info is None:
        raise InputError(f"no image {image_id} in run {run!r}")
    model = str(queries.runs(con).set_index("run").loc[run, "model"])
    needs = mean_needs([parse_ablation(ablation)]) if ablation != BASELINE else {}
    clip = load_clip(model, device="cpu")
    stats = queries.mean_stats(con, run, sorted(needs)) if needs else {}
    means = {name: {layer: torch.from_numpy(m) for layer, m in layers.items()} for name, layers in stats.items()}
    maps = overlays.image_maps(clip, str(info["path"]), ablation, means)
    return overlays.png_bytes(overlays.attention_figure(maps, heads))


PACK_TABLES = ["summary.md", "summary.tex", "summary.csv", "mcnemar.csv", "selections.csv", "selections.parquet"]


def pack_readme(run: str, row: dict, files: list[str]) -> str:
    """The pack's README: which run, model and vision tower family made it, what the numbers mean."""
    return "\n".join([
        f"# Figure pack of run {run}",
        "",
        f"- Model: {row['model']}",
        f"- Vision tower: {tables.family_text(row.get('family'))}",
        f"- {row['n_images']} images x {row['n_ablations']} ablations x {row['n_prompts']} prompts "
        f"({row['status']})",
        "",
        "logit is the model's own logit for an (image, prompt) pair (CLIP: logit_scale x cosine; SigLIP: "
        "logit_scale x cosine + logit_bias); prob is the softmax over the run's prompts and the selected prompt "
        "its argmax; score_baseline and caption_score are cosines with the unablated image embedding.",
        "",
        "Files: " + ", ".join(files),
        "",
    ])


def write_pack(db: Path, run: str, out: Path, formats: Sequence[str] = FORMATS,
               confusion: list[str] | None = None, image_id: int | None = None, image_ablation: str = "") -> list[Path]:
    """Write the figure pack and tables of ``run`` into ``out``; returns the files written.

    ``confusion``: ablations to draw a confusion chart for, ["all"] for every one, None for the default.
    ``image_id``: also that image's logit charts and attention maps (baseline against ``image_ablation``).
    """
    with store.connect(db, read_only=True) as con:
        run_id = find_run_id(con, run)
        names = list(queries.ablations(con, run_id)["ablation"])
        if confusion == ["all"]:
            confusion = names
        unknown = [c for c in [*(confusion or []), *([image_ablation] if image_ablation else [])] if c not in names]
        if unknown:
            raise InputError(f"no ablation {unknown[0]!r} in run {run!r}; ablations: {', '.join(names)}")
        data = pack_data(con, run_id, confusion=confusion, image_id=image_id, image_ablation=image_ablation)
        run_row = queries.runs(con).set_index("run").loc[run].to_dict()
        tests = data.tests
        selections = selections_frame(con, run_id)
        attention = None
        if image_id is not None:
            attention = attention_png(con, run, image_id, data.image_ablation)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, content: bytes | str) -> None:
        path = out / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        written.append(path)

    for name, build in pack_charts(data).items():
        for fmt, content in chart_files(build(), formats).items():
            write(f"{name}.{fmt}", content)
    if attention is not None:
        write(f"image{image_id}_attention_{slug(data.image_ablation)}.png", attention)
    write("README.md", pack_readme(run, run_row, [p.name for p in written] + PACK_TABLES))
    write("summary.md", tables.summary_markdown(data.summary))
    write("summary.tex", tables.summary_latex(data.summary))
    write("summary.csv", data.summary.to_csv(index=False))
    write("mcnemar.csv", tests.to_csv(index=False))
    write("selections.csv", selections.to_csv(index=False))
    write("selections.parquet", parquet_bytes(selections))
    return written
