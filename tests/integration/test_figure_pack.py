"""The figure pack as files, at every size, from two demo-like stores (the dashboard's run "tiny": the paper
sweep with captions; "tiny-heads": 88 ablations of heads and flow, as demo-heads): every SVG holds (no text
over text, none off the canvas, at least 3 ticks per quantitative axis, exactly the column's width), print
fonts in one hierarchy, no screen hints, parts on one scale; every file says where it came from; every .tex
compiles in a minimal one- and two-column article without an overfull box; every PDF is one pdfTeX reads;
the Export page's zip holds the command line's files byte for byte.

pdflatex (Debian: texlive-latex-base, texlive-latex-recommended; .ci/run installs them) is needed for the
LaTeX tests: without it they skip, loudly, except in CI (``CLIP_LAB_CI`` set), where they fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import APP, compile_tex, overfull, pdflatex, sql
from PIL import Image

from analysis import FORMATS, SIZES, figures, print_layout, slices
from analysis.provenance import Provenance, tool_version
from compute import store
from compute.__main__ import main
from compute.storepath import DB_ENV
from dashboard.pages import page_info
from tools.figure_check import problems, read_svg

EPOCH = "1764930000"  # SOURCE_DATE_EPOCH: every export of this module carries the same date
PACKS = {"tiny": ("dash_store", "identity:5"), "tiny-heads": ("heads_store", "identity:6/h2")}
PAPER = [s for s, w in SIZES.items() if w]
PART = re.compile(r"_part(\d+)of(\d+)$")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packs(request, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(run, size) -> the folder ``python -m compute export`` wrote: both runs at every size with image 3,
    SVG at every size, every format (the default) at one column."""
    out = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
    try:
        for run, (fixture, ablation) in PACKS.items():
            db = request.getfixturevalue(fixture)
            for size in SIZES:
                folder = tmp_path_factory.mktemp(f"{run}-{size}")
                formats = [] if size == "one-column" else ["--formats", "svg"]
                assert main(["export", "--run", run, "--db", str(db), "--out", str(folder), "--size", size,
                             *formats, "--image", "3", "--ablation", ablation]) == 0
                out[run, size] = folder
    finally:
        mp.undo()
    return out


def stem(path: Path) -> str:
    return PART.sub("", path.stem)


# --------------------------------------------------------------------------------------------------
# Figures that hold.


def test_every_svg_holds_at_every_size(packs):
    found = []
    for (run, size), folder in packs.items():
        svgs = sorted(folder.glob("*.svg"))
        assert len(svgs) >= 12, (run, size)
        for path in svgs:
            svg = path.read_text()
            found += [f"{run}/{size}/{path.name}: {p}" for p in problems(svg, SIZES[size])]
            if SIZES[size]:
                assert read_svg(svg).width == SIZES[size], (run, size, path.name)  # the column's exact width
    assert found == []


def test_the_checks_see_what_the_screen_sizes_would_break():
    # Honest checks: the same chart laid out at one column without print_layout overprints its labels.
    import altair as alt

    frame = pd.DataFrame({"ablation": [f"knockout:{k}/patches>patches" for k in range(1, 40)], "v": range(39)})
    chart = alt.Chart(frame).mark_bar().encode(x=alt.X("ablation:N", axis=alt.Axis(labelAngle=-60, labelOverlap=False)),
                                               y="v:Q").properties(width=180)
    raw = figures.chart_files(chart, ["svg"], "screen")["chart.svg"].decode()
    assert any(p.startswith("overlap") for p in problems(raw))
    laid_out = figures.chart_files(chart, ["svg"], "one-column")
    for svg in laid_out.values():
        assert problems(svg.decode(), SIZES["one-column"]) == []


