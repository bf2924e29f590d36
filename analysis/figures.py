"""The figure pack of a run: every chart of the Overview and Layers pages (and of one image), Table 1, the
McNemar tests, the study's Figure 5 for one image and the run's selections, as files. Used by the Export
page and ``python -m compute export``; the charts and tables are the very functions the pages draw, so a
figure in a paper matches the screen.

Data and drawing are apart: ``pack_data`` reads the store once (cacheable, picklable frames) and
``pack_charts`` turns it into chart builders that run only when a file is asked for. The ablations a
figure shows, and their order, are a choice (``ablations``); significance is decided on the whole run
before that choice. ``SIZES`` lays a chart out for a paper's column: its width in points (1 px of the
SVG is 1 pt of the PDF), print font sizes.
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

from analysis import FORMATS, SIZES, charts, heads, queries, tables
from analysis.slices import EVERYTHING, Slice
from analysis.text import md_cell
from compute import store
from compute.errors import InputError

PNG_SCALE = 2.0  # print resolution
# Figure widths in points (= SVG px = PDF pt); None: as drawn on screen.
SIZE_TITLES = {"screen": "as on screen", "one-column": "one column (3.5 in, 252 pt)",
               "two-column": "two columns (7 in, 504 pt)"}
PRINT_FONT = {"label": 7, "title": 8, "chart_title": 9}  # points, for the paper sizes
MIN_PANEL = 30  # px: the narrowest panel of a faceted chart laid out for a column

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
    chosen: list[str] | None = None  # the ablations the per-ablation figures show, in order (None: all)
    baseline: str = "baseline"  # the run's unablated ablation, chosen or not
    tests: pd.DataFrame | None = None  # McNemar over the same slice, the whole run (the Heads and Flow charts)


def pack_data(con: queries.Con, run_id: int, where: Slice = EVERYTHING, confusion: Sequence[str] | None = None,
              image_id: int | None = None, image_ablation: str = "",
              ablations: Sequence[str] | None = None) -> PackData:
    """Read everything the pack draws. ``where``: an image-level slice (e.g. one true label) for the
    per-ablation charts. ``confusion``: ablations to draw the confusion chart of (None: baseline and the
    least accurate one). ``image_id``: also the Image page's charts of that image, baseline against
    ``image_ablation``, and its Figure 5 table. ``ablations``: the ablations the per-ablation charts and
    Table 1 show, in that order (None: every one, in sweep order)."""
    ab = queries.ablations(con, run_id)
    summary = tables.summary(con, run_id, where)  # significance over the whole run, before any choice
    if confusion is None:
        computed = summary.dropna(subset=["accuracy"])
        confusion = [tables.baseline_name(ab)]
        if len(computed) > 1:
            confusion.append(str(computed.loc[computed["accuracy"].idxmin(), "ablation"]))
    ids = dict(zip(ab["ablation"], ab["ablation_id"], strict=True))
    chosen = list(dict.fromkeys(ablations)) if ablations is not None else None
    label_accuracy = queries.label_accuracy(con, run_id)
    if chosen is not None:
        label_accuracy = label_accuracy[label_accuracy["ablation_id"].isin([ids[a] for a in chosen])]
    data = PackData(tables.select_ablations(ab, chosen), tables.select_ablations(summary, chosen), label_accuracy,
                    chosen=chosen, baseline=tables.baseline_name(ab), tests=tables.mcnemar_of(summary))
    for name in dict.fromkeys(confusion):
        counts = queries.confusion(con, run_id, int(ids[name]))
        if len(counts):
            data.confusion[name] = counts
    if image_id is not None:
        data.image_id, data.image_ablation = image_id, image_ablation or data.baseline
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
    for metric in tables.metrics_of(s):
        if whole_single.any():
            pack[f"layers_{metric}"] = lambda m=metric: charts.layer_curve(s, m)
        if (ab["n_layers"] > 1).any():
            pack[f"blocks_{metric}"] = lambda m=metric: charts.block_bars(s, m)
    pack["label_accuracy"] = lambda: charts.label_heatmap(data.label_accuracy, ab)
    if data.tests is not None:
        for group in heads.head_groups(ab):
            cells = heads.head_cells(s, data.tests, group, "accuracy")
            if len(cells):
                pack[f"heads_{slug(group)}"] = lambda c=cells, g=group: charts.head_heatmap(c, "accuracy", g)
        flow = heads.flow_cells(s, data.tests, "accuracy")
        if len(flow):
            pack["flow"] = lambda: charts.flow_chart(flow, "accuracy")
    for name, counts in data.confusion.items():
        pack[f"confusion_{slug(name)}"] = lambda c=counts, n=name: charts.confusion_chart(c, n)
    if data.image_scores is not None and len(data.image_scores):
        shown = list(dict.fromkeys([data.baseline, data.image_ablation]))
        pack[f"image{data.image_id}_logits"] = (
            lambda: charts.logit_heatmap(data.image_scores, data.image_selections, data.image_ablation))
        pack[f"image{data.image_id}_logits_{slug(data.image_ablation)}"] = (
            lambda: charts.logit_bars(data.image_scores, shown))
    return pack


# --------------------------------------------------------------------------------------------------
# Sizes for a paper.


def sized(chart: alt.TopLevelMixin, size: str = "screen") -> alt.TopLevelMixin:
    """``chart`` laid out ``SIZES[size]`` points wide with print font sizes (unchanged for "screen").

    A single or layered chart fits its whole width, axes and legend included (Vega-Lite's fit-x). A faceted
    one cannot fit itself: its panel width is solved from two trial renders (the total width grows by
    one pixel per pixel of panel width and panel). Other compositions keep their own widths.
    """
    if size not in SIZES:
        raise InputError(f"unknown figure size {size!r}: choose from {', '.join(SIZES)}")
    target = SIZES[size]
    if target is None:
        return chart
    chart = chart.configure_axis(labelFontSize=PRINT_FONT["label"], titleFontSize=PRINT_FONT["title"]) \
        .configure_legend(labelFontSize=PRINT_FONT["label"], titleFontSize=PRINT_FONT["title"]) \
        .configure_header(labelFontSize=PRINT_FONT["title"], titleFontSize=PRINT_FONT["title"]) \
        .configure_title(fontSize=PRINT_FONT["chart_title"])
    if isinstance(chart, alt.FacetChart):
        def total(panel: int) -> float:
            trial = chart.copy(deep=True)
            trial.spec.width = panel
            return svg_width(_svg(trial))

        # Secant steps on the panel width: axis ticks change with the width, so the total is only nearly
        # linear in it; a few steps land within a few points.
        w0, w1 = 120, 160
        t0, t1 = total(w0), total(w1)
        for _ in range(3):
            per_pixel = max((t1 - t0) / (w1 - w0), 1e-6) if w1 != w0 else 1.0
            w2 = max(MIN_PANEL, int(round(w1 + (target - t1) / per_pixel)))
            if w2 == w1:
                break
            w0, t0, w1, t1 = w1, t1, w2, total(w2)
            if abs(t1 - target) <= 2:
                break
        chart = chart.copy(deep=True)
        chart.spec.width = w1
        return chart
    if isinstance(chart, (alt.Chart, alt.LayerChart)):
        return chart.properties(width=target, autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
    return chart


def svg_width(svg: str) -> float:
    """The width an SVG declares (its first ``width`` attribute)."""
    match = re.search(r'<svg[^>]*?\swidth="([0-9.]+)', svg)
    return float(match.group(1)) if match else 0.0


def _svg(chart: alt.TopLevelMixin) -> str:
    svg_io = io.StringIO()
    chart.save(svg_io, format="svg")
    return svg_io.getvalue()


def chart_files(chart: alt.TopLevelMixin, formats: Sequence[str] = FORMATS, size: str = "screen") -> dict[str, bytes]:
    """The chart in each of ``formats`` (png, svg, pdf) at ``size`` (SIZES), rendered by vl-convert.

    Altair's save renders the SVG; PNG and PDF are made from that SVG (what vl-convert does inside its own
    PNG and PDF paths), so the costly Vega render runs once per chart instead of once per format.
    """
    svg = _svg(sized(chart, size))
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
    return rows.assign(labels=rows["labels"].map("|".join))


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The study's Figure 5 for one image: the prompt each ablation selects and the caption that continues it.


def figure5_cells(selections: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per ablation, in sweep order, never merged (a merged "9-12" would read as
    single layers in one row and a block in another)."""
    captions = selections["caption"].notna().any()
    header = ["Ablation", "Selected prompt", "Right"] + (["Generated caption"] if captions else [])
    rows = []
    for r in selections.itertuples():
        row = [str(r.ablation), str(r.selected_prompt), "✓" if r.correct else "✗"]
        if captions:
            row.append("" if pd.isna(r.caption) else str(r.caption))
        rows.append(row)
    return header, rows


