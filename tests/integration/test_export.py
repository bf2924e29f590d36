"""``python -m compute export``: every file of the figure pack, valid, with the numbers of the store."""

from __future__ import annotations

import re

import altair as alt
import duckdb
import jsonschema
import pandas as pd
import pytest
from helpers import DASH_ABLATIONS, cli, sql

from analysis import figures, queries, slices, tables
from compute import store
from compute.__main__ import main
from compute.export import split_ablations

METRICS = ["accuracy", "score_baseline", "caption_score"]
CHARTS = [f"{kind}_{m}" for kind in ("means", "change", "layers", "blocks") for m in METRICS] + \
    ["label_accuracy", "confusion_baseline"]
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<svg", "pdf": b"%PDF-"}


def body(markdown: str) -> str:
    """A Markdown file of the pack without the provenance comment that opens it."""
    assert markdown.startswith("<!--\n")
    return markdown.split("\n-->\n\n", 1)[1]


@pytest.fixture(scope="module")
def pack(dash_store, tmp_path_factory):
    """The command line run once (in this process): the folder it wrote."""
    out = tmp_path_factory.mktemp("pack")
    result = cli("export", "--run", "tiny", "--out", str(out), "--db", str(dash_store))
    assert result.returncode == 0, result.stderr
    assert f"to {out}" in result.stdout
    return out


def summary_of(db, run="tiny"):
    with store.connect(db, read_only=True) as con:
        return tables.summary(con, figures.find_run_id(con, run))


def test_every_chart_in_png_svg_and_pdf_with_valid_headers(pack):
    names = {p.name for p in pack.iterdir()}
    worst = [n for n in names if n.startswith("confusion_") and not n.startswith("confusion_baseline")]
    assert len({n.rsplit(".", 1)[0] for n in worst}) == 1  # and the least accurate ablation's confusion
    for chart in CHARTS:
        for fmt, magic in MAGIC.items():
            data = (pack / f"{chart}.{fmt}").read_bytes()
            assert data.startswith(magic), (chart, fmt)
            assert len(data) > 1000
    assert {"table1.md", "table1.tex", "table1.csv", "mcnemar.csv", "selections.csv", "selections.parquet",
            "README.md"} | {f"table1_{m}.tex" for m in METRICS} <= names
    assert not {"table1.png", "summary.md", "change_vs_baseline.svg"} & names  # a name says what a file is


