"""Charts laid out for a paper's column: the figure pack's one-column (252 pt) and two-column (504 pt) files.

Works on the Vega-Lite spec a chart builder (analysis.charts) makes, so the screen's charts stay what they
are and every builder is laid out alike. At a paper size a figure is exactly the column's width (1 px of
the SVG is 1 pt of the PDF) and holds:

- print fonts in one hierarchy (``FONT``): title 9 pt bold, subtitle and axis titles 8, labels 7, numbers
  in cells 6-7 (mark text is scaled as the labels are, from the screen's 10 to 7, and never larger than the
  labels); the font sizes a builder sets for the screen on an axis, a legend, a header or a title (12 px
  head labels, say) give way to these;
- titles and subtitles wrapped to the width; no screen hints ("click a cell ...") in a file, at any size;
- legends below the plot, in as many columns as fit, so the plot keeps the column's width;
- ``ROW`` points per row of a discrete axis and at least ``MIN_COLUMN`` per column; column labels upright
  when they fit, else vertical (never slanted: a slanted label overprints its neighbours in a narrow band);
- quantitative axes with ``TICKS`` ticks asked for (at least 3 labelled in every figure the tests export);
- numbers printed in heatmap cells only where they fit in the cell.

A figure with more rows than ``MAX_ROWS`` (a page's height) or more columns than fit the width is split
into parts (``parts``): each shows a consecutive run of the rows or columns, all on the same scales (the
whole figure's domains), and says which part it is in its subtitle.

Long because every builder's spec passes through the same few rules in order (fonts, legends, marks,
sizes, parts); each rule alone is short, and they only hold together when read in one place.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from analysis import vlspec
from analysis.textwidth import text_width, wrap

Spec = vlspec.Spec

FONT = {"title": 9, "subtitle": 8, "axis_title": 8, "label": 7}
MARK_SCALE = FONT["label"] / 10  # screen text is 10-11 px: numbers in cells shrink as the labels do
MIN_MARK_FONT = 6.0
# Font sizes a builder may set on one axis, legend, header or title for the screen; print sets its own (config).
SCREEN_FONTS = ("fontSize", "labelFontSize", "titleFontSize", "subtitleFontSize")
POINT_SCALE = 0.5  # point areas: a 50 px^2 screen point is 5 pt across on paper
ROW = 10  # points per row of a discrete axis
MIN_COLUMN = 10  # points per column of a discrete x axis, at least
MIN_OFFSET = 4  # points per band of an offset inside a column (points side by side, no label of their own)
MAX_ROWS = 40  # rows per figure: 40 rows and the axes, titles and legend stay within a page's text height
TICKS = 5  # asked of every quantitative axis (Vega keeps at least 3 at the widths used here)
CONTINUOUS_HEIGHT = 0.65  # a chart's own continuous height, scaled for paper
DEFAULT_HEIGHT = 170
PADDING = 5  # Vega-Lite's default padding on each side
# A screen hint is a clause that tells the reader to use a mouse; files have none.
HINT = re.compile(r"(^|[;,.]\s*)(click|double-click|hover|drag|select|shift-click)\b[^;]*", re.IGNORECASE)
POSITION = {"x": ("x", "x2"), "y": ("y", "y2")}


# --------------------------------------------------------------------------------------------------
# Titles.


def _strip_hints(text: str) -> str:
    return HINT.sub("", text).strip(" ;,")


def _title_lines(text: Any) -> list[str]:
    lines = text if isinstance(text, list) else [text]
    return [line for line in (_strip_hints(str(t)) for t in lines if t is not None) if line]


def without_hints(spec: Spec) -> Spec:
    """``spec`` with the screen hints taken out of its title and subtitle (every size: no file has them)."""
    spec = copy.deepcopy(spec)
    title = spec.get("title")
    if isinstance(title, dict):
        title["text"] = _title_lines(title.get("text", ""))
        if "subtitle" in title:
            title["subtitle"] = _title_lines(title["subtitle"])
            if not title["subtitle"]:
                del title["subtitle"]
    elif title is not None:
        spec["title"] = _title_lines(title)
    return spec


def _wrap_title(spec: Spec, width: float) -> None:
    title = spec.get("title")
    if title is None:
        return
    if not isinstance(title, dict):
        title = spec["title"] = {"text": title}
    room = width - 2 * PADDING
    text = title.get("text", [])
    title["text"] = [line for t in (text if isinstance(text, list) else [text])
                     for line in wrap(str(t), FONT["title"], room, bold=True)]
    if title.get("subtitle"):
        sub = title["subtitle"]
        title["subtitle"] = [line for t in (sub if isinstance(sub, list) else [sub])
                             for line in wrap(str(t), FONT["subtitle"], room)]


def _add_subtitle(spec: Spec, line: str) -> None:
    title = spec.get("title")
    if title is None:
        spec["title"] = {"text": [""], "subtitle": [line]}
        return
    if not isinstance(title, dict):
        title = spec["title"] = {"text": title}
    sub = title.get("subtitle", [])
    title["subtitle"] = (sub if isinstance(sub, list) else [sub]) + [line]


# --------------------------------------------------------------------------------------------------
# Parts: a figure too tall or too wide for a column, split.


def _axis_room(spec: Spec, channel: str) -> float:
    """Points the axis of ``channel`` takes across the plot (labels, ticks, title), estimated."""
    enc = next((u["encoding"][channel] for u in vlspec.units(spec) if vlspec.field_of(u.get("encoding", {}).get(channel))), None)
    if enc is None:
        return 0.0
    # a quantitative axis: a typical label
    labels = vlspec.label_texts(vlspec.categories(spec, channel)) if enc.get("type") in vlspec.DISCRETE else ["−0.000"]
    widest = max((text_width(t, FONT["label"]) for t in labels), default=0.0)
    title = vlspec.title_of(enc)
    return widest + 8 + (FONT["axis_title"] + 6 if title else 0)


def plot_width(spec: Spec, width: float) -> float:
    """The plot's width inside a ``width``-point figure: what the y axis and the padding leave."""
    return width - 2 * PADDING - _axis_room(spec, "y")


