"""The pieces of the figure pack on small inputs: the font metrics against vl-convert's own measurement, the
SVG checks on texts that do and do not overlap, the print layout's parts and hints, provenance written into
each format and read back, LaTeX escaping."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

import altair as alt
import pandas as pd
import pyarrow.parquet as pq
import pytest
import vl_convert as vlc
from PIL import Image

from analysis import latex, print_layout, provenance, vlspec
from analysis.textwidth import text_width, wrap
from tools.figure_check import SVG, problems, read_svg

PROV = provenance.Provenance(run="demo-shapes", model="openai/clip-vit-base-patch16", revision="abc",
                             experiment_hash="7b9fc374acb0a02f", run_created="2026-12-05 08:22:25",
                             run_status="complete", store="results.duckdb", tool="CLIP Attention Lab 0.1.0 (git x)",
                             exported="2026-12-05T10:00:00Z")


def vega_width(text: str, size: float, bold: bool) -> float:
    """How wide vl-convert measures ``text``: the narrowest ``limit`` that does not cut it (bisection)."""
    lo, hi = 0.0, 600.0
    for _ in range(22):
        mid = (lo + hi) / 2
        spec = {"$schema": "https://vega.github.io/schema/vega/v5.json", "width": 10, "height": 10,
                "marks": [{"type": "text", "encode": {"enter": {
                    "text": {"value": text}, "fontSize": {"value": size}, "limit": {"value": mid},
                    "fontWeight": {"value": "bold" if bold else "normal"}}}}]}
        lo, hi = (mid, hi) if "…" in vlc.vega_to_svg(spec) else (lo, mid)
    return hi


@pytest.mark.parametrize("text", ["identity:10-12", "knockout:1-12/patches>patches", "Δ accuracy −0.05",
                                  "Holm-adjusted p < 0.05", "WMQ gjy 0123456789"])
@pytest.mark.parametrize("bold", [False, True])
def test_text_widths_are_vl_converts(text, bold):
    # The font's advance widths, as vl-convert's; it also kerns a few pairs (a space after Δ), which only
    # narrows a string: the checks measure a box never narrower than drawn, and at most 2% wider.
    measured = vega_width(text, 7, bold)
    assert measured - 0.05 <= text_width(text, 7, bold) <= measured * 1.02 + 0.05


def test_wrap_keeps_words_whole_within_the_width():
    lines = wrap("Change in accuracy against baseline: identity on one head at a time", 9, 150, bold=True)
    assert len(lines) > 1 and " ".join(lines) == "Change in accuracy against baseline: identity on one head at a time"
    assert all(text_width(line, 9, True) <= 150 for line in lines)
    assert wrap("supercalifragilistic", 9, 10) == ["supercalifragilistic"]


# --------------------------------------------------------------------------------------------------
# The SVG checks fail where they should.


def svg(*texts: str, width: int = 200, height: int = 100, axis: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            + "".join(texts) + axis + "</svg>")


def text(x: float, y: float, s: str, size: int = 10, anchor: str = "start", rotate: float = 0) -> str:
    turn = f" rotate({rotate})" if rotate else ""
    return (f'<text text-anchor="{anchor}" transform="translate({x},{y}){turn}" font-size="{size}px">'
            f"{s}</text>")


def test_overlapping_texts_are_found_and_neighbours_are_not():
    assert problems(svg(text(10, 20, "identity:1"), text(30, 22, "identity:2"))) != []
    assert problems(svg(text(10, 20, "identity:1"), text(10, 32, "identity:2"))) == []  # the next row
    # vertical labels below an x axis (-90, ending at the tick) side by side: apart at 9 px, over each other at 5
    assert problems(svg(text(50, 10, "identity:1", 7, "end", -90), text(59, 10, "identity:2", 7, "end", -90))) == []
    assert problems(svg(text(50, 10, "identity:1", 7, "end", -90), text(55, 10, "identity:2", 7, "end", -90))) != []
    x0, y0, x1, y1 = read_svg(svg(text(50, 10, "identity:1", 7, "end", -90))).texts[0].bounds()
    assert (y0, y1) == pytest.approx((10, 10 + text_width("identity:1", 7))) and x1 - x0 == pytest.approx(0.96 * 7)
    # slanted labels (-60) overprint where their axis-aligned boxes alone would not tell
    slanted = svg(text(50, 90, "identity:10-12", 10, "end", -60), text(58, 90, "identity:10-12", 10, "end", -60))
    assert any(p.startswith("overlap") for p in problems(slanted))


def test_text_off_the_canvas_and_too_few_ticks_are_found():
    assert any(p.startswith("outside") for p in problems(svg(text(180, 20, "generated-caption score"))))
    assert any(p.startswith("outside") for p in problems(svg(text(10, 5, "title", 12))))
    axis = ('<g class="mark-group role-axis" aria-label="X-axis for a linear scale with values from 0 to 1">'
            '<g class="mark-text role-axis-label">' + text(10, 90, "0") + text(150, 90, "1") + "</g></g>")
    assert [p for p in problems(svg(axis=axis)) if p.startswith("ticks")]
    discrete = axis.replace("for a linear scale", "for a discrete scale")
    assert problems(svg(axis=discrete)) == []  # two categories are two ticks
    assert any(p.startswith("width") for p in problems(svg(width=260), width=252))


def test_multi_line_titles_take_every_line():
    title = ('<text text-anchor="start" transform="translate(0,10)" font-size="9px" font-weight="bold">'
             '<tspan>line one</tspan><tspan x="0" dy="11">line two</tspan></text>')
    box = read_svg(svg(title)).texts[0]
    assert box.text == "line one / line two" and box.bounds()[3] == pytest.approx(10 + 11 + 0.21 * 9)
    assert problems(svg(title, text(0, 20, "under"))) != []


# --------------------------------------------------------------------------------------------------
# Print layout.


def bars(n: int) -> dict:
    frame = pd.DataFrame({"ablation": [f"identity:{k}" for k in range(n)], "mean": [k / n for k in range(n)]})
    return alt.Chart(frame).mark_bar().encode(y=alt.Y("ablation:N", sort=list(frame["ablation"])), x="mean:Q") \
        .properties(title=alt.TitleParams("accuracy", subtitle=["95% interval; click a bar to open its failures"])) \
        .to_dict()


def test_screen_hints_leave_every_file():
    spec = print_layout.without_hints(bars(3))
    assert spec["title"]["subtitle"] == ["95% interval"]
    assert print_layout.without_hints({"title": "Hover a cell for its value"})["title"] == []


def test_a_long_figure_is_split_into_balanced_parts_on_one_scale():
    parts = print_layout.parts(bars(89), 252)
    assert len(parts) == 3
    shown = [vlspec.categories(p, "y") for p in parts]
    assert [len(s) for s in shown] == [30, 30, 29] and sum(shown, []) == [f"identity:{k}" for k in range(89)]
    domains = {json.dumps(u["encoding"]["x"]["scale"]["domain"]) for p in parts for u in vlspec.units(p)}
    assert domains == {json.dumps([0.0, 88 / 89])}  # bars from zero, the whole figure's extent
    assert [p["title"]["subtitle"][-1] for p in parts][1] == "part 2 of 3: ablations 31-60 of 89"
    assert print_layout.parts(bars(40), 252) == [bars(40)]  # a page holds it: one figure, untouched


def test_transpose_swaps_the_axes_and_keeps_the_rest():
    frame = pd.DataFrame({"a": ["x", "y"], "b": ["u", "v"], "v": [1, 2]})
    spec = alt.Chart(frame).mark_rect().encode(x=alt.X("a:N", axis=alt.Axis(labelAngle=-60)), y="b:N",
                                               color="v:Q").properties(width=100).to_dict()
    turned = print_layout.transpose(spec)
    enc = turned["encoding"]
    assert enc["y"]["field"] == "a" and enc["x"]["field"] == "b" and "labelAngle" not in enc["y"].get("axis", {})
    assert turned["height"] == 100 and "width" not in turned and enc["color"] == spec["encoding"]["color"]


def test_print_sets_its_own_fonts_over_the_screens():
    # The builders set screen sizes on single axes (12 px head labels, 10 px ablation labels) and marks (12 px
    # numbers); those outrank the config, so print takes them out: labels at 7 pt, numbers in cells no larger.
    from analysis import charts

    cells = pd.DataFrame([{"layer": layer, "head": head, "change": 0.1 * (layer - head), "lo": -0.2, "hi": 0.3,
                           "holds": layer == head, "ablation": f"identity:{layer}/h{head}", "images": 8,
                           "p_holm": 0.5} for layer in range(1, 13) for head in range(4)])
    screen = charts.head_heatmap(cells).to_dict()
    assert screen["layer"][0]["encoding"]["y"]["axis"]["labelFontSize"] == 12  # the screen's own, kept there
    printed = print_layout.layout(screen, 252)
    axes = [e.get("axis") or {} for u in vlspec.units(printed) for e in u["encoding"].values() if isinstance(e, dict)]
    assert axes and not any(k in a for a in axes for k in print_layout.SCREEN_FONTS)
    assert {u["mark"]["fontSize"] for u in vlspec.units(printed) if u["mark"]["type"] == "text"} == {7}
    svg = vlc.vegalite_to_svg(printed)
    assert problems(svg, 252) == []
    root = ET.fromstring(svg)
    sizes = {text.get("font-size") for g in root.iter(f"{SVG}g") if "role-axis-label" in (g.get("class") or "")
             for text in g.iter(f"{SVG}text")}
    assert sizes == {"7px"}


# --------------------------------------------------------------------------------------------------
# Provenance in each format.


def test_png_text_chunks_carry_the_provenance():
    png = io.BytesIO()
    Image.new("RGB", (4, 3)).save(png, "PNG")
    stamped = provenance.png(png.getvalue(), PROV, "accuracy per ablation")
    img = Image.open(io.BytesIO(stamped))
    img.load()  # every chunk's CRC checked
    assert img.size == (4, 3) and img.text["Title"] == "accuracy per ablation"
    assert "Experiment hash: 7b9fc374acb0a02f" in img.text["Description"]
    assert json.loads(img.text["Comment"])["revision"] == "abc"


def test_pdf_gets_an_information_dictionary_by_incremental_update():
    pdf = vlc.svg_to_pdf(svg(text(10, 20, "hello")))
    stamped = provenance.pdf(pdf, PROV, "Δ accuracy — per layer")
    assert stamped.startswith(pdf)  # the drawing untouched: only appended
    tail = stamped[len(pdf):]
    prev = int(re.search(rb"/Prev (\d+)", tail)[1])
    assert pdf[prev:prev + 4] == b"xref"  # the update points back at the original cross-reference table
    start = int(re.findall(rb"startxref\s+(\d+)", stamped)[-1])
    assert stamped[start:start + 4] == b"xref"
    number = int(re.search(rb"/Info (\d+) 0 R", tail)[1])
    offset = int(re.search(rb"\n%d 1\n(\d{10}) 00000 n \n" % number, tail)[1])
    assert stamped[offset:].startswith(b"%d 0 obj" % number)
    title = re.search(rb"/Title <FEFF([0-9A-F]+)>", tail)[1]
    assert bytes.fromhex(title.decode()).decode("utf-16-be") == "Δ accuracy — per layer"


def test_svg_markdown_latex_and_parquet_say_where_they_came_from():
    stamped = provenance.svg(svg(text(10, 20, "a &lt;b&gt; &amp; c")), PROV, "a -- title <x>")
    root = __import__("xml.etree.ElementTree", fromlist=["x"]).fromstring(stamped)  # still well-formed
    assert "Run: demo-shapes" in "".join(root.itertext())
    assert read_svg(stamped).texts[0].text == "a <b> & c"
    md = provenance.markdown("| a |\n", PROV, "Table 1")
    assert md.startswith("<!--\nTable 1.\nRun: demo-shapes\n") and md.endswith("-->\n\n| a |\n")
    frame = pd.DataFrame({"x": [1, 2]})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    table = pq.read_table(io.BytesIO(provenance.parquet(buf.getvalue(), PROV, "selections")))
    assert json.loads(table.schema.metadata[b"clip_lab_provenance"])["model"] == PROV.model
    assert table.to_pandas()["x"].tolist() == [1, 2]
    assert provenance.stamp("t.csv", "a,b\n1,2\n", PROV, "x") == "a,b\n1,2\n"  # CSV: the README's record


def test_the_model_revision_is_what_is_known():
    hub = "/cache/models--openai--clip/snapshots/" + "a" * 40
    assert provenance.model_revision(hub, {}) == "a" * 40
    assert provenance.model_revision("openai/clip-vit-base-patch16", {"model": {"revision": "r1"}}) == "r1"
    assert provenance.model_revision("openai/clip-vit-base-patch16", {}).startswith("not recorded")
    assert provenance.model_revision("/data/demo/models/clip", {}).startswith("a local folder")


def test_the_tool_version_is_pyprojects_and_the_date_can_be_fixed(monkeypatch):
    assert re.fullmatch(r"CLIP Attention Lab \d+\.\d+\.\d+( \(git [0-9a-f]{12}(\+dirty)?\))?", provenance.tool_version())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert provenance.export_time().isoformat() == "1970-01-01T00:00:00+00:00"


def test_latex_escapes_labels_and_marks():
    assert latex.escape("knockout:3-4/patches>cls") == r"knockout:3-4/patches\textgreater{}cls"
    assert latex.escape("a_b & 50% #1 {x} ~ ^ \\ | <") == \
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \textbar{} \textless{}"
    assert latex.cell("−0.017*") == r"$-$0.017\textsuperscript{*}"
    assert latex.escape("✓ ✗ Δ") == r"yes no $\Delta$"  # no amssymb