def test_table1_markdown_latex_and_csv_hold_the_summary(pack, dash_store):
    summary = summary_of(dash_store)
    markdown = body((pack / "table1.md").read_text())
    latex = (pack / "table1.tex").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "Ablation" not in line]
    assert len(rows) == DASH_ABLATIONS == latex.count(r"\\") - 2
    for line, r in zip(rows, summary.itertuples(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r.ablation and int(cells[1]) == r.images
        assert cells[2:4] == [tables.number(r.accuracy), tables.interval(r.accuracy_lo, r.accuracy_hi)]
        assert cells[-3:-1] == [tables.number(r.caption_score), tables.interval(r.caption_score_lo, r.caption_score_hi)]
        latex_row = next(x for x in latex.splitlines() if x.startswith(r.ablation + " &"))
        assert f"& {r.score_baseline:.3f} & [" in latex_row.replace("$-$", "-")
    csv = pd.read_csv(pack / "table1.csv")
    with duckdb.connect(str(dash_store), read_only=True) as con:
        accuracy = con.execute("SELECT ablation, AVG(correct::DOUBLE) FROM selections WHERE run = 'tiny' "
                               "GROUP BY ablation").fetchall()
    assert dict(zip(csv["ablation"], csv["accuracy"], strict=True)) == pytest.approx(dict(accuracy))
    tests = pd.read_csv(pack / "mcnemar.csv")
    assert list(tests["p_holm"]) == pytest.approx(list(summary["p_holm_accuracy"].iloc[1:]))


def test_chosen_ablations_sizes_and_an_images_figure5(dash_store, tmp_path):
    chosen = ["identity:1-12", "baseline", "zero:5-8"]
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store), "--formats", "svg,pdf",
                 "--ablations", ",".join(chosen), "--size", "one-column", "--image", "3",
                 "--ablation", "identity:5"]) == 0
    markdown = body((tmp_path / "table1.md").read_text())
    assert [line.split(" | ")[0].strip("| ") for line in markdown.splitlines()[2:2 + len(chosen)]] == chosen
    full = summary_of(dash_store).set_index("ablation")
    csv = pd.read_csv(tmp_path / "table1.csv").set_index("ablation")
    assert list(csv.index) == chosen
    # significance decided over the whole run: the same Holm p-values as with every ablation
    assert list(csv["p_holm_accuracy"].dropna()) == pytest.approx(list(full.loc[chosen, "p_holm_accuracy"].dropna()))
    svgs = sorted(tmp_path.glob("*.svg"))
    stems = {re.sub(r"_part\d+of\d+$", "", p.stem) for p in svgs}  # a figure too wide for a column is in parts
    assert {"means_accuracy", "change_accuracy", "blocks_accuracy", "image3_logits"} <= stems
    for path in svgs:  # every figure exactly 3.5 in wide
        svg = path.read_text()
        assert figures.svg_width(svg) == figures.SIZES["one-column"], path.name
        pdf = path.with_suffix(".pdf").read_bytes()
        box = re.search(rb"MediaBox\s*\[\s*0 0 ([0-9.]+)", pdf)
        assert box and abs(float(box.group(1)) - figures.svg_width(svg)) < 1  # 1 px = 1 pt
    f5 = body((tmp_path / "image3_figure5.md").read_text()).splitlines()
    picks = dict(sql(dash_store, "SELECT ablation, prompt FROM selections WHERE run = 'tiny' AND image_id = 3"))
    assert [line.split(" | ")[0].strip("| ") for line in f5[2:]] == chosen  # one row per ablation, never merged
    assert [line.split(" | ")[1] for line in f5[2:]] == [picks[a] for a in chosen]
    assert (tmp_path / "image3_figure5.tex").read_text().count(r"\\") == len(chosen) + 1


def test_comma_lists_of_ablations_keep_labels_with_commas():
    assert split_ablations("identity:1,5,9,zero:5-8, baseline") == ["identity:1,5,9", "zero:5-8", "baseline"]
    assert split_ablations("identity:6/h0,h3,all") == ["identity:6/h0,h3", "all"]
    assert split_ablations("") == []


def test_selections_csv_and_parquet_are_the_same_rows_as_the_view(pack, dash_store):
    csv = pd.read_csv(pack / "selections.csv")
    parquet = pd.read_parquet(pack / "selections.parquet")
    assert len(csv) == len(parquet) == 9 * DASH_ABLATIONS
    assert list(csv.columns) == list(parquet.columns)
    assert (csv["image_id"].to_numpy() == parquet["image_id"].to_numpy()).all()
    with duckdb.connect(str(dash_store), read_only=True) as con:
        view = con.execute("SELECT image_id, ablation, prompt, correct, caption FROM selections WHERE run = 'tiny' "
                           "ORDER BY image_id, ablation").df()
    got = parquet[["image_id", "ablation", "selected_prompt", "correct", "caption"]].sort_values(["image_id", "ablation"])
    assert got.to_numpy().tolist() == view.to_numpy().tolist()


