"""The figure pack of a run: every chart of the Overview, Layers, Heads and Flow pages (and of one image),
Table 1, the McNemar tests, the study's Figure 5 for one image and the run's selections, as files, with a
README. ``python -m compute export`` writes it into a folder and the dashboard's Export page into a zip:
the same files, byte for byte, from ``pack_files``. The charts are the very builders the pages draw.

Data and drawing are apart: ``pack_data`` reads the store once (cacheable, picklable frames),
``pack_figures`` turns it into the pack's figures as Vega-Lite specs (cheap), and ``render`` draws one in
one format when a file is asked for. The ablations a figure shows, and their order, are a choice
(``ablations``); significance is decided on the whole run before that choice.

Sizes (analysis.SIZES): "screen" draws a chart as the page does; "one-column" (252 pt) and "two-column"
(504 pt) lay it out for a paper (analysis.print_layout: print fonts, the column's exact width, legends
below, parts when a figure is too tall or too wide for a page). Every file says where it came from
(analysis.provenance); the tables are analysis.pack_tables, the README and what each file shows
analysis.pack_text.

File names say what a file is:
- ``table1.md|.tex|.csv``: the study's Table 1 (every metric); ``table1_<metric>.tex``: one metric, for a
  column; ``mcnemar.csv``; ``selections.csv|.parquet``: every selection of the run;
- ``means_<metric>``, ``change_<metric>``: per ablation, the mean with its 95% interval, and the change
  against baseline; ``layers_<metric>``, ``blocks_<metric>``: single layers and blocks; ``label_accuracy``;
  ``heads_<group>``, ``flow``; ``confusion_<ablation>``;
- with attribution: ``estimates_<kind>`` (each head's estimated change of M), and where the run holds the exact
  effects ``attribution_<kind>`` (estimate against exact per head) and ``attribution_<kind>_pairs`` (every
  (image, head) pair, binned); ``attribution.md|.tex|.csv``: rho, top-k recall and sign agreement per kind;
- ``image<ID>_logits``, ``image<ID>_logits_<ablation>``, ``image<ID>_attention_<ablation>.png``,
  ``image<ID>_figure5.md|.tex|.csv``: one image;
- a run with a decomposition (analysis.decomposition): ``decomposition_layers`` and ``decomposition_heads``
  (direct shares), ``decomposition_effects`` (total, direct, indirect per single layer),
  ``decomposition_effects_<group>_<quantity>`` (per head), ``decomposition_mean_ablation`` (the lab's curve);
  tables ``decomposition_layers|effects|mean_ablation|texts.md|.tex|.csv``;
- a figure split into parts ends in ``_part<K>of<N>``.

``figures`` (``export --figures``) keeps the figures whose name matches one of its names or shell patterns
(``decomposition_*``); the tables are written still.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import vl_convert as vlc

from analysis import FORMATS, SIZES, attribution, charts, heads, print_layout, queries, tables
from analysis import decomposition as dec
from analysis import decomposition_charts as dec_charts
from analysis.pack_data import PackData, default_confusion, pack_data  # noqa: F401 (the pack's API)
from analysis.pack_tables import selections_frame, table_files
from analysis.pack_text import describe, pack_readme
from analysis.provenance import Provenance, stamp
from compute import store
from compute.errors import InputError

PNG_SCALE = 2.0  # print resolution
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "md": "text/markdown",
        "tex": "application/x-tex", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}

ChartBuilder = Callable[[], alt.TopLevelMixin]


def slug(text: str) -> str:
    """A file-name-safe form of an ablation label: identity:1-3 -> identity_1-3."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def find_run_id(con: queries.Con, name: str) -> int:
    return store.require_run(con, name).run_id


def pack_charts(data: PackData) -> dict[str, ChartBuilder]:
    """Every chart of the pack, by file name (no extension), as a builder called when it is needed."""
    s, ab = data.summary, data.ablations
    pack: dict[str, ChartBuilder] = {}
    for metric in tables.metrics_of(s):
        pack[f"means_{metric}"] = lambda m=metric: charts.table1_chart(s, [m])
        pack[f"change_{metric}"] = lambda m=metric: charts.change_chart(s, [m])
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
    found = data.attribution
    for spec, cells in data.estimate_cells.items():
        if len(cells):
            pack[f"estimates_{slug(spec)}"] = lambda c=cells, g=spec: charts.estimate_heatmap(c, g)
    for spec in found.measured if found is not None else []:
        text = attribution.figures_text(found, spec)
        points, bins = attribution.head_points(found, spec), attribution.pair_bins(found, spec)
        pack[f"attribution_{slug(spec)}"] = lambda p=points, g=spec, t=text: charts.attribution_scatter(p, g, t)
        pack[f"attribution_{slug(spec)}_pairs"] = lambda b=bins, g=spec, t=text: charts.attribution_density(b, g, t)
    for name, counts in data.confusion.items():
        pack[f"confusion_{slug(name)}"] = lambda c=counts, n=name: charts.confusion_chart(c, n)
    pack.update(decomposition_charts(data))
    if data.image_scores is not None and len(data.image_scores):
        shown = list(dict.fromkeys([data.baseline, data.image_ablation]))
        pack[f"image{data.image_id}_logits"] = (
            lambda: charts.logit_heatmap(data.image_scores, data.image_selections, data.image_ablation))
        pack[f"image{data.image_id}_logits_{slug(data.image_ablation)}"] = (
            lambda: charts.logit_bars(data.image_scores, shown))
    return pack


