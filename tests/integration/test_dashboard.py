"""One AppTest per dashboard page against the tests' store (conftest.dash_store: tiny real runs of a random
12-layer CLIP, with BLIP captions), plus the read side's SQL allow-list, Table 1's renderings, and that a model
the server's garbage-collector freeze caught is still freed when the cache drops it.
Every number a page shows is checked against SQL on the store.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qsl

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import APP, DASH_ABLATIONS, select, sql
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.proto.Metric_pb2 import Metric
from streamlit.testing.v1 import AppTest

from analysis import charts, figures, queries, slices, stats, tables
from analysis import latex as latex_tables
from analysis.text import md
from compute import store
from compute.store import DB_ENV
from dashboard.pages import DEFAULT, page_info

N_ABLATIONS = DASH_ABLATIONS


@pytest.fixture
def app(dash_store, monkeypatch):
    """An AppTest of the whole app on the test store, opened at ``page`` with ``params`` in the URL."""
    monkeypatch.setenv(DB_ENV, str(dash_store))

    def open_page(page: str = "overview", /, **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update(params)
        at.run()
        if page != DEFAULT:
            at.switch_page(page_info(page).path).run()
        assert not at.exception, at.exception[0].value
        return at

    return open_page


def charts_of(at: AppTest) -> list[list[dict]]:
    """The rows of data each chart on the page draws (Streamlit ships a spec's datasets as Arrow)."""
    return [[row for ds in el.proto.datasets for row in convert_arrow_bytes_to_pandas_df(ds.data.data).to_dict("records")]
            for el in at.get("vega_lite_chart")]


def chart_titles(at: AppTest) -> list[str]:
    return [json.dumps(json.loads(el.proto.spec).get("title")) for el in at.get("vega_lite_chart")]


def caption_text(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


# --------------------------------------------------------------------------------------------------
# Pages.


def test_overview_shows_table1_equal_to_sql_with_intervals_and_both_charts(app, dash_store):
    at = app("overview", run="tiny")
    table = at.dataframe[0].value  # numbers, not text: the page's table sorts by them
    expected = sql(dash_store, """
        SELECT a.ablation, COUNT(*), AVG(s.correct::DOUBLE), AVG(s.score_baseline), AVG(s.caption_score)
        FROM selection_t s JOIN ablation_t a USING (run_id, ablation_id) JOIN run_t r USING (run_id)
        WHERE r.run = 'tiny' GROUP BY a.ablation_id, a.ablation ORDER BY a.ablation_id""")
    assert list(table["Ablation"]) == [r[0] for r in expected]
    assert list(table["Images"]) == [r[1] for r in expected] == [9] * N_ABLATIONS
    assert np.allclose(table["Accuracy"], [r[2] for r in expected])
    assert np.allclose(table["Selected-prompt score"], [r[3] for r in expected], atol=1e-6)
    assert np.allclose(table["Generated-caption score"], [r[4] for r in expected], atol=1e-6)  # captions scored
    assert (table["Accuracy low"] <= table["Accuracy"]).all() and (table["Accuracy"] <= table["Accuracy high"]).all()
    assert table["Accuracy"].dtype.kind == "f" and table["Δ accuracy"].dtype.kind == "f"
    with store.connect(dash_store, read_only=True) as con:
        summary = tables.summary(con, 1)
    assert np.allclose(table["Δ accuracy"].iloc[1:], summary["d_accuracy"].iloc[1:])
    assert table["Δ accuracy"].iloc[0] == 0.0  # baseline against itself; shown as "—"
    metrics = {m.label: m.value for m in at.metric}
    worse = int((summary["sig_accuracy"] < 0).sum())
    assert metrics["Ablations reliably worse"] == f"{worse} of {N_ABLATIONS - 1}"
    specs = charts_of(at)
    assert len(specs) == 6  # Table 1 and the change against baseline, one panel per metric
    for spec in specs[:3]:  # one bar per ablation
        assert {r["ablation"] for r in spec} == {r[0] for r in expected}
    for spec in specs[3:]:  # one point per ablation but baseline, coloured by the one significance rule
        assert {r["ablation"] for r in spec if "change" in r} == {r[0] for r in expected[1:]}
    change = {r["ablation"]: r["change"] for r in specs[3] if "change" in r}
    assert change == {a: charts.SIG_NAMES[v] for a, v in zip(summary["ablation"][1:], summary["sig_accuracy"][1:],
                                                             strict=True)}
    assert at.query_params["run"] == "tiny"
    assert "1 image(s) could not be processed" in [e.label for e in at.expander]

    select(at, "label").set_value("dog").run()
    n_dogs = sql(dash_store, "SELECT COUNT(*) FROM images WHERE run = 'tiny' AND list_contains(labels, 'dog') "
                 "AND image_id NOT IN (SELECT image_id FROM errors WHERE run = 'tiny')")[0][0]
    assert list(at.dataframe[0].value["Images"]) == [n_dogs] * N_ABLATIONS
    assert f"Selecting {n_dogs} images: images labelled \\'dog\\'." in caption_text(at)
    assert at.query_params["label"] == "dog"


def test_layers_curves_heatmap_confusion_and_mcnemar_match_sql(app, dash_store):
    at = app("layers", run="tiny", ablation="identity:1-12")
    specs = charts_of(at)
    curve, blocks, heatmap, confusion = specs
    assert sorted({r["layer"] for r in curve if "layer" in r}) == list(range(1, 13))
    assert {r["ablation"] for r in blocks if "ablation" in r} == {
        "identity:1-3", "identity:4-6", "identity:7-9", "identity:10-12", "identity:1-4", "identity:5-8",
        "identity:9-12", "identity:1-12", "zero:5-8"}
    cells = [r for r in heatmap if "accuracy" in r]
    labels = {r[0] for r in sql(dash_store, "SELECT DISTINCT unnest(labels) FROM images WHERE run = 'tiny' "
                                "AND image_id NOT IN (SELECT image_id FROM errors)")}
    assert len(cells) == N_ABLATIONS * len(labels)
    # Each image counts once (an independent count): a right pick on its diagonal cell, a wrong one split
    # equally over its labels' rows.
    expected: dict[str, float] = {}
    for labels, picked in sql(dash_store, """
            SELECT i.labels, s.label FROM selections s JOIN images i ON i.run = s.run AND i.image_id = s.image_id
            WHERE s.run = 'tiny' AND s.ablation = 'identity:1-12'"""):
        for true in ([picked] if picked in labels else labels):
            key = f"{true}>{picked}"
            expected[key] = expected.get(key, 0.0) + (1.0 if picked in labels else 1 / len(labels))
    got = {f"{r['true_label']}>{r['selected_label']}": r["images"] for r in confusion if "true_label" in r}
    assert got.keys() == expected.keys() and all(math.isclose(got[k], expected[k]) for k in got)
    assert math.isclose(sum(got.values()), 9)  # the images computed: each once

    tests = at.dataframe[0].value
    assert len(tests) == N_ABLATIONS - 1
    discordant = sql(dash_store, """
        SELECT s.ablation, COUNT(*) FILTER (WHERE b.correct AND NOT s.correct),
               COUNT(*) FILTER (WHERE s.correct AND NOT b.correct)
        FROM selections s JOIN selections b ON b.run = s.run AND b.image_id = s.image_id AND b.ablation = 'baseline'
        WHERE s.run = 'tiny' AND s.ablation <> 'baseline' GROUP BY s.ablation""")
    for ablation, only_base, only_abl in discordant:
        row = tests[tests["ablation"] == ablation].iloc[0]
        assert (row["only_baseline"], row["only_ablation"]) == (only_base, only_abl)
        assert row["p"] == stats.format_p(stats.mcnemar(only_base, only_abl)[1])
    p = [stats.mcnemar(b, c)[1] for _, b, c in sorted(discordant)]
    assert sorted(tests["p (Holm)"] if "p (Holm)" in tests else tests["p_holm"]) == sorted(
        stats.format_p(x) for x in stats.holm(np.array(p)))

    select(at, "metric").set_value("caption_score").run()
    assert not at.exception
    assert "generated-caption score" in chart_titles(at)[0]
    assert at.query_params["metric"] == "caption_score"


def unescape(text: str) -> str:
    """What a Markdown-escaped cell reads as (analysis.text.md escapes every punctuation character)."""
    return re.sub(r"\\(.)", r"\1", text)


def test_image_shows_logits_under_every_ablation_and_the_selection_and_caption_of_each(app, dash_store):
    at = app("image", run="tiny", image="3", ablation="identity:5")
    assert at.query_params["image"] == "3" and at.query_params["ablation"] == "identity:5"
    picks = at.table[0].value
    expected = sql(dash_store, "SELECT ablation, prompt, caption FROM selections WHERE run = 'tiny' AND image_id = 3 "
                   "ORDER BY ablation")
    got = [(unescape(a).removeprefix("▶ "), unescape(p), unescape(c)) for a, p, c in
           zip(picks["ablation"], picks["selected prompt"], picks["generated caption"], strict=True)]
    assert sorted(got) == sorted(expected)  # whole prompts and captions, not cut
    assert [a for a in picks["ablation"] if a.startswith("▶")] == ["▶ identity\\:5"]  # the highlighted row
    assert all(c for _, _, c in expected)  # a generated caption per ablation (the study's Figure 5)
    heatmap, bars, *maps = charts_of(at)
    assert len(maps) == 12  # then the attention maps, one chart per layer (test_dashboard_heads checks them)
    cells = [r for r in heatmap if "logit" in r]
    assert len({(r["ablation"], r["prompt"]) for r in cells}) == N_ABLATIONS * 4
    logits = dict(sql(dash_store, "SELECT ablation || '|' || prompt, logit FROM scores WHERE run = 'tiny' "
                      "AND image_id = 3"))
    assert all(math.isclose(r["logit"], logits[f"{r['ablation']}|{r['prompt']}"], rel_tol=1e-5) for r in cells)
    assert "framed: identity:5" in chart_titles(at)[0]  # the highlighted ablation, in the chart too
    assert {r["ablation"] for r in bars} == {"baseline", "identity:5"}
    assert at.image  # the photo itself

    select(at, "image").set_value(5).run()
    assert not at.exception and at.query_params["image"] == "5"


def test_image_opened_from_failures_steps_through_that_slice(app, dash_store):
    slice_params = {"run": "tiny", "ablation": "identity:1-12", "outcome": "wrong", "sort": "confidence",
                    "from": "failures"}
    order = [i for (i,) in sql(dash_store, """
        SELECT s.image_id FROM selection_t s JOIN ablation_t a USING (run_id, ablation_id) JOIN run_t r USING (run_id)
        WHERE r.run = 'tiny' AND a.ablation = 'identity:1-12' AND NOT s.correct ORDER BY s.prob DESC, s.image_id""")]
    assert len(order) >= 3
    at = app("image", image=str(order[1]), **slice_params)
    assert f"image 2 of {len(order)}" in caption_text(at)
    back = dict(parse_qsl(next(link for link in at.page_link if link.label == "Failures").proto.query_string))
    assert {k: back[k] for k in ("run", "ablation", "outcome", "sort")} == {
        k: slice_params[k] for k in ("run", "ablation", "outcome", "sort")} and back["page"] == "1"
    at.button(key="slice_next").click().run()
    assert at.query_params["image"] == str(order[2]) and f"image 3 of {len(order)}" in caption_text(at)
    at.button(key="slice_previous").click().run()
    at.button(key="slice_previous").click().run()
    assert at.query_params["image"] == str(order[0]) and f"image 1 of {len(order)}" in caption_text(at)
    assert at.button(key="slice_previous").disabled  # the first of the slice
    assert {k: at.query_params[k] for k in slice_params} == slice_params  # still the same slice


def test_image_page_of_an_unreadable_image_says_so(app):
    at = app("image", run="tiny", image="4")
    assert at.query_params["image"] == "4"
    assert any("No ablation has been computed for this image" in i.value for i in at.info)


def test_failures_grid_lists_the_slice_sql_selects_and_links_each_image(app, dash_store):
    at = app("failures", run="tiny", ablation="identity:1-12", outcome="wrong", sort="confidence")
    wrong = sql(dash_store, "SELECT image_id FROM selections WHERE run = 'tiny' AND ablation = 'identity:1-12' "
                "AND NOT correct ORDER BY image_id")
    assert f"{len(wrong)} images: {md('ablation identity:1-12; picks a wrong prompt')}" in caption_text(at)
    links = at.page_link
    assert len(links) == len(wrong) == len(at.image)
    queries_ = [dict(parse_qsl(link.proto.query_string)) for link in links]
    assert sorted(int(q["image"]) for q in queries_) == [w[0] for w in wrong]
    for q in queries_:  # the Image page opens in this tab with the slice it can step through
        assert (q["run"], q["ablation"], q["outcome"], q["sort"], q["from"]) == (
            "tiny", "identity:1-12", "wrong", "confidence", "failures")
    assert not any(im.proto.link for im in at.image)  # no new-tab links on the thumbnails
    confidences = sql(dash_store, "SELECT s.image_id FROM selection_t s JOIN ablation_t a USING (run_id, ablation_id) "
                      "JOIN run_t r USING (run_id) WHERE r.run = 'tiny' AND a.ablation = 'identity:1-12' "
                      "AND NOT s.correct ORDER BY s.prob DESC, s.image_id")
    assert [link.label for link in links] == [f"image {i}" for (i,) in confidences]  # sorted by confidence

    select(at, "outcome").set_value("flip").run()
    flips = sql(dash_store, """
        SELECT COUNT(*) FROM selections s JOIN selections b ON b.run = s.run AND b.image_id = s.image_id
        AND b.ablation = 'baseline' WHERE s.run = 'tiny' AND s.ablation = 'identity:1-12' AND s.correct <> b.correct""")
    assert f"{flips[0][0]} images: {md('ablation identity:1-12; correctness flips against baseline')}" in caption_text(at)
    select(at, "label").set_value("cat").run()
    select(at, "selected").set_value("dog").run()
    assert md("images labelled 'cat'; selected prompt labelled 'dog'") in caption_text(at)
    assert (at.query_params["label"], at.query_params["selected"]) == ("cat", "dog")


def test_compare_two_ablations_and_two_runs(app, dash_store):
    at = app("compare", run="tiny", a="baseline", b="identity:1-12")
    (both, only_a, only_b), = sql(dash_store, """
        SELECT COUNT(*) FILTER (WHERE x.correct AND y.correct), COUNT(*) FILTER (WHERE x.correct AND NOT y.correct),
               COUNT(*) FILTER (WHERE y.correct AND NOT x.correct)
        FROM selections x JOIN selections y ON y.run = x.run AND y.image_id = x.image_id
        WHERE x.run = 'tiny' AND x.ablation = 'baseline' AND y.ablation = 'identity:1-12'""")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Right only under A"] == str(only_a) and metrics["Right only under B"] == str(only_b)
    assert metrics["Accuracy A"] == f"{(both + only_a) / 9:.3f}"
    assert len(at.dataframe[1].value) == only_a + only_b
    per_label = at.dataframe[0].value
    assert np.allclose(per_label["difference"], per_label["accuracy_b"] - per_label["accuracy_a"])
    delta = next(m for m in at.metric if m.label == "Accuracy B").proto
    assert only_a != only_b and delta.direction == (Metric.UP if only_b > only_a else Metric.DOWN)

    at = app("compare", run="tiny", mode="runs", run_b="tiny-singles", run_a_ablation="identity:3",
             run_b_ablation="identity:3", b="zero:5-8")
    assert f"A = {md('tiny/identity:3')}, B = {md('tiny-singles/identity:3')}: the 9 images" in caption_text(at)
    # the same model and images: the same ablation gives the same selections in both runs: no flip to list,
    # and a change of 0 in grey, without an arrow (a green ↑ would say B does better)
    assert {m.label: m.value for m in at.metric}["Right only under A"] == "0"
    assert not any("correct_a" in d.value for d in at.dataframe)  # no empty table of images that flip
    assert "No image is right under exactly one of A and B" in caption_text(at)
    delta = next(m for m in at.metric if m.label == "Accuracy B").proto
    assert (delta.delta, delta.direction, delta.color) == ("+0.000", Metric.NONE, Metric.GRAY)
    (spec,) = [s for s in (json.loads(c.proto.spec) for c in at.get("vega_lite_chart"))
               if "B minus A" in json.dumps(s.get("title"))]
    assert spec["encoding"]["x"]["scale"]["domain"] == [-0.05, 0.05]  # all agree: a readable, symmetric axis


def test_export_page_offers_every_chart_the_slice_and_table1(app, dash_store):
    # The Failures page's filters in the URL (ablation, outcome) do not leak into the selections files.
    at = app("export", run="tiny", ablation="identity:1-12", outcome="wrong", image="3")
    assert f"Current slice: {9 * N_ABLATIONS} selections of 9 images: {md('every ablation; any outcome')}" in \
        caption_text(at)
    select(at, "sel_ablation").set_value("identity:1-12").run()
    select(at, "sel_outcome").set_value("wrong").run()
    n = sql(dash_store, "SELECT COUNT(*) FROM selections WHERE run = 'tiny' AND ablation = 'identity:1-12' "
            "AND NOT correct")[0][0]
    assert f"Current slice: {n} selections of {n} images" in caption_text(at)
    buttons = at.get("download_button")
    for name in ("means_accuracy", "change_accuracy", "layers_accuracy", "blocks_accuracy", "label_accuracy",
                 "confusion_baseline", "confusion_identity_1-12", "layers_caption_score", "image3_logits"):
        assert any(name in b.proto.id for b in buttons), name
    for name in ("table1.md", "table1.tex", "table1_accuracy.tex", "table1.csv", "image3_figure5.md"):
        assert any(b.proto.id.endswith(name) for b in buttons), name  # Table 1 and the image's Figure 5 table
    assert at.image  # the preview
    markdown = at.code[0].value
    with store.connect(dash_store, read_only=True) as con:
        run_id = int(con.execute("SELECT run_id FROM run_t WHERE run = 'tiny'").fetchone()[0])
        assert markdown == tables.summary_markdown(tables.summary(con, run_id)).rstrip("\n")

    # Chosen and ordered ablations: Table 1 and the charts show those, in that order.
    chosen = ["identity:1-12", "baseline", "identity:3"]
    at.multiselect[0].set_value(chosen).run()
    assert not at.exception
    assert at.query_params["figures"] == "|".join(chosen)
    assert list(at.dataframe[0].value["Ablation"]) == chosen
    assert at.code[0].value.count("\n| ") == len(chosen)  # a row each (the header opens the text)


def test_export_previews_a_run_without_a_captioner_without_its_empty_caption_columns(app, dash_store):
    """The slice preview of a run without a captioner leaves out the caption columns, which the files keep
    empty (the public view's columns), and says so; a captioned run's preview shows its captions."""
    def preview(at: AppTest) -> pd.DataFrame:
        return next(d.value for d in at.dataframe if "image_id" in d.value.columns)

    at = app("export", run="tiny-singles")
    rows = preview(at)
    assert len(rows) == 20 and "selected_prompt" in rows.columns
    assert not {"caption", "caption_score"} & set(rows.columns)
    assert not rows.drop(columns="labels").isna().any().any()  # no cell the grid would show as "None"
    assert "without caption, caption\\_score: this run has no captioner" in caption_text(at)
    with store.connect(dash_store, read_only=True) as con:
        run_id = int(con.execute("SELECT run_id FROM run_t WHERE run = 'tiny-singles'").fetchone()[0])
        files = figures.selections_frame(con, run_id, slices.EVERYTHING)
    assert {"caption", "caption_score"} <= set(files.columns) and files[["caption", "caption_score"]].isna().all().all()
    captioned = preview(app("export", run="tiny"))
    assert captioned["caption"].notna().any() and "caption_score" in captioned.columns


def test_a_copied_url_reopens_the_same_view(app):
    params = {"run": "tiny", "ablation": "identity:7", "outcome": "broken", "label": "cat", "selected": "car",
              "sort": "-margin", "page": "1"}
    at = app("failures", **params)
    assert {k: at.query_params[k] for k in params} == params
    assert [select(at, k).value for k in ("ablation", "outcome", "label", "selected", "sort")] == [
        "identity:7", "broken", "cat", "car", "-margin"]


def test_run_picker_switches_run_and_keeps_a_valid_view(app):
    at = app("layers", run="tiny", ablation="zero:5-8")
    select(at, "run").set_value("tiny-singles").run()
    assert not at.exception
    assert at.query_params["run"] == "tiny-singles"
    assert at.query_params["ablation"] == "identity:1"  # zero:5-8 is not in that run: the default instead


def test_missing_store_is_explained_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv(DB_ENV, str(tmp_path / "nothing.duckdb"))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "No store at" in at.error[0].value


# --------------------------------------------------------------------------------------------------
# Read-side safety and renderings on the real store.


def test_queries_only_order_by_the_allow_list(dash_store):
    with store.connect(dash_store, read_only=True) as con:
        with pytest.raises(KeyError):
            queries.slice_rows(con, 1, 0, slices.EVERYTHING, sort="image_id; DROP TABLE run_t")
        rows = queries.slice_rows(con, 1, 0, slices.true_label("x' OR '1'='1"))
    assert rows.empty  # a value is only ever a bound parameter


def test_latex_and_markdown_escape_and_align(dash_store):
    with store.connect(dash_store, read_only=True) as con:
        summary = tables.summary(con, 1)
    latex = latex_tables.table1(summary)
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex  # booktabs
    assert r"\multicolumn{3}{c}{Selected-prompt score}" in latex and r"$\Delta$" in latex
    assert "score_baseline" not in latex and "score\\_baseline" not in latex  # human names only
    assert latex.count(r"\\") == len(summary) + 2  # two header rows
    body = latex.split(r"\midrule")[1]
    assert "-" not in body.replace("identity:1-", "").replace("identity:4-", "").replace("identity:7-", "") \
        .replace("identity:10-", "").replace("identity:5-", "").replace("identity:9-", "").replace("zero:5-", "") \
        .replace("$-$", "").replace("---", "")  # minus signs are math minus, the baseline's change an em dash
    markdown = tables.summary_markdown(summary)
    lines = markdown.splitlines()
    assert lines[0].startswith("| Ablation | Images | Accuracy | 95% CI | Δ accuracy |")
    assert lines[1].startswith("|---|---:|")
    base = lines[2].split(" | ")
    assert base[4] == "—" and "0.000 [" not in base[4]  # no "0.0000 [0.0000, 0.0000]" change for baseline
    for line, row in zip(lines[3:3 + len(summary) - 1], summary.iloc[1:].itertuples(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{row.accuracy:.3f}"
        assert cells[3] == f"[{row.accuracy_lo:.3f}, {row.accuracy_hi:.3f}]".replace("-", "−")
        assert cells[4].rstrip("*") == tables.number(row.d_accuracy, sign=True)
        assert cells[4].endswith("*") == (row.sig_accuracy != 0)  # the one rule's mark
        assert "-" not in cells[4]  # a typographic minus


# --------------------------------------------------------------------------------------------------
# Counts, runs in progress, comparable runs, embeddings.


def _store_with(tmp_path, images: list[tuple[int, tuple[str, ...]]], picks: dict[str, list[int]],
                prompts=("cat", "dog", "bird")) -> Path:
    """A store written through compute.store's own functions: one run, ``images`` (id, labels), a prompt per
    label, and per ablation the prompt each image picks. Logits put 0.9 of the mass on the pick."""
    from compute.ablations import parse_ablation
    from compute.dataset import ImageRecord
    from compute.prompts import Prompt

    db = tmp_path / "fixture.duckdb"
    ablations = [parse_ablation(a, 12) for a in picks]
    records = [ImageRecord(i, f"{i}.jpg", tmp_path / f"{i}.jpg", labels) for i, labels in images]
    with store.connect(db) as con:
        run_id = store.create_run(con, store.NewRun(
            name="fixture", model="none", config_json="{}", config_hash="x", n_layers=12, embedding_dtype="none",
            images=records, prompts=[Prompt(f"a photo of a {p}", p) for p in prompts], ablations=ablations))
        n, a, p = len(images), len(picks), len(prompts)
        chosen = np.array(list(picks.values())).T  # (n, A)
        logits = np.where(np.arange(p) == chosen[..., None], 3.0, 0.0).astype(np.float32)  # (n, A, P)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        correct = np.array([[prompts[chosen[i, j]] in images[i][1] for j in range(a)] for i in range(n)])
        selection = store.Selection(logits, probs, chosen.astype(np.int16), correct, probs.max(-1),
                                    np.full((n, a), 3.0, np.float32), np.full((n, a), 0.3, np.float32))
        store.write_batch(con, run_id, store.BatchResult(np.array([i for i, _ in images]), np.arange(a, dtype=np.int16),
                                                           selection, None, [], []))
    return db


def test_confusion_of_a_multi_label_fixture_counts_each_image_once(tmp_path):
    images = [(1, ("cat", "dog")), (2, ("cat",)), (3, ("bird", "dog")), (4, ("bird",)), (5, ("cat", "dog"))]
    # baseline right on every image (accuracy 1.000); identity:1 wrong on the two-label image 3 and on image 5
    db = _store_with(tmp_path, images, {"baseline": [1, 0, 2, 2, 0], "identity:1": [1, 0, 0, 2, 2]})
    with store.connect(db, read_only=True) as con:
        base = queries.confusion(con, 1, 0)
        ablated = queries.confusion(con, 1, 1)
        summary = tables.summary(con, 1)
    assert summary["accuracy"].iloc[0] == 1.0
    assert (base["true_label"] == base["selected_label"]).all()  # nothing off the diagonal at accuracy 1
    assert dict(zip(base["true_label"], base["images"], strict=True)) == {"dog": 1, "cat": 2, "bird": 2}
    assert base["images"].sum() == len(images) == ablated["images"].sum()  # each image once
    cells = {(t, s): v for t, s, v in ablated.itertuples(index=False)}
    assert cells[("bird", "cat")] == cells[("dog", "cat")] == 0.5  # image 3 picked "cat": half to each row
    assert cells[("cat", "bird")] == cells[("dog", "bird")] == 0.5  # image 5 picked "bird"
    assert cells[("dog", "dog")] == 1 and cells[("cat", "cat")] == 1 and cells[("bird", "bird")] == 1


def test_a_running_run_shows_its_caption_stage_and_is_not_opened_by_default(dash_store, tmp_path, monkeypatch):
    db = tmp_path / "copy.duckdb"
    shutil.copy(dash_store, db)
    with duckdb.connect(str(db)) as con:  # "tiny" back in its caption stage: the sweep done, 3 captions to go
        con.execute("UPDATE run_t SET status = 'running', created_at = now() WHERE run = 'tiny'")
        rows = con.execute("""SELECT DISTINCT i.path, p.prompt FROM selection_t s JOIN image_t i USING (run_id, image_id)
                              JOIN prompt_t p USING (run_id, prompt_id) WHERE s.run_id = 1""").fetchall()
        con.execute("UPDATE selection_t SET caption = NULL, caption_score = NULL WHERE run_id = 1")
        for path, prompt in rows[:3]:
            con.execute("DELETE FROM caption_cache_t WHERE image = ? AND prefix = ?", [path, prompt])
        config = json.loads(con.execute("SELECT config FROM run_t WHERE run = 'tiny'").fetchone()[0])
        written = {k for (k,) in con.execute("SELECT DISTINCT captioner FROM caption_cache_t").fetchall()}
    assert store.caption_key(config) in written  # the dashboard finds the cache rows the caption stage writes
    with store.connect(db, read_only=True) as con:
        assert queries.caption_progress(con, 1) == (len(rows) - 3, len(rows))
        assert queries.caption_progress(con, 2) is None  # no captioner
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.query_params["run"] == "tiny-singles"  # the newest complete run, not the one still running
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "tiny"
    at.run()
    bar = at.get("progress")[0].proto
    assert bar.text == f"captions: {len(rows) - 3:,} of {len(rows):,} generated (sweep done)"
    assert bar.value == int(100 * (len(rows) - 3) / len(rows))


def test_embeddings_page_projects_the_stored_embeddings_and_how_far_each_ablation_moves_them(app, dash_store):
    from analysis import projection

    at = app("embeddings", run="tiny", ablation="identity:1-12")
    scatter, bars = charts_of(at)
    with store.connect(dash_store, read_only=True) as con:
        keys, emb = store.embeddings(con, 1, list(range(1, 11)), "float32")
    by = {k: emb[n] for n, k in enumerate(keys)}
    images = sorted({i for i, _ in keys})
    assert sorted(r["image_id"] for r in scatter) == images == [i for i in range(1, 11) if i != 4]
    for r in scatter:  # the cosine of each image's ablated embedding with its baseline one
        a, b = projection.unit(by[(r["image_id"], 0)]), projection.unit(by[(r["image_id"], 20)])
        assert math.isclose(r["cosine"], float(a @ b), rel_tol=1e-5)
    cosine = {r["ablation"]: r["cosine"] for r in bars}
    assert len(cosine) == N_ABLATIONS and math.isclose(cosine["baseline"], 1.0, rel_tol=1e-6)
    assert cosine["identity:1-12"] < 1
    # drawn as how far they move, a bar from 0: 1 - the mean cosine
    assert all(math.isclose(r["distance"], 1 - r["cosine"], abs_tol=1e-9) for r in bars)
    (spec,) = [s for s in (json.loads(c.proto.spec) for c in at.get("vega_lite_chart")) if "move" in json.dumps(s)]
    assert spec["encoding"]["x"]["field"] == "distance" and "domain" not in spec["encoding"]["x"].get("scale", {})
    select(at, "colour").set_value("correct").run()
    assert {r["correct"] for r in charts_of(at)[0]} <= {"right", "wrong"}


def test_thumbnails_open_only_the_files_the_store_lists_for_the_run(dash_store):
    """No page can hand the thumbnail reader a path: it takes (run, image) and looks the file up in image_t of
    that run; the rows pages draw thumbnails from carry no path at all."""
    import inspect

    from dashboard import thumbnails

    assert list(inspect.signature(thumbnails.thumbnail).parameters) == ["run_id", "image_id", "size"]
    with store.connect(dash_store, read_only=True) as con:
        rows = queries.slice_rows(con, 1, 0, slices.EVERYTHING, limit=3)
        flips = queries.compare_flips(con, 1, 0, 2, 1)
        listed = queries.image_paths(con, 1)
        expected = dict(con.execute("SELECT image_id, path FROM image_t WHERE run_id = 1").fetchall())
    assert "path" not in rows.columns and "path" not in flips.columns
    assert listed == expected


def test_a_model_the_servers_freeze_caught_is_freed_when_the_cache_drops_it(tiny_clip, monkeypatch):
    """The server freezes what is alive at the start of a run (dashboard/server.py), the Image page's cached model
    included; frozen, it is never walked for cycles again, so a model held in a cycle would stay in memory after
    the cache evicts it (a ViT-B/16 in float32 is 600 MB). It holds none: its last reference frees it."""
    import gc
    import weakref

    from compute.models import load_clip
    from dashboard import server

    clip = load_clip(str(tiny_clip), "cpu")
    parts = [weakref.ref(x) for x in (clip, clip.model, clip.processor, next(clip.model.parameters()))]
    monkeypatch.setattr(server, "_modules_at_freeze", 0)  # as after new imports: collect, then freeze
    server.freeze_new_imports()
    assert not any(o is clip.model for o in gc.get_objects())  # frozen
    del clip
    assert [ref() for ref in parts] == [None] * len(parts)