def test_unknown_run_names_the_runs_there(dash_store, tmp_path, capsys):
    assert main(["export", "--run", "nope", "--out", str(tmp_path), "--db", str(dash_store)]) == 2
    assert f"error: no run named 'nope' in {dash_store} (runs: tiny, tiny-singles)" in capsys.readouterr().err
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store), "--formats", "gif"]) == 2
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(tmp_path / "none.duckdb")]) == 2
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store),
                 "--confusion", "identity:99"]) == 2
    assert "no ablation 'identity:99'" in capsys.readouterr().err
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store),
                 "--ablations", "baseline,identity:77"]) == 2
    assert "no ablation 'identity:77'" in capsys.readouterr().err
    assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store), "--image", "999"]) == 2
    assert "no image 999" in capsys.readouterr().err
    assert main(["export", "--run", "tiny-singles", "--out", str(tmp_path), "--db", str(dash_store),
                 "--figures", "layers_*,flow"]) == 2  # a singles run has no Flow chart
    assert capsys.readouterr().err.startswith("error: no figure of the pack matches 'flow'; its figures: means_accuracy,")
    # an empty list (an empty shell variable) is a mistake, not "all" nor the default
    for flag, line in (("--formats", "error: --formats names no format: choose from png, svg, pdf"),
                       ("--ablations", "error: --ablations names no ablation: give a comma list of the run's"),
                       ("--confusion", "error: --confusion names no ablation: give a comma list of the run's"),
                       ("--figures", "error: --figures names no figure: give a comma list of figure names")):
        assert main(["export", "--run", "tiny", "--out", str(tmp_path), "--db", str(dash_store), flag, " , "]) == 2
        assert capsys.readouterr().err.startswith(line), flag
    assert not list(tmp_path.iterdir())  # bad input writes nothing


def test_formats_and_confusion_choices(dash_store, tmp_path):
    assert main(["export", "--run", "tiny-singles", "--out", str(tmp_path), "--db", str(dash_store),
                 "--formats", "svg", "--confusion", "all"]) == 0
    figures_written = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert len([n for n in figures_written if n.startswith("confusion_")]) == 13  # baseline + 12 single layers
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("blocks_*"))  # no blocks in that sweep


def test_figures_picks_figures_by_name_and_pattern_and_keeps_every_table(dash_store, tmp_path):
    assert main(["export", "--run", "tiny-singles", "--out", str(tmp_path), "--db", str(dash_store), "--formats", "svg",
                 "--figures", "layers_*, label_accuracy,layers_accuracy"]) == 0
    with store.connect(dash_store, read_only=True) as con:
        every = figures.pack_charts(figures.pack_data(con, figures.find_run_id(con, "tiny-singles")))
    assert {n for n in every if n.startswith("layers_")} == {"layers_accuracy", "layers_score_baseline"}
    assert sorted(p.stem for p in tmp_path.glob("*.svg")) == ["label_accuracy", "layers_accuracy",
                                                              "layers_score_baseline"]
    assert {"table1.md", "table1.tex", "table1.csv", "mcnemar.csv", "selections.csv"} <= {p.name for p in tmp_path.iterdir()}
    readme = (tmp_path / "README.md").read_text()
    assert "- Figures picked: `layers_*`, `label_accuracy`, `layers_accuracy` (the tables: all)" in readme
    assert "| label\\_accuracy.svg |" in readme and "means\\_accuracy" not in readme


def test_every_chart_builder_makes_a_valid_vega_lite_spec(dash_store):
    # The dashboard skips Altair's validation for speed; here every chart it can draw is validated.
    from analysis import charts

    with store.connect(dash_store, read_only=True) as con:
        data = figures.pack_data(con, 1, slices.true_label("cat"), None, image_id=3, image_ablation="identity:5")
        compare = queries.compare_labels(con, 1, 0, 1, 5)
    builders = figures.pack_charts(data)
    assert {"image3_logits", "image3_logits_identity_5"} <= set(builders)
    for build in builders.values():
        build().to_dict(validate=True)
    for size in ("one-column", "two-column"):  # and every figure as laid out for a paper
        for name, figure in figures.pack_figures(data, size).items():
            # The whole spec against Vega-Lite's schema in one pass (from_dict would validate each part again
            # while it picks its class: 10x the time, nothing more refused).
            kind = alt.LayerChart if "layer" in figure.spec else alt.Chart
            try:
                kind.validate(figure.spec)
            except jsonschema.ValidationError as e:
                raise AssertionError(f"{size} figure {name}: {e.message}") from None
    charts.compare_chart(compare, "baseline", "identity:5").to_dict(validate=True)