def pick_charts(pack: dict[str, ChartBuilder], figures: Sequence[str] | None) -> dict[str, ChartBuilder]:
    """``pack`` itself (``figures`` None), or its charts whose name matches one of ``figures``, names or shell
    patterns (``layers_*``); one that matches none is an error naming the figures there are."""
    if figures is None:
        return pack
    for pattern in figures:
        if not any(fnmatchcase(name, pattern) for name in pack):
            raise InputError(f"no figure of the pack matches {pattern!r}; its figures: {', '.join(pack)}")
    return {name: build for name, build in pack.items() if any(fnmatchcase(name, p) for p in figures)}


def decomposition_charts(data: PackData) -> dict[str, ChartBuilder]:
    """The Decomposition page's charts (none for a run without a decomposition), on the correct prompt's
    logit: the direct shares per layer and per head, the total, direct and indirect effects of the single-layer
    ablations and (per group and quantity) of the single-head ones, the mean-ablation lab's curve."""
    d, table = data.decomposition, data.effects
    if d is None or table is None:
        return {}
    pack: dict[str, ChartBuilder] = {
        "decomposition_layers": lambda: dec_charts.layer_share_chart(dec.layer_parts(d)),
        "decomposition_heads": lambda: dec_charts.head_share_heatmap(dec.head_cells(d)),
    }
    layers = dec.single_layer_rows(table)
    if len(layers):
        pack["decomposition_effects"] = lambda: dec_charts.effects_chart(layers)
    head_rows = dec.head_rows(table)
    for group in dict.fromkeys(head_rows["group"]):
        for q in dec.QUANTITIES:
            pack[f"decomposition_effects_{slug(group)}_{q}"] = (
                lambda g=group, q=q: dec_charts.effects_heatmap(head_rows, q, g))
    base = data.lab["baseline"].iloc[0] if data.lab is not None and len(data.lab) else None
    pack["decomposition_mean_ablation"] = lambda: dec_charts.curve_chart(dec.curve(d), base)
    return pack


# --------------------------------------------------------------------------------------------------
# Figures: specs by file name, rendered on demand.


@dataclass
class Figure:
    """One figure file of the pack, before it is drawn."""

    spec: dict[str, Any]
    what: str


TRANSPOSED = ("label_accuracy",)  # laid out with its longer list down the page at a paper size


def figure_specs(name: str, chart: alt.TopLevelMixin, size: str = "screen") -> dict[str, dict[str, Any]]:
    """The figure files one chart makes at ``size``: {file name without extension: Vega-Lite spec}."""
    if size not in SIZES:
        raise InputError(f"unknown figure size {size!r}: choose from {', '.join(SIZES)}")
    spec = chart.to_dict(validate=False)
    width = SIZES[size]
    if width is None:
        return {name: print_layout.without_hints(spec)}
    if name in TRANSPOSED:  # the longer list down the page, unless that makes more parts
        turned = print_layout.transpose(spec)
        if len(print_layout.parts(turned, width)) <= len(print_layout.parts(spec, width)):
            spec = turned
    figures = print_layout.for_print(spec, width)
    if len(figures) == 1:
        return {name: figures[0]}
    return {f"{name}_part{k}of{len(figures)}": f for k, f in enumerate(figures, start=1)}


def pack_figures(data: PackData, size: str = "screen", figures: Sequence[str] | None = None) -> dict[str, Figure]:
    """Every figure file of the pack at ``size`` (parts included), by file name without extension; only those
    of the charts ``figures`` picks (pick_charts) when given."""
    out = {}
    for name, build in pick_charts(pack_charts(data), figures).items():
        for stem, spec in figure_specs(name, build(), size).items():
            out[stem] = Figure(spec, describe(name, data))
    return out


def _vl_version() -> str:
    return "_".join(alt.SCHEMA_VERSION.split(".")[:2])  # the Vega-Lite Altair writes, as vl-convert names it