def test_print_sizes_keep_one_font_hierarchy(packs):
    want = {"title-text": {print_layout.FONT["title"]}, "title-subtitle": {print_layout.FONT["subtitle"]},
            "axis-title": {print_layout.FONT["axis_title"]}, "legend-title": {print_layout.FONT["axis_title"]},
            "axis-label": {print_layout.FONT["label"]}, "legend-label": {print_layout.FONT["label"]}}
    for size in PAPER:
        for run in PACKS:
            for path in packs[run, size].glob("*.svg"):
                root = ET.fromstring(path.read_text())
                for group in root.iter("{http://www.w3.org/2000/svg}g"):
                    role = re.search(r"role-([\w-]+)", group.get("class") or "")
                    if not role or role.group(1) not in want:
                        continue
                    for text in group.iter("{http://www.w3.org/2000/svg}text"):
                        size_pt = float(text.get("font-size", "0").removesuffix("px"))
                        assert size_pt in want[role.group(1)], (path.name, role.group(1), size_pt, text.text)
                for t in read_svg(path.read_text()).texts:  # numbers in cells and marks: small, never tiny
                    if t.role == "mark":
                        height = max(y for _, y in t.corners) - min(y for _, y in t.corners)
                        assert 6 * 0.96 - 0.01 <= height <= print_layout.FONT["title"] * 1.1, (path.name, t.text)


def test_no_file_carries_a_screen_hint(packs):
    for (run, size), folder in packs.items():
        for path in folder.glob("*.svg"):
            texts = " ".join(t.text for t in read_svg(path.read_text()).texts).lower()
            assert "click" not in texts and "hover" not in texts, (run, size, path.name)
    assert "heads_identity.svg" in {p.name for p in packs["tiny-heads", "screen"].glob("*.svg")}


def test_a_figure_too_tall_for_a_page_is_split_into_parts_on_one_scale(packs, heads_store):
    folder = packs["tiny-heads", "one-column"]
    parts = sorted(folder.glob("means_accuracy_part*.svg"), key=lambda p: int(PART.search(p.stem).group(1)))
    assert len(parts) >= 3
    rows, scales = [], set()
    for k, path in enumerate(parts, start=1):
        fig = read_svg(path.read_text())
        assert fig.height <= 600, path.name  # within a page
        labels = [t.text for t in fig.texts if t.role == "axis-label" and "discrete" in fig.axes[t.axis][0]]
        assert len(labels) <= print_layout.MAX_ROWS
        rows += labels
        scales |= {label for label, _ in fig.axes if "linear scale" in label}
        assert any(t.role == "title-subtitle" and f"part {k} of {len(parts)}:" in t.text for t in fig.texts)
    names = [r[0] for r in sql(heads_store, "SELECT a.ablation FROM ablation_t a JOIN run_t r USING (run_id) "
                                            "WHERE r.run = 'tiny-heads' ORDER BY a.ablation_id")]
    assert rows == names  # every ablation once, in sweep order
    assert len(scales) == 1  # one x scale in every part
    # Two columns are twice as wide, so a grid needs fewer parts there.
    wide = {stem(p) for p in packs["tiny-heads", "two-column"].glob("*.svg")}
    narrow = list(folder.glob("*.svg"))
    assert len(list(packs["tiny-heads", "two-column"].glob("*.svg"))) <= len(narrow)
    assert wide == {stem(p) for p in narrow}  # the same figures, however split


# --------------------------------------------------------------------------------------------------
# Provenance.


def _pdf_info(pdf: bytes) -> dict[str, str]:
    """The last document information dictionary of a PDF, its hex strings decoded."""
    trailer = re.findall(rb"trailer\s*<<(.*?)>>", pdf, re.S)[-1]
    number = re.search(rb"/Info\s+(\d+)\s+0\s+R", trailer).group(1)
    body = re.findall(rb"\n" + number + rb" 0 obj\s*<<(.*?)>>\s*endobj", pdf, re.S)[-1]
    return {k.decode(): bytes.fromhex(v.decode())[2:].decode("utf-16-be")
            for k, v in re.findall(rb"/(\w+)\s*<([0-9A-F]+)>", body)}


