"""AppTest of the Heads page on a run with attribution: the heatmap exact or estimated, the scatter of estimate
against exact with its figures, a kind estimated without an exact sweep; every number checked against SQL on
the store or scipy; and the export's attribution table and figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import chart_rows, open_page, select, shown, sql

from analysis import SIZES
from compute.config import load_experiment
from compute.runner import run
from dashboard.state import widget_key
from tools.figure_check import problems
from tools.synthetic import make_coco, write_experiment

RUN = "attr-heads"
ATTRIBUTION = '[attribution]\nkinds = ["identity", "zero"]\n'


@pytest.fixture(scope="module")
def store(tiny_clip, tmp_path_factory):
    """The heads sweep of the tiny CLIP (12 x 4 heads, identity) over 8 images, identity and zero attributed."""
    tmp = tmp_path_factory.mktemp("attr-dash")
    db = tmp / "a.duckdb"
    exp = write_experiment(tmp / "a.toml", tiny_clip, make_coco(tmp / "coco", n=8), db, name=RUN, sweep="heads",
                           more=ATTRIBUTION)
    assert run(load_experiment(exp), progress=False, echo=lambda _: None).complete
    return db


def open_heads(db, monkeypatch, **params: str):
    return open_page(db, monkeypatch, "heads", **{"run": RUN, **params})


def mean_estimates(db, kind: str) -> dict[str, float]:
    return dict(sql(db, "SELECT ablation, AVG(estimate) FROM attributions WHERE ablation LIKE ? GROUP BY 1",
                    [f"{kind}:%"]))


MEAN_EXACT = """
SELECT a.ablation, AVG((s.logit - o.logit) - (bs.logit - bo.logit))
FROM attributions a
JOIN attributed_t d ON d.image_id = a.image_id AND d.spec = 'identity'
JOIN score_t s ON s.image_id = a.image_id AND s.prompt_id = d.prompt_id
JOIN score_t o ON o.image_id = a.image_id AND o.prompt_id = d.other_prompt_id AND o.ablation_id = s.ablation_id
JOIN ablation_t x ON x.ablation_id = s.ablation_id AND x.ablation = a.ablation
JOIN score_t bs ON bs.image_id = a.image_id AND bs.ablation_id = 0 AND bs.prompt_id = d.prompt_id
JOIN score_t bo ON bo.image_id = a.image_id AND bo.ablation_id = 0 AND bo.prompt_id = d.other_prompt_id
GROUP BY 1
"""


def test_the_heads_page_shows_exact_or_estimated_and_the_estimate_against_exact(store, monkeypatch):
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed here")
    at = open_heads(store, monkeypatch)
    assert select(at, "heads_kind").options == ["identity", "zero"]  # zero: estimated only
    assert select(at, "heads_effect").options == ["exact (the sweep)", "estimated (attribution)"]
    rows = chart_rows(at)
    assert len(rows) == 3  # the exact heatmap, the scatter per head, the pairs' density
    exact = dict(sql(store, MEAN_EXACT))
    estimates = mean_estimates(store, "identity")
    points = {r["ablation"]: r for r in rows[1] if "ablation" in r}  # the diagonal's two rows aside
    assert len(points) == 48
    for label, r in points.items():
        assert r["exact"] == pytest.approx(exact[label], abs=1e-5)
        assert r["estimate"] == pytest.approx(estimates[label], abs=1e-5)
    assert sum(r["pairs"] for r in rows[2] if "pairs" in r) == 8 * 48  # every (image, head) pair counted once
    table = at.dataframe[0].value
    assert list(table["level"]) == ["per head", "per image"]
    heads = sorted(points)
    rho = stats.spearmanr([estimates[h] for h in heads], [exact[h] for h in heads]).statistic
    assert table["rho"].iloc[0] == pytest.approx(rho, abs=1e-3)
    assert any(f"rho {rho:.2f}" in c.value.replace("\\", "") for c in at.caption)  # md() escapes the dot
    misses = at.dataframe[1].value
    assert set(misses["level"]) == {"head", "image x head"}
    top = misses[misses["level"] == "head"]["gap"].abs()
    assert top.iloc[0] == pytest.approx(max(abs(estimates[h] - exact[h]) for h in heads), abs=1e-4)
    # As shown: "—" where a figure does not apply (the per-head row's pooled rho, a head's image), never "None"
    per_head, per_image = shown(at.dataframe[0])
    assert per_head["pooled rho"] == "—"
    assert re.fullmatch(r"\u2212?\d\.\d{3}", per_image["pooled rho"])  # 3 decimals, typographic minus
    assert per_head["rho"] == f"{table['rho'].iloc[0]:.3f}".replace("-", "\u2212")
    rows = shown(at.dataframe[1])
    assert [r["image_id"] == "—" for r in rows] == list(misses["level"] == "head")
    ids = {str(i) for (i,) in sql(store, "SELECT image_id FROM images")}
    assert all(r["image_id"] in ids for r in rows if r["level"] == "image x head")  # an id as stored: 338, not 338.0000
    assert not any(v in ("None", "nan", "NaN", "<NA>") for r in shown(at.dataframe[0]) + rows for v in r.values())

    select(at, "heads_effect").set_value("estimated").run()
    assert not at.exception and at.query_params["heads_effect"] == "estimated"
    (cells,) = chart_rows(at)
    assert len(cells) == 48
    for r in cells:
        assert r["estimate"] == pytest.approx(estimates[r["ablation"]], abs=1e-5)
        assert r["exact"] == pytest.approx(exact[r["ablation"]], abs=1e-5)

    select(at, "heads_kind").set_value("zero").run()  # estimated only: no choice, no exact
    assert not at.exception
    assert not any(w.key == widget_key("heads_effect") for w in at.selectbox)
    (cells,) = chart_rows(at)
    zero = mean_estimates(store, "zero")
    assert {r["ablation"]: r["estimate"] for r in cells} == pytest.approx(zero, abs=1e-5)
    assert all(np.isnan(r["exact"]) for r in cells)
    assert any("compute screen" in c.value for c in at.caption)


def test_the_export_writes_the_attribution_table_and_figures(store, tmp_path):
    from compute.__main__ import main

    out = tmp_path / "pack"
    assert main(["export", "--run", RUN, "--out", str(out), "--db", str(store), "--formats", "svg"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"attribution.csv", "attribution.md", "attribution.tex", "attribution_identity.svg",
            "attribution_identity_pairs.svg", "estimates_identity.svg", "estimates_zero.svg"} <= names
    assert "attribution_zero.svg" not in names  # no exact effects of zero's heads to draw against
    csv = (out / "attribution.csv").read_text().splitlines()
    assert csv[0].startswith("kind,level,heads,images,rho,top-5 recall,top-10 recall,sign agreement")
    assert [line.split(",")[:4] for line in csv[1:]] == [["identity", "per head", "48", "8"],
                                                         ["identity", "per image", "48", "8"]]
    readme = (out / "README.md").read_text()
    assert "attribution.tex" in readme and "estimate against exact" in readme
    # laid out for a paper's column: no text over text or off the canvas, exactly the column's width
    column = tmp_path / "column"
    assert main(["export", "--run", RUN, "--out", str(column), "--db", str(store), "--formats", "svg",
                 "--size", "one-column"]) == 0
    for name in ("attribution_identity", "attribution_identity_pairs", "estimates_identity", "heads_identity"):
        svgs = sorted(column.glob(f"{name}.svg")) + sorted(column.glob(f"{name}_part*.svg"))
        assert svgs, name
        for svg in svgs:
            assert problems(svg.read_text(), SIZES["one-column"]) == [], svg.name
    # the LaTeX compiles in a one- and a two-column article without an overfull box
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        if os.environ.get("CLIP_LAB_CI"):
            pytest.fail("PDFLATEX MISSING in CI")
        pytest.skip("pdflatex not found: the LaTeX check did not run")
    for preamble in ("[twocolumn]{article}", "{article}"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass" + preamble + "\n\\usepackage{booktabs,graphicx,tabularx}\n"
                       "\\begin{document}\n\\begin{table}\\input{" + str(out / "attribution.tex") + "}\\end{table}\n"
                       "\\end{document}\n")
        done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        log = (tmp_path / "doc.log").read_text(errors="replace")
        assert done.returncode == 0, log[-3000:]
        assert "Overfull \\hbox" not in log