def _x_categories(spec: Spec) -> int:
    """Bands across the plot: the x categories, times the offset categories inside each."""
    n = len(vlspec.categories(spec, "x")) if vlspec.is_discrete(spec, "x") else 0
    if n and vlspec.is_discrete(spec, "xOffset"):
        n *= max(1, len(vlspec.categories(spec, "xOffset")))
    return n


def _balanced(n: int, most: int) -> list[tuple[int, int]]:
    """(start, stop) of ceil(n / most) consecutive parts of near-equal size."""
    k = max(1, math.ceil(n / max(1, most)))
    size = math.ceil(n / k)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _domain(spec: Spec, channel: str) -> list[float] | None:
    """The whole figure's extent along a quantitative ``channel`` (and its x2/y2), zero included for bars,
    to keep every part on the same scale; None where a layer fixes its own domain."""
    lo, hi, bars = math.inf, -math.inf, False
    for unit in vlspec.units(spec):
        enc = unit.get("encoding", {})
        for ch in POSITION.get(channel, (channel,)):
            e = enc.get(ch)
            field = vlspec.field_of(e)
            if field is None:
                continue
            if ch == channel and (e.get("type") != "quantitative" or "domain" in (e.get("scale") or {})):
                return None
            for r in vlspec.rows_of(spec, unit):
                v = r.get(field)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    lo, hi = min(lo, v), max(hi, v)
        bars |= vlspec.mark_type(unit) in ("bar", "area") and channel in POSITION
    if lo > hi:
        return None
    if bars:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return [lo, hi]


def _fix_domains(spec: Spec) -> None:
    for channel in ("x", "y", "color", "fill", "size"):
        domain = _domain(spec, channel)
        if domain is None:
            continue
        for unit in vlspec.units(spec):
            enc = unit.get("encoding", {}).get(channel)
            if vlspec.field_of(enc) and enc.get("type") == "quantitative":
                enc["scale"] = {**(enc.get("scale") or {}), "domain": domain}