def test_every_file_says_where_it_came_from(packs, heads_store):
    folder = packs["tiny-heads", "one-column"]
    (config_hash, model, created), = sql(heads_store, "SELECT config_hash, model, created_at FROM run_t "
                                                      "WHERE run = 'tiny-heads'")
    version = re.search(r'version = "([^"]+)"', (Path(figures.__file__).parents[1] / "pyproject.toml").read_text())[1]
    assert f"CLIP Attention Lab {version}" in tool_version()
    expect = ["Run: tiny-heads", f"Model: {model}", f"Experiment hash: {config_hash}", "Store: heads.duckdb",
              f"Made by: {tool_version()}", "Exported: 2025-12-05T10:20:00Z", "Model revision: a local folder"]
    seen = set()

    def holds(text: str, name: str) -> None:
        for line in expect:
            assert line in text, (name, line)
        seen.add(name)

    for path in sorted(folder.iterdir()):
        name, ext = path.name, path.suffix
        if ext == ".png":
            holds(Image.open(path).text["Description"].replace("; ", "\n"), name)
            assert Image.open(path).text["Software"] == tool_version()
        elif ext == ".pdf":
            info = _pdf_info(path.read_bytes())
            holds(info["Keywords"].replace("; ", "\n"), name)
            assert info["Run"] == "tiny-heads" and info["Creator"] == tool_version() and info["Title"]
        elif ext == ".svg":
            root = ET.fromstring(path.read_text())
            meta = root.find("{http://www.w3.org/2000/svg}metadata")
            holds(ET.tostring(meta, encoding="unicode").replace("; ", "\n"), name)
        elif ext in (".tex", ".md") and name != "README.md":
            head = path.read_text().split("\\begingroup")[0] if ext == ".tex" else path.read_text().split("-->")[0]
            holds(head, name)
        elif ext == ".parquet":
            meta = json.loads(pq.read_schema(path).metadata[b"clip_lab_provenance"])
            assert meta["run"] == "tiny-heads" and meta["experiment_hash"] == config_hash
            seen.add(name)
        elif ext == ".csv":  # plain CSV: the README is its record
            assert not path.read_text().startswith(("#", "%", "<")), name
            pd.read_csv(path)
    readme = (folder / "README.md").read_text()
    holds(readme, "README.md")
    listed = dict(re.findall(r"^\| (\S+) \| .* \| ([0-9a-f]{16}) \|$", readme, re.M))
    files = {p.name.replace("_", "\\_"): p for p in folder.iterdir() if p.name != "README.md"}
    assert set(listed) == set(files)  # every file of the pack, each with its SHA-256
    for name, digest in listed.items():
        assert hashlib.sha256(files[name].read_bytes()).hexdigest()[:16] == digest, name
    assert {p.name for p in folder.iterdir() if p.suffix != ".csv"} <= seen


# --------------------------------------------------------------------------------------------------
# LaTeX and PDF, through pdfTeX.


def test_every_tex_compiles_in_a_minimal_one_and_two_column_article(packs, tmp_path):
    latex = pdflatex()
    seen, compiled = set(), 0
    for (run, _), folder in packs.items():
        for path in sorted(folder.glob("*.tex")):
            text = path.read_text()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:  # the tables do not depend on the figures' size
                continue
            seen.add(digest)
            needs = re.search(r"^% Needs: (.*)$", text, re.M)
            assert needs, path.name  # the header names the packages, and nothing else is loaded
            assert "amssymb" not in needs[1] and "\\checkmark" not in text
            shutil.copy(path, tmp_path / f"t{compiled}.tex")
            for layout in ("", "[twocolumn]"):
                body = f"\\begin{{table}}[t]\\centering\n\\input{{t{compiled}}}\n\\end{{table}}"
                log = compile_tex(latex, tmp_path, f"doc{compiled}", f"{layout}{{article}}\n{needs[1]}", body)
                assert not re.search(r"^! ", log, re.M), (run, path.name, layout)
                assert [x for x in overfull(log) if x > 1] == [], (run, path.name, layout, overfull(log))
            compiled += 1
    # table1.tex, a table1_<metric>.tex per metric (3 with captions, 2 without) and Figure 5, per run: the same
    # files at every size
    assert compiled == 5 + 4


