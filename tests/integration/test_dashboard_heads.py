"""AppTest of the Heads and Flow pages and of the Image page's attention maps, on a real run of the heads
and flow sweeps (conftest.heads_store), every number checked against SQL on the store; and the figure
export of those views."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import chart_rows, open_page, select, sql
from PIL import Image

RUN = "tiny-heads"


def changes_in_sql(db, metric: str) -> dict[str, float]:
    """Per ablation, its mean ``metric`` minus baseline's over the images computed under both."""
    value = "correct::DOUBLE" if metric == "accuracy" else "score_baseline"
    return dict(sql(db, f"""
        SELECT s.ablation, AVG(s.{value}) - AVG(b.{value}) FROM selections s
        JOIN selections b ON b.run = s.run AND b.image_id = s.image_id AND b.ablation = 'baseline'
        WHERE s.run = ? GROUP BY s.ablation""", [RUN]))


def assert_rule_stated(at) -> None:
    """The page's caption states the one significance rule in sentences of their own (not in parentheses)."""
    from analysis import stats
    from analysis.text import md

    (caption,) = [c.value for c in at.caption if md(stats.RULE) in c.value]
    assert caption.endswith(md(stats.RULE)) and f"({md(stats.RULE)}" not in caption


def test_heads_page_draws_every_head_of_every_layer_with_its_change_against_baseline(heads_store, monkeypatch):
    at = open_page(heads_store, monkeypatch, "heads", run=RUN)
    assert at.title[0].value == "Heads"
    (cells,) = [[r for r in rows if "head" in r and "change" in r] for rows in chart_rows(at)]
    cells = {r["ablation"]: r for r in cells}
    assert len(cells) == 12 * 4
    expected = changes_in_sql(heads_store, "accuracy")
    for label, r in cells.items():
        layer, head = label.removeprefix("identity:").split("/h")
        assert (r["layer"], r["head"]) == (int(layer), int(head))
        assert r["change"] == pytest.approx(expected[label], abs=1e-9)
        assert r["lo"] <= r["change"] <= r["hi"]  # the interval the tooltip shows
        assert r["holds"] == (r["p_holm"] < 0.05)
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert [p["name"] for p in spec["params"]] == ["cell"]  # a click selects the cell's ablation
    assert spec["params"][0]["select"]["fields"] == ["ablation"]
    table = at.dataframe[0].value
    assert len(table) == 48 and set(table["ablation"]) == set(cells)
    columns = json.loads(at.dataframe[0].proto.columns)  # changes to 3 decimals, as Table 1 and the heatmap
    assert {columns[c]["type_config"]["format"] for c in ("change", "lo", "hi")} == {"%+.3f"}
    assert any("48 heads (identity, one at a time)" in c.value for c in at.caption)
    assert_rule_stated(at)

    # The other group of single-head ablations of the run, and the score instead of accuracy.
    assert select(at, "heads_kind").options == ["identity", "mean"]
    select(at, "metric").set_value("score_baseline").run()
    assert not at.exception and at.query_params["metric"] == "score_baseline"
    scores = changes_in_sql(heads_store, "score_baseline")
    (cells,) = [[r for r in rows if "change" in r] for rows in chart_rows(at)]
    assert all(r["change"] == pytest.approx(scores[r["ablation"]], abs=1e-6) for r in cells)
    select(at, "heads_kind").set_value("mean").run()
    (cells,) = [[r for r in rows if "change" in r] for rows in chart_rows(at)]
    assert [r["ablation"] for r in cells] == ["mean:2/h1"]


def test_heads_and_flow_pages_explain_a_run_without_them(dash_store, monkeypatch):
    for page, hint in (("heads", 'sweep = "heads"'), ("flow", 'sweep = "flow"')):
        at = open_page(dash_store, monkeypatch, page, run="tiny")
        assert any(hint in i.value for i in at.info), page
        assert not at.get("vega_lite_chart")