def _svg(spec: dict[str, Any]) -> str:
    """The SVG of a spec, the same for the same spec: Vega numbers gradients (and clip paths) across a whole
    process, so they are numbered again from 0 within each file."""
    svg = vlc.vegalite_to_svg(spec, vl_version=_vl_version())
    ids: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return ids.setdefault(match.group(0), f"{match.group(1)}{len(ids)}")

    return re.sub(r"\b(gradient_|clip|pattern_)(\d+)\b", renumber, svg)


def render_all(figure: Figure, formats: Sequence[str], prov: Provenance | None = None) -> dict[str, bytes]:
    """A figure in each of ``formats``: PNG and PDF are made from the one SVG (what vl-convert does inside its
    own PNG and PDF paths), so the costly Vega render runs once per figure instead of once per format."""
    svg = _svg(figure.spec)
    makers = {"svg": lambda: svg.encode(), "png": lambda: vlc.svg_to_png(svg, scale=PNG_SCALE),
              "pdf": lambda: vlc.svg_to_pdf(svg)}
    out = {}
    for fmt in formats:
        if fmt not in makers:
            raise InputError(f"unknown figure format {fmt!r}: choose from {', '.join(FORMATS)}")
        content = makers[fmt]()
        out[fmt] = _bytes(stamp(f"x.{fmt}", content, prov, figure.what)) if prov is not None else content
    return out


def chart_files(chart: alt.TopLevelMixin, formats: Sequence[str] = FORMATS, size: str = "screen",
                name: str = "chart") -> dict[str, bytes]:
    """One chart's files at ``size``, by file name (``name`` and its parts, each in every format)."""
    return {f"{stem}.{fmt}": content for stem, spec in figure_specs(name, chart, size).items()
            for fmt, content in render_all(Figure(spec, name), formats).items()}


def svg_width(svg: str) -> float:
    """The width an SVG declares (its first ``width`` attribute)."""
    match = re.search(r'<svg[^>]*?\swidth="([0-9.]+)', svg)
    return float(match.group(1)) if match else 0.0


def _bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else content


# --------------------------------------------------------------------------------------------------
# The pack: the same files for the command line's folder and the page's zip.


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


def attention_name(data: PackData) -> str:
    return f"image{data.image_id}_attention_{slug(data.image_ablation)}.png"


def pack_files(data: PackData, prov: Provenance, size: str = "screen", formats: Sequence[str] = FORMATS,
               selections: pd.DataFrame | None = None, attention: bytes | None = None,
               figures: Sequence[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Every file of the pack, in order, as (name, content), the README last: the figures at ``size`` in
    ``formats`` (those ``figures`` picks, when given), the image's attention maps (``attention``, a PNG) when
    given, the tables, ``selections``."""
    if size not in SIZES:
        raise InputError(f"unknown figure size {size!r}: choose from {', '.join(SIZES)}")
    listed: list[tuple[str, str, bytes]] = []
    for stem, figure in pack_figures(data, size, figures).items():
        for fmt, content in render_all(figure, formats, prov).items():
            listed.append((f"{stem}.{fmt}", figure.what, content))
            yield listed[-1][0], content
    if attention is not None:
        name = attention_name(data)
        what = describe(name.rsplit(".", 1)[0], data)
        content = _bytes(stamp(name, attention, prov, what))
        listed.append((name, what, content))
        yield name, content
    for name, content in table_files(data, prov, selections).items():
        listed.append((name, describe(name.rsplit(".", 1)[0], data), content))
        yield name, content
    yield "README.md", pack_readme(data, prov, size, listed, figures).encode()


def pack_zip(files: Iterator[tuple[str, bytes]]) -> bytes:
    """The pack as a zip (the Export page's download): the files ``pack_files`` yields, as they are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content,
                       compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def write_pack(db: Path, run: str, out: Path, formats: Sequence[str] = FORMATS,
               confusion: list[str] | None = None, ablations: list[str] | None = None, size: str = "screen",
               image_id: int | None = None, image_ablation: str = "", figures: Sequence[str] | None = None) -> list[Path]:
    """Write the figure pack and tables of ``run`` into ``out``; returns the files written.

    ``confusion``: ablations to draw a confusion chart for, ["all"] for every one, None for the default.
    ``ablations``: the ablations (and their order) of the per-ablation charts and Table 1; None for all.
    ``size``: a key of SIZES. ``image_id``: also that image's logit charts, its attention maps (baseline
    against ``image_ablation``) and its Figure 5 table. ``figures``: only the figures these names or shell
    patterns match (pick_charts; the tables all the same); None for every figure.
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
        if figures is not None:  # a name that matches no figure: one line before the model loads
            pick_charts(pack_charts(data), figures)
        selections = selections_frame(con, run_id)
        attention = attention_png(con, run, image_id, data.image_ablation) if image_id is not None else None
    prov = Provenance.of_run(data.run, db)
    files = list(pack_files(data, prov, size, formats, selections, attention, figures))  # drawn before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files:
        (out / name).write_bytes(content)
        written.append(out / name)
    return written