def test_every_pdf_figure_is_read_by_pdftex(packs, tmp_path):
    latex = pdflatex()
    for run in PACKS:
        pdfs = sorted(packs[run, "one-column"].glob("*.pdf"))
        assert pdfs
        body = []
        for k, path in enumerate(pdfs):
            shutil.copy(path, tmp_path / f"f{k}.pdf")
            body.append(f"\\includegraphics[width=\\linewidth]{{f{k}.pdf}}\\clearpage")  # a page each: one page group
        # PDF 1.7 (vl-convert's): pdfTeX includes up to the version it writes, so it writes 1.7
        log = compile_tex(latex, tmp_path, f"figs-{run}", "[twocolumn]{article}\n\\usepackage{graphicx}\n"
                          "\\pdfminorversion=7", "\n".join(body))
        assert not re.search(r"^! ", log, re.M) and "pdfTeX warning" not in log, log[-3000:]
        assert (tmp_path / f"figs-{run}.pdf").stat().st_size > 1000


# --------------------------------------------------------------------------------------------------
# The Export page's pack is the command line's.


def test_the_page_and_the_command_line_write_the_same_pack(packs, dash_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    # The command line's pack: `export --run tiny --size one-column --image 3 --ablation identity:5` (the fixture's).
    assert PACKS["tiny"] == ("dash_store", "identity:5")
    cli = {p.name: p.read_bytes() for p in packs["tiny", "one-column"].iterdir()}
    # What the page's zip button runs, with the page's choices left as they open.
    with store.connect(dash_store, read_only=True) as con:
        run_id = figures.find_run_id(con, "tiny")
        data = figures.pack_data(con, run_id, slices.true_label(""), None, 3, "identity:5", None)
        selections = figures.selections_frame(con, run_id)
        attention = figures.attention_png(con, "tiny", 3, "identity:5")
    prov = Provenance.of_run(data.run, dash_store)
    page = zipfile.ZipFile(io.BytesIO(figures.pack_zip(figures.pack_files(data, prov, "one-column", FORMATS,
                                                                          selections, attention))))
    assert sorted(page.namelist()) == sorted(cli)
    for name in cli:
        if name.endswith(".pdf"):
            # svg2pdf orders a page's resources by a hash map, differently in every process: the same drawing
            # (its SVG, in the pack too, is byte-identical) in as many objects, with the same information.
            a, b = page.read(name), cli[name]
            assert a.count(b" obj\n") == b.count(b" obj\n") and _pdf_info(a) == _pdf_info(b), name
            assert re.findall(rb"MediaBox[^\]]*\]", a) == re.findall(rb"MediaBox[^\]]*\]", b), name
        elif name == "README.md":  # the same but for the PDFs' SHA-256
            def rows(text: bytes) -> list[bytes]:
                return [re.sub(rb"(\.pdf \|.*\| )[0-9a-f]{16}", rb"\1", line) for line in text.splitlines()]

            assert rows(page.read(name)) == rows(cli[name])
        else:
            assert page.read(name) == cli[name], name
    # The page itself offers those files under those names, the confusion charts of the command line included.
    monkeypatch.setenv(DB_ENV, str(dash_store))
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"run": "tiny", "image": "3", "ablation": "identity:5", "size": "one-column"})
    at.run()
    at.switch_page(page_info("export").path).run()
    assert not at.exception, at.exception[0].value
    offered = [b.proto.id for b in at.get("download_button")]
    singles = [n for n in cli if n.endswith((".png", ".svg", ".pdf", ".tex", ".md", ".csv")) and n != "README.md"
               and n not in ("mcnemar.csv", "selections.csv")]
    assert any(n.startswith("confusion_identity_1-12") for n in singles)  # the least accurate, as on the CLI
    for name in singles:
        assert any(k.endswith(f"-{name}") or k.endswith(name) for k in offered), name