def test_flow_page_draws_each_target_at_each_layer_with_intervals(heads_store, monkeypatch):
    at = open_page(heads_store, monkeypatch, "flow", run=RUN)
    assert at.title[0].value == "Flow"
    (rows,) = chart_rows(at)
    points = {r["ablation"]: r for r in rows if "target" in r}
    assert len(points) == 36  # 3 targets x 12 layers; the two-layer knockout extra is not a flow cell
    expected = changes_in_sql(heads_store, "accuracy")
    for label, r in points.items():
        assert label == f"knockout:{r['layer']}/{r['target']}"
        assert r["change"] == pytest.approx(expected[label], abs=1e-9)
        assert r["lo"] <= r["change"] <= r["hi"]
    assert {r["change"] for r in points.values() if r["layer"] == 12 and r["target"] != "patches>cls"} == {0.0}
    assert len(at.dataframe[0].value) == 36
    assert_rule_stated(at)


def test_image_page_shows_attention_maps_of_baseline_and_the_ablation(heads_store, monkeypatch):
    from analysis import overlays
    from compute.models import load_clip

    at = open_page(heads_store, monkeypatch, "image", run=RUN, image="3", ablation="mean:2/h1")
    assert not at.warning, at.warning[0].value  # the mean statistic came from the store
    assert any(s.value == "Attention maps" for s in at.subheader)
    assert any("attention probabilities" in c.value and "not an attribution" in c.value for c in at.caption)
    assert len(at.image) == 1  # the photo; the maps are charts
    assert [b.proto.label for b in at.get("download_button")] == ["Attention maps (PNG)"]
    heads = select(at, "attn_heads")
    assert heads.options == ["mean over heads", "head 0", "head 1", "head 2", "head 3"]

    # One chart per layer after the two logit charts: baseline and the ablation side by side, each patch's value
    # as the model computes it (the baseline map, which needs no statistics, checked against the model here).
    path, model = sql(heads_store, "SELECT i.path, r.model FROM image_t i JOIN run_t r USING (run_id) "
                      "WHERE r.run = ? AND i.image_id = 3", [RUN])[0]
    expected = overlays.select_heads(overlays.image_maps(load_clip(model, "cpu"), path, "baseline").baseline,
                                     "h1")  # (layers, tokens): CLS first
    heads.set_value("h1").run()
    assert not at.exception and at.query_params["attn_heads"] == "h1"
    maps = chart_rows(at)[2:]
    assert len(maps) == 12
    for layer, rows in enumerate(maps, start=1):
        assert {r["map"] for r in rows} <= {"baseline", "mean:2/h1"} and {r["layer"] for r in rows} == {layer}
        base = {(r["row"], r["col"]): r["probability"] for r in rows if r["map"] == "baseline"}
        side = int(round(len(base) ** 0.5))
        assert side * side == len(base) == expected.shape[1] - 1
        assert all(base[(k // side, k % side)] == pytest.approx(float(expected[layer - 1, 1 + k]), abs=1e-6)
                   for k in range(len(base)))
        ablated = [r for r in rows if r["map"] == "mean:2/h1"]
        assert (len(ablated) == 0) == (layer == 2)  # a mean-ablated head has no probabilities: no cells there
    titles = [json.dumps(json.loads(el.proto.spec)) for el in at.get("vega_lite_chart")[2:]]
    assert "mean:2/h1: no probabilities" in titles[1]

    # One layer large, over the picture (a data: URL, nothing fetched), baseline and the ablation.
    select(at, "attn_large").set_value(3).run()
    assert not at.exception and at.query_params["attn_large"] == "3"
    large = at.get("vega_lite_chart")[2:4]
    assert [json.loads(el.proto.spec)["title"]["text"] for el in large] == ["baseline, layer 3", "mean:2/h1, layer 3"]
    pictures = [[r["url"] for r in rows if isinstance(r.get("url"), str)] for rows in chart_rows(at)[2:4]]
    assert all(len(p) == 1 and p[0].startswith("data:image/png;base64,") for p in pictures), pictures
    assert len(chart_rows(at)) == 2 + 2 + 12


def test_image_page_without_the_model_says_so_at_once(heads_store, tmp_path, monkeypatch):
    import shutil
    import time

    import duckdb

    db = tmp_path / "shared.duckdb"  # a store shared without its model: a hub id that is not in the cache
    shutil.copy(heads_store, db)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE run_t SET model = 'nobody/not-a-cached-model'")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    at = open_page(db, monkeypatch, "image", run=RUN, image="3", ablation="mean:2/h1")
    assert time.monotonic() - start < 20  # no hub retries (they took 23 s per render)
    (line,) = [i.value for i in at.info if "No attention maps" in i.value]
    assert "nobody" in line and "not in the local Hugging Face cache" in line
    assert len(at.get("vega_lite_chart")) == 2  # the logit charts, drawn; no maps
    assert not at.warning  # the mean statistics are not even read


def test_export_writes_the_heads_and_flow_charts_and_the_attention_map(heads_store, tmp_path):
    from compute.__main__ import main

    out = tmp_path / "pack"
    assert main(["export", "--run", RUN, "--out", str(out), "--db", str(heads_store), "--formats", "svg",
                 "--image", "3", "--ablation", "identity:6/h2"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"heads_identity.svg", "heads_mean.svg", "flow.svg", "image3_logits.svg",
            "image3_attention_identity_6_h2.png"} <= names
    assert not any(n.startswith("layers_") for n in names)  # no whole single layer in this run
    picture = Image.open(io.BytesIO((out / "image3_attention_identity_6_h2.png").read_bytes()))
    assert picture.width > 12 * 100 and picture.height > 2 * 100  # 12 layers, two rows


def test_export_refuses_an_ablation_without_an_image(heads_store, tmp_path, capsys):
    from compute.__main__ import main

    assert main(["export", "--run", RUN, "--out", str(tmp_path / "x"), "--db", str(heads_store),
                 "--ablation", "identity:6/h2"]) == 2
    assert "--ablation goes with --image" in capsys.readouterr().err
    assert main(["export", "--run", RUN, "--out", str(tmp_path / "y"), "--db", str(heads_store),
                 "--image", "3", "--ablation", "identity:99"]) == 2
    assert "no ablation 'identity:99'" in capsys.readouterr().err


def test_the_attention_figure_of_an_identity_layer_is_dark_where_baseline_is_not(heads_store):
    from analysis import overlays
    from compute.models import load_clip

    path = sql(heads_store, "SELECT path FROM image_t WHERE image_id = 3")[0][0]
    model = sql(heads_store, "SELECT model FROM runs")[0][0]
    maps = overlays.image_maps(load_clip(model, "cpu"), path, "identity:6/h2")
    one = overlays.select_heads(maps.ablated, "h2")
    assert one[5, 0] == 1 and (one[5, 1:] == 0).all()  # layer 6, head 2: CLS attends only to itself
    figure = np.asarray(overlays.attention_figure(maps, "h2")).astype(int)
    tile = overlays.TILE

    def tile_at(row: int, layer: int) -> np.ndarray:  # rows: 0 baseline, 1 the ablation
        y = 34 + row * (20 + tile + 30) + 20
        x = 6 + layer * (tile + 6)
        return figure[y:y + tile, x:x + tile]

    grey = np.asarray(Image.fromarray(maps.picture).convert("L").convert("RGB")
                      .resize((tile, tile), Image.BILINEAR)).astype(int)
    dark = (grey * (1 - overlays.ALPHA) + overlays.colorize(np.zeros(1))[0] * overlays.ALPHA).round()
    assert np.abs(tile_at(1, 5) - dark).max() <= 1  # no attention on any patch: the coldest colour everywhere
    assert np.abs(tile_at(0, 5) - dark).max() > 20  # baseline reads some patches at that layer
