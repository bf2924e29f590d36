"""The Compare page across runs (AppTest): a rescored prompt variant beside its run, ablation by ablation,
with McNemar's paired test under the one rule (Holm over the ablations) and the images that flip; and runs
of models of different depths on one relative-depth axis. Every number against SQL on the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import APP, chart_rows, select, sql
from streamlit.testing.v1 import AppTest

from analysis import stats
from analysis.text import md
from compute.store import DB_ENV
from dashboard.pages import page_info

VARIANT = [("a drawing of a cat", "cat"), ("a drawing of a dog", "dog"), ("a drawing of a bird", "bird"),
           ("a sketch of a car", "car")]


def open_compare(db: Path, monkeypatch, **params: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(params)
    at.run()
    at.switch_page(page_info("compare").path).run()
    assert not at.exception, at.exception[0].value
    return at


@pytest.fixture
def variant_store(dash_store, tmp_path) -> Path:
    """A copy of the dashboard store with "tiny-singles" rescored with other prompts into "singles-drawn"."""
    from compute.prompts import Prompt
    from compute.rescore import rescore

    db = tmp_path / "variant.duckdb"
    shutil.copy(dash_store, db)
    rescore(db, "tiny-singles", [Prompt(t, label) for t, label in VARIANT], "singles-drawn", progress=False,
            echo=lambda _: None)
    return db


def test_a_rescored_prompt_variant_is_compared_ablation_by_ablation(variant_store, monkeypatch):
    at = open_compare(variant_store, monkeypatch, run="tiny-singles", mode="runs")
    run_b = select(at, "run_b")
    assert run_b.options[0].startswith("singles-drawn (other prompts, the same labels)")  # the variant first
    assert run_b.value == "singles-drawn" and at.query_params["run_b"] == "singles-drawn"
    assert any("tiny (the same prompts)" in o for o in run_b.options)  # same images, other run: offered too

    expected = sql(variant_store, """
        SELECT x.ablation, COUNT(*), AVG(x.correct::DOUBLE), AVG(y.correct::DOUBLE),
               COUNT(*) FILTER (WHERE x.correct AND NOT y.correct), COUNT(*) FILTER (WHERE y.correct AND NOT x.correct)
        FROM selections x JOIN selections y ON y.image_id = x.image_id AND y.ablation = x.ablation
        JOIN ablation_t a ON a.ablation = x.ablation AND a.run_id = (SELECT run_id FROM run_t WHERE run = x.run)
        WHERE x.run = 'tiny-singles' AND y.run = 'singles-drawn'
        GROUP BY a.ablation_id, x.ablation ORDER BY a.ablation_id""")
    assert len(expected) == 13  # baseline and the 12 single layers, in both runs
    table = next(d.value for d in at.dataframe if "only_a" in d.value)
    assert list(table["ablation"]) == [r[0] for r in expected]
    assert list(table["accuracy_a"]) == pytest.approx([r[2] for r in expected])
    assert list(table["accuracy_b"]) == pytest.approx([r[3] for r in expected])
    assert [(a, b) for a, b in zip(table["only_a"], table["only_b"], strict=True)] == [(r[4], r[5]) for r in expected]
    p = [stats.mcnemar(r[4], r[5])[1] for r in expected]
    assert list(table["p"]) == [stats.format_p(x) for x in p]
    assert list(table["p_holm"]) == [stats.format_p(x) for x in stats.holm(p)]  # Holm over these ablations
    marks = ["" if q >= stats.ALPHA or r[3] == r[2] else ("▲ higher *" if r[3] > r[2] else "▼ lower *")
             for q, r in zip(stats.holm(p), expected, strict=True)]
    assert list(table["verdict"]) == marks

    rows = chart_rows(at)
    paired = next(c for c in rows if any("accuracy_a" in r for r in c))
    assert {r["ablation"] for r in paired if "accuracy_a" in r} == {r[0] for r in expected}
    depth = next(c for c in rows if any("depth" in r for r in c))
    assert sorted({r["run"] for r in depth}) == ["singles-drawn", "tiny-singles"]
    assert len({(r["run"], r["layer"]) for r in depth}) == 24
    assert all(r["depth"] == pytest.approx(r["layer"] / 12) for r in depth)

    # One ablation in detail: the one with the most flips opens first; its flipping images as thumbnails of one
    # size, each linked to the Image page.
    flips_per = {r[0]: r[4] + r[5] for r in expected}
    worst = max(flips_per, key=lambda a: (flips_per[a], -[r[0] for r in expected].index(a)))
    assert select(at, "run_a_ablation").value == worst and select(at, "run_b_ablation").value == worst
    assert f"A = {md('tiny-singles/' + worst)}, B = {md('singles-drawn/' + worst)}" in "\n".join(
        c.value for c in at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Right only under A"]) + int(metrics["Right only under B"]) == flips_per[worst]
    assert "McNemar p" in metrics
    n_thumbs = min(flips_per[worst], 12)
    assert len(at.image) == n_thumbs  # (their one width: tests/browser/test_compare_and_lab.py)
    assert len([link for link in at.page_link if link.label.startswith("image ")]) == n_thumbs


def test_runs_of_models_of_different_depths_share_a_relative_depth_axis(dash_store, tmp_path, monkeypatch):
    from compute.config import load_experiment
    from compute.runner import run
    from tools.synthetic import save_random_clip, write_experiment

    db = tmp_path / "depths.duckdb"
    shutil.copy(dash_store, db)
    config = json.loads(sql(db, "SELECT config FROM run_t WHERE run = 'tiny-singles'")[0][0])
    coco = Path(config["dataset"]["images"]).parent  # the same images (tools.synthetic.make_coco's layout)
    shallow = save_random_clip(tmp_path / "clip6", layers=6, width=32, heads=4)
    exp = write_experiment(tmp_path / "six.toml", shallow, coco, db, name="six-layers", sweep="singles")
    run(load_experiment(exp), progress=False, echo=lambda _: None)

    at = open_compare(db, monkeypatch, run="tiny-singles", mode="runs", run_b="six-layers")
    assert "another model (6 layers)" in select(at, "run_b").value + " ".join(select(at, "run_b").options)
    captions = "\n".join(c.value for c in at.caption)
    assert "so models of different depths (12 and 6 layers) share one axis" in captions
    depth = next(c for c in chart_rows(at) if any("depth" in r for r in c))
    by_run = {name: sorted({(r["layer"], r["depth"]) for r in depth if r["run"] == name})
              for name in ("tiny-singles", "six-layers")}
    assert by_run["tiny-singles"] == [(k, pytest.approx(k / 12)) for k in range(1, 13)]
    assert by_run["six-layers"] == [(k, pytest.approx(k / 6)) for k in range(1, 7)]
    accuracy = dict(sql(db, "SELECT ablation, AVG(correct::DOUBLE) FROM selections WHERE run = 'six-layers' "
                        "GROUP BY ablation"))
    assert all(r["accuracy"] == pytest.approx(accuracy[r["ablation"]]) for r in depth if r["run"] == "six-layers")
    # The labels match (identity:3 in both) but name other depths: the page says so.
    assert "an ablation's label names a layer of each model, not the same depth" in captions
