"""Does an exported figure hold? ``python -m tools.figure_check FOLDER_OR_SVG...`` lists what is wrong.

Reads an SVG as vl-convert writes it (every text a ``<text>`` element placed by nested transforms, with its
font size, weight and anchor) and measures each text's box with the font's own widths
(analysis.textwidth): from the baseline up by 0.75 and down by 0.21 of the font size, as wide as the string,
turned with the text. Problems found:

- ``overlap``: two text boxes overlap by more than ``TOLERANCE`` points both ways;
- ``outside``: a text box leaves the canvas (clipped in the file);
- ``ticks``: a quantitative axis (Vega's aria-label "... for a linear scale ...", or log, pow, sqrt, time)
  shows fewer than ``MIN_TICKS`` labels;
- ``width``: with ``width=``, the canvas is wider than that (a figure for a column must fit it).

The figure tests run this on every SVG of the packs they export; run it by hand on a pack folder.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from analysis.textwidth import ASCENT, DESCENT, text_width

SVG = "{http://www.w3.org/2000/svg}"
TOLERANCE = 0.5  # points: boxes that merely touch (rounding) do not count
MIN_TICKS = 3
QUANTITATIVE = re.compile(r"for a (linear|log|pow|sqrt|symlog|time|utc) scale")

Matrix = tuple[float, float, float, float, float, float]  # SVG's (a, b, c, d, e, f)
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _multiply(m: Matrix, n: Matrix) -> Matrix:
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = n
    return (a * a2 + c * b2, b * a2 + d * b2, a * c2 + c * d2, b * c2 + d * d2, a * e2 + c * f2 + e,
            b * e2 + d * f2 + f)


def parse_transform(text: str | None) -> Matrix:
    """An SVG transform attribute (translate, rotate, scale, matrix, in any sequence) as one matrix."""
    m = IDENTITY
    for name, args in re.findall(r"(\w+)\s*\(([^)]*)\)", text or ""):
        v = [float(x) for x in re.split(r"[\s,]+", args.strip()) if x]
        if name == "translate":
            step = (1.0, 0.0, 0.0, 1.0, v[0], v[1] if len(v) > 1 else 0.0)
        elif name == "scale":
            step = (v[0], 0.0, 0.0, v[1] if len(v) > 1 else v[0], 0.0, 0.0)
        elif name == "rotate":
            r = math.radians(v[0])
            step = (math.cos(r), math.sin(r), -math.sin(r), math.cos(r), 0.0, 0.0)
            if len(v) == 3:  # rotate(a, cx, cy)
                step = _multiply(_multiply((1, 0, 0, 1, v[1], v[2]), step), (1, 0, 0, 1, -v[1], -v[2]))
        elif name == "matrix":
            step = tuple(v[:6])  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown SVG transform {name!r}")
        m = _multiply(m, step)
    return m


def _apply(m: Matrix, x: float, y: float) -> tuple[float, float]:
    a, b, c, d, e, f = m
    return a * x + c * y + e, b * x + d * y + f


@dataclass
class TextBox:
    text: str
    role: str  # the Vega role of the group that holds it (axis-label, title-text, mark text, ...)
    corners: list[tuple[float, float]]  # the box on the canvas, four corners in order
    axis: int  # index of the axis group it belongs to, -1 outside any axis

    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.corners], [p[1] for p in self.corners]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class Figure:
    width: float
    height: float
    texts: list[TextBox]
    axes: list[tuple[str, int]]  # (aria-label, visible labels) of each axis


def _font_size(el: ET.Element, inherited: float) -> float:
    size = el.get("font-size") or re.search(r"font-size:\s*([0-9.]+)", el.get("style") or "")
    if isinstance(size, re.Match):
        size = size.group(1)
    return float(str(size).removesuffix("px")) if size else inherited


def _visible(el: ET.Element) -> bool:
    return el.get("opacity") not in ("0", "0.0") and el.get("fill-opacity") not in ("0", "0.0") \
        and el.get("visibility") != "hidden" and el.get("display") != "none"


def read_svg(svg: str) -> Figure:
    """Every visible text of an SVG with its box on the canvas, and every axis with its label count."""
    root = ET.fromstring(svg)
    width, height = float(root.get("width", 0)), float(root.get("height", 0))
    texts: list[TextBox] = []
    axes: list[tuple[str, int]] = []

    def walk(el: ET.Element, m: Matrix, role: str, axis: int, size: float, bold: bool) -> None:
        m = _multiply(m, parse_transform(el.get("transform")))
        size = _font_size(el, size)
        bold = el.get("font-weight", "bold" if bold else "normal") in ("bold", "700", "800", "900")
        cls = el.get("class") or ""
        found = re.search(r"role-([\w-]+)", cls)
        role = found.group(1) if found else role
        if "role-axis" in cls.split() and el.get("aria-label"):
            axes.append((el.get("aria-label", ""), 0))
            axis = len(axes) - 1
        if not _visible(el):
            return
        if el.tag == SVG + "text":
            box = _text_box(el, m, size, bold, role, axis)
            if box is not None:
                texts.append(box)
                if role == "axis-label" and axis >= 0:
                    axes[axis] = (axes[axis][0], axes[axis][1] + 1)
            return
        for child in el:
            walk(child, m, role, axis, size, bold)

    walk(root, IDENTITY, "", -1, 10.0, False)
    return Figure(width, height, texts, axes)


def _text_box(el: ET.Element, m: Matrix, size: float, bold: bool, role: str, axis: int) -> TextBox | None:
    """The box of one <text> (its lines are <tspan>s, each ``dy`` below the one before)."""
    lines: list[tuple[float, str]] = []  # (baseline y, text) in the text's own frame
    if el.text and el.text.strip():
        lines.append((0.0, el.text))
    y = 0.0
    for span in el.iter(SVG + "tspan"):
        y = float(span.get("y", y)) + float(span.get("dy", 0) or 0)
        if span.text and span.text.strip():
            lines.append((y, span.text))
    if not lines:
        return None
    widest = max(text_width(t, size, bold) for _, t in lines)
    anchor = el.get("text-anchor", "start")
    x0 = {"start": 0.0, "middle": -widest / 2, "end": -widest}[anchor]
    top, bottom = min(b for b, _ in lines) - ASCENT * size, max(b for b, _ in lines) + DESCENT * size
    corners = [_apply(m, x, y) for x, y in ((x0, top), (x0 + widest, top), (x0 + widest, bottom), (x0, bottom))]
    return TextBox(" / ".join(t for _, t in lines), role, corners, axis)


def _overlap(p: list[tuple[float, float]], q: list[tuple[float, float]]) -> float:
    """How deep two convex quadrilaterals overlap (separating axis theorem): the least overlap of their
    projections over every edge normal; 0 or less when they are apart."""
    depth = math.inf
    for poly in (p, q):
        for k in range(4):
            (x1, y1), (x2, y2) = poly[k], poly[(k + 1) % 4]
            nx, ny = y1 - y2, x2 - x1
            norm = math.hypot(nx, ny)
            if norm == 0:
                continue
            nx, ny = nx / norm, ny / norm
            a = [x * nx + y * ny for x, y in p]
            b = [x * nx + y * ny for x, y in q]
            depth = min(depth, min(max(a), max(b)) - max(min(a), min(b)))
            if depth <= 0:
                return depth
    return depth


def problems(svg: str, width: float | None = None) -> list[str]:
    """What is wrong with one SVG (empty: nothing)."""
    fig = read_svg(svg)
    found = []
    if width is not None and fig.width > width + 1:
        found.append(f"width: {fig.width:g} pt, wider than {width:g} pt")
    for t in fig.texts:
        x0, y0, x1, y1 = t.bounds()
        if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > fig.width + TOLERANCE or y1 > fig.height + TOLERANCE:
            found.append(f"outside: {t.role} {t.text!r} at ({x0:.1f}, {y0:.1f})-({x1:.1f}, {y1:.1f}) of a "
                         f"{fig.width:g} x {fig.height:g} canvas")
    boxes = [(t, t.bounds()) for t in fig.texts]
    boxes.sort(key=lambda b: b[1][0])
    for i, (t, (_, y0, x1, y1)) in enumerate(boxes):
        for u, (u0, v0, _, v1) in boxes[i + 1:]:
            if u0 >= x1 - TOLERANCE:
                break  # sorted by left edge: no later box reaches this one
            if v0 >= y1 - TOLERANCE or v1 <= y0 + TOLERANCE:
                continue
            if _overlap(t.corners, u.corners) > TOLERANCE:
                found.append(f"overlap: {t.role} {t.text!r} and {u.role} {u.text!r}")
    for label, n in fig.axes:
        if QUANTITATIVE.search(label) and n < MIN_TICKS:
            found.append(f"ticks: {n} labelled tick(s) on {label!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.figure_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="FOLDER_OR_SVG", help="SVG files, or folders of them (a pack)")
    args = parser.parse_args(argv)
    missing = next((p for p in args.paths if not Path(p).is_dir() and not Path(p).is_file()), None)
    if missing is not None:
        print(f"error: no SVG file or folder at {missing}", file=sys.stderr)
        return 2
    bad = 0
    files = [p for arg in args.paths for p in (sorted(Path(arg).glob("*.svg")) if Path(arg).is_dir() else [Path(arg)])]
    for path in files:
        try:
            found = problems(path.read_text(encoding="utf-8"))
        except (ET.ParseError, UnicodeDecodeError, OSError) as e:  # not an SVG this reads: a problem of its own
            found = [f"unreadable: not an SVG as vl-convert writes it ({type(e).__name__}: {e})"]
        for problem in found:
            bad += 1
            print(f"{path}: {problem}")
    print(f"{len(files)} SVG files, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