def _only(spec: Spec, channel: str, keep: list) -> Spec:
    """The part of ``spec`` whose ``channel`` shows ``keep``; the other position channel keeps every category
    it had (a sparse grid's rows stay the same in every part)."""
    other = "y" if channel == "x" else "x"
    across = vlspec.categories(spec, other) if vlspec.is_discrete(spec, other) else []
    part = copy.deepcopy(spec)
    for unit in vlspec.units(part):
        enc = unit.get("encoding", {})
        field = vlspec.field_of(enc.get(channel))
        if field is not None:
            unit["transform"] = [{"filter": {"field": field, "oneOf": keep}}] + unit.get("transform", [])
            if enc[channel].get("type") in vlspec.DISCRETE:
                enc[channel]["scale"] = {**(enc[channel].get("scale") or {}), "domain": list(keep)}
        if across and vlspec.field_of(enc.get(other)) and enc[other].get("type") in vlspec.DISCRETE:
            enc[other]["scale"] = {**(enc[other].get("scale") or {}), "domain": across}
    return part


def parts(spec: Spec, width: float) -> list[Spec]:
    """``spec`` as one figure, or split into parts along its rows (more than MAX_ROWS) and then its
    columns (more than fit at MIN_COLUMN points each); every part keeps the whole figure's scales and
    says in its subtitle which part it is."""
    spec = copy.deepcopy(spec)
    rows = vlspec.categories(spec, "y") if vlspec.is_discrete(spec, "y") else []
    row_parts = _balanced(len(rows), MAX_ROWS) if len(rows) > MAX_ROWS else []
    columns = vlspec.categories(spec, "x") if vlspec.is_discrete(spec, "x") else []
    offsets = max(1, _x_categories(spec) // max(1, len(columns))) if columns else 1
    fit = max(1, int(plot_width(spec, width) // max(MIN_COLUMN, MIN_OFFSET * offsets)))
    column_parts = _balanced(len(columns), fit) if len(columns) > fit else []
    if not row_parts and not column_parts:
        return [spec]
    _fix_domains(spec)
    pieces: list[tuple[Spec, list[str]]] = [(spec, [])]
    for channel, values, ranges in (("y", rows, row_parts), ("x", columns, column_parts)):
        if not ranges:
            continue
        enc = next(u["encoding"][channel] for u in vlspec.units(spec) if vlspec.field_of(u.get("encoding", {}).get(channel)))
        what = str(enc.get("field")).replace("_", " ")
        what = what if what.endswith("s") else what + "s"
        pieces = [(_only(piece, channel, values[a:b]), notes + [f"{what} {a + 1}-{b} of {len(values)}"])
                  for piece, notes in pieces for a, b in ranges]
    out = []
    for k, (piece, notes) in enumerate(pieces, start=1):
        _add_subtitle(piece, f"part {k} of {len(pieces)}: " + ", ".join(notes))
        out.append(piece)
    return out


# --------------------------------------------------------------------------------------------------
# Laying one figure out.


def transpose(spec: Spec) -> Spec:
    """``spec`` with its x and y channels exchanged (a heatmap whose long list should run down the page)."""
    spec = copy.deepcopy(spec)
    pairs = (("x", "y"), ("x2", "y2"), ("xOffset", "yOffset"))
    for unit in vlspec.units(spec):
        enc = unit.get("encoding", {})
        for a, b in pairs:
            ea, eb = enc.pop(a, None), enc.pop(b, None)
            if eb is not None:
                enc[a] = eb
            if ea is not None:
                enc[b] = ea
        for ch in ("x", "y", "x2", "y2"):
            e = enc.get(ch)
            if isinstance(e, dict) and isinstance(e.get("axis"), dict):
                e["axis"] = {k: v for k, v in e["axis"].items() if k not in ("labelAngle", "orient")}
            if isinstance(e, dict) and e.get("value") in ("height", "width"):
                e["value"] = "width" if ch.startswith("x") else "height"
    for a, b in (("width", "height"),):
        wa, wb = spec.pop(a, None), spec.pop(b, None)
        if wb is not None:
            spec[a] = wb
        if wa is not None:
            spec[b] = wa
    return spec


def _config(spec: Spec, width: float) -> None:
    config = spec.setdefault("config", {})

    def merge(key: str, values: dict) -> None:
        config[key] = {**config.get(key, {}), **values}

    merge("title", {"fontSize": FONT["title"], "subtitleFontSize": FONT["subtitle"], "anchor": "start",
                    "subtitlePadding": 2, "offset": 6, "limit": width - 2 * PADDING})
    merge("axis", {"labelFontSize": FONT["label"], "titleFontSize": FONT["axis_title"], "labelLimit": width / 2,
                   "titlePadding": 4})
    merge("axisQuantitative", {"tickCount": TICKS})
    merge("legend", {"labelFontSize": FONT["label"], "titleFontSize": FONT["axis_title"], "orient": "bottom",
                     "direction": "horizontal", "titleOrient": "top", "symbolSize": 40, "columnPadding": 8,
                     "gradientLength": min(200, width - 4 * PADDING), "gradientThickness": 8,
                     "labelLimit": width - 40, "titleLimit": width - 2 * PADDING})
    merge("header", {"labelFontSize": FONT["axis_title"], "titleFontSize": FONT["axis_title"]})
    merge("text", {"fontSize": round(10 * MARK_SCALE, 1)})


def _without_screen_fonts(node: Any) -> None:
    """Drop the font sizes set on single axes, legends, headers and titles anywhere in a spec: they outrank the
    config, and print's hierarchy is the config's (a 12 px label in a 10-point row overprints its neighbours)."""
    if isinstance(node, list):
        for item in node:
            _without_screen_fonts(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("data", "datasets", "config"):  # rows, not chart properties; print's own config
            continue
        if key in ("axis", "legend", "header", "title") and isinstance(value, dict):
            for font in SCREEN_FONTS:
                value.pop(font, None)
        _without_screen_fonts(value)


def mark_font(screen: float | None) -> float:
    """The print size of a text mark drawn at ``screen`` px on screen (None: Vega's default, 10 px): scaled as
    the labels are, at least MIN_MARK_FONT, never larger than the labels."""
    return min(FONT["label"], max(MIN_MARK_FONT, round((screen or 10) * MARK_SCALE, 1)))


def _fit_legends(spec: Spec, width: float) -> None:
    """Symbol legends below the plot in as many columns as fit: a legend below starts at the plot's left edge,
    so it has the plot's width."""
    room = plot_width(spec, width)
    for unit in vlspec.units(spec):
        for channel in ("color", "fill", "shape", "stroke", "strokeDash"):
            enc = unit.get("encoding", {}).get(channel)
            if not vlspec.field_of(enc) or enc.get("legend", {}) is None:
                continue
            if enc.get("type") not in vlspec.DISCRETE:  # a gradient: its end labels stand out half their width
                enc["legend"] = {**(enc.get("legend") or {}), "orient": "bottom", "direction": "horizontal",
                                 "gradientLength": max(40, min(200, room - 20))}
                continue
            domain = (enc.get("scale") or {}).get("domain") or vlspec.categories(spec, channel) or \
                list(dict.fromkeys(r.get(enc["field"]) for r in vlspec.rows_of(spec, unit)))
            widest = max((text_width(t, FONT["label"]) for t in vlspec.label_texts(domain)), default=0.0)
            entry = 8 + 5 + widest + 8  # symbol, its gap, the label, the column padding
            legend = {k: v for k, v in (enc.get("legend") or {}).items() if k not in ("orient", "direction")}
            enc["legend"] = {**legend, "orient": "bottom", "direction": "horizontal",
                             "columns": max(1, min(len(domain), int(room // entry)))}


def _cell_text_fits(spec: Spec, unit: Spec, width: float) -> bool:
    """Whether a text layer's numbers fit in the cells of a heatmap (both axes discrete) laid out at
    ``width``; True for text that is not in a grid."""
    enc = unit.get("encoding", {})
    if not (vlspec.field_of(enc.get("x")) and vlspec.field_of(enc.get("y")) and vlspec.is_discrete(spec, "x") and vlspec.is_discrete(spec, "y")):
        return True
    text = enc.get("text") or {}
    field, fmt = vlspec.field_of(text), str(text.get("format", "")).replace("~", "")
    size = mark_font(unit["mark"].get("fontSize") if isinstance(unit["mark"], dict) else None)  # as it is drawn
    samples = []
    for r in vlspec.rows_of(spec, unit):
        v = r.get(field)
        try:
            samples.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        except ValueError:
            samples.append(str(v))
    widest = max((text_width(s.replace("-", "−"), size) for s in samples), default=0.0)
    cell = plot_width(spec, width) / max(1, _x_categories(spec))
    return widest + 2 <= cell and size + 2 <= ROW + 4


def _x_labels(spec: Spec, width: float) -> None:
    """Column labels upright when each fits its column, else vertical."""
    if not vlspec.is_discrete(spec, "x"):
        return
    values = vlspec.label_texts(vlspec.categories(spec, "x"))
    step = plot_width(spec, width) / max(1, len(values))
    upright = max((text_width(v, FONT["label"]) for v in values), default=0.0) + 2 <= step
    for unit in vlspec.units(spec):
        enc = unit.get("encoding", {}).get("x")
        if vlspec.field_of(enc) and enc.get("type") in vlspec.DISCRETE and enc.get("axis", {}) is not None:
            axis = {k: v for k, v in (enc.get("axis") or {}).items() if k not in ("labelAngle", "labelAlign",
                                                                                  "labelBaseline")}
            enc["axis"] = {**axis, "labelAngle": 0 if upright else -90}


def _marks(spec: Spec, width: float) -> None:
    keep = []
    for layer in spec.get("layer", []):
        units = vlspec.units(layer)
        if units and all(vlspec.mark_type(u) == "text" and not _cell_text_fits(spec, u, width) for u in units):
            continue  # numbers that cannot fit their cells: the colour says it
        keep.append(layer)
    if "layer" in spec:
        spec["layer"] = keep
    for unit in vlspec.units(spec):
        mark = unit["mark"] if isinstance(unit["mark"], dict) else {"type": unit["mark"]}
        unit["mark"] = mark
        if mark["type"] == "text":
            if "fontSize" in mark:
                mark["fontSize"] = mark_font(mark["fontSize"])
            for key in ("dx", "dy"):
                if key in mark:
                    mark[key] = round(mark[key] * MARK_SCALE, 1)
        if mark["type"] in ("point", "circle", "square") and isinstance(mark.get("size"), (int, float)):
            mark["size"] = round(mark["size"] * POINT_SCALE, 1)


def _size(spec: Spec, width: float) -> None:
    spec["width"] = width
    spec["autosize"] = {"type": "fit-x", "contains": "padding"}
    if vlspec.is_discrete(spec, "y"):
        offsets = len(vlspec.categories(spec, "yOffset")) if vlspec.is_discrete(spec, "yOffset") else 1
        spec["height"] = {"step": ROW * max(1, offsets)}
        if offsets > 1:
            spec["height"]["for"] = "position"
    else:
        height = spec.get("height")
        spec["height"] = round(height * CONTINUOUS_HEIGHT) if isinstance(height, (int, float)) else DEFAULT_HEIGHT
    for unit in vlspec.units(spec):  # the top level sizes the figure; a layer's own size would fight it
        if unit is not spec:
            unit.pop("width", None)
            unit.pop("height", None)


def layout(spec: Spec, width: float) -> Spec:
    """One figure (a single or layered chart) laid out ``width`` points wide for print."""
    spec = without_hints(spec)
    _without_screen_fonts(spec)
    if not vlspec.units(spec):  # a composition this module does not lay out: as drawn, with print fonts
        _config(spec, width)
        return spec
    _config(spec, width)
    _wrap_title(spec, width)
    _fit_legends(spec, width)
    _x_labels(spec, width)
    _marks(spec, width)
    _size(spec, width)
    return spec


def for_print(spec: Spec, width: float) -> list[Spec]:
    """The figures a chart makes ``width`` points wide: itself, or its parts, each laid out."""
    return [layout(part, width) for part in parts(without_hints(spec), width)]