def figure5_markdown(selections: pd.DataFrame) -> str:
    header, rows = figure5_cells(selections)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def figure5_latex(selections: pd.DataFrame) -> str:
    header, rows = figure5_cells(selections)
    marks = {"✓": r"\checkmark", "✗": r"$\times$"}  # \checkmark: amssymb
    lines = [r"\begin{tabular}{l" + "l" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(marks.get(v, tables.latex_escape(v)) for v in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def attention_png(con: queries.Con, run: str, image_id: int, ablation: str, heads: str = "mean") -> bytes:
    """The Image page's attention maps of one image (baseline and ``ablation``) as a PNG, computed from the
    run's model (loaded here: a headless export has no server cache)."""
    import torch

    from analysis import overlays
    from compute.ablations import BASELINE, mean_needs, parse_ablation
    from compute.dataset import ImageLoadError
    from compute.models import load_clip

    run_id = find_run_id(con, run)
    info = queries.image(con, run_id, image_id)
    if info is None:
        raise InputError(f"no image {image_id} in run {run!r}")
    if not info["path"]:
        raise InputError(f"image {image_id} of run {run!r} was never read (its file lies outside the images "
                         f"folder): it has no attention maps")
    model = str(queries.runs(con).set_index("run").loc[run, "model"])
    needs = mean_needs([parse_ablation(ablation)]) if ablation != BASELINE else {}
    clip = load_clip(model, device="cpu")
    stats = queries.mean_stats(con, run, sorted(needs)) if needs else {}
    means = {name: {layer: torch.from_numpy(m) for layer, m in layers.items()} for name, layers in stats.items()}
    try:
        maps = overlays.image_maps(clip, str(info["path"]), ablation, means)
    except ImageLoadError as e:  # the file the store lists has gone, changed, or is not an image
        raise InputError(f"image {image_id} of run {run!r} cannot be read: {e}") from None
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
               confusion: list[str] | None = None, ablations: list[str] | None = None, size: str = "screen",
               image_id: int | None = None, image_ablation: str = "") -> list[Path]:
    """Write the figure pack and tables of ``run`` into ``out``; returns the files written.

    ``confusion``: ablations to draw a confusion chart for, ["all"] for every one, None for the default.
    ``ablations``: the ablations (and their order) of the per-ablation charts and Table 1; None for all.
    ``size``: a key of SIZES. ``image_id``: also that image's logit charts, its attention maps (baseline
    against ``image_ablation``) and its Figure 5 table.
    """
    if size not in SIZES:
        raise InputError(f"unknown figure size {size!r}: choose from {', '.join(SIZES)}")
    with store.connect(db, read_only=True) as con:
        run_id = find_run_id(con, run)
        names = list(queries.ablations(con, run_id)["ablation"])
        if confusion == ["all"]:
            confusion = names
        unknown = [c for c in [*(confusion or []), *(ablations or []), *([image_ablation] if image_ablation else [])]
                   if c not in names]
        if unknown:
            raise InputError(f"no ablation {unknown[0]!r} in run {run!r}; ablations: {', '.join(names)}")
        if image_id is not None and queries.image(con, run_id, image_id) is None:
            raise InputError(f"no image {image_id} in run {run!r}")
        data = pack_data(con, run_id, confusion=confusion, image_id=image_id, image_ablation=image_ablation,
                         ablations=ablations)
        run_row = queries.runs(con).set_index("run").loc[run].to_dict()
        tests = tables.mcnemar_of(data.summary)  # the chosen ablations, Holm-adjusted over the whole run
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
        for fmt, content in chart_files(build(), formats, size).items():
            write(f"{name}.{fmt}", content)
    if attention is not None:
        write(f"image{image_id}_attention_{slug(data.image_ablation)}.png", attention)
    if data.image_selections is not None and len(data.image_selections):
        picks = tables.select_ablations(data.image_selections, data.chosen)
        write(f"image{image_id}_figure5.md", figure5_markdown(picks))
        write(f"image{image_id}_figure5.tex", figure5_latex(picks))
        write(f"image{image_id}_figure5.csv", picks.to_csv(index=False))
    write("README.md", pack_readme(run, run_row, [p.name for p in written] + PACK_TABLES))
    write("summary.md", tables.summary_markdown(data.summary))
    write("summary.tex", tables.summary_latex(data.summary))
    write("summary.csv", data.summary.to_csv(index=False))
    write("mcnemar.csv", tests.to_csv(index=False))
    write("selections.csv", selections.to_csv(index=False))
    write("selections.parquet", parquet_bytes(selections))
    return written
