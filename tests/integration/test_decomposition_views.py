"""The decomposition's read side on a real decomposed run of the tiny CLIP (the singles and heads sweeps plus
two extras, TextSpan on the last 3 layers): the Decomposition page in AppTest (every section drawn, its numbers
held to SQL on the public views and to scipy / statsmodels for the rule, the lab's accuracy equal to
analysis.queries.mean_ablation's, a head card's images the top-k of SQL), a run without a decomposition and a
version-2 store opened read-only (one line, no exception), the Image page's per-patch contributions summing to
the stored share, the curve's one query equal to the plain method per N, and the export's decomposition
figures and tables (every SVG holds at every size, every .tex compiles in a one- and two-column article)."""

from __future__ import annotations

import json
import re
import shutil
from urllib.parse import parse_qsl

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import compile_tex, overfull, pdflatex, select, sql
from helpers import open_page as helpers_open_page
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from analysis import SIZES, figures, queries
from analysis import decomposition as dec
from compute import store
from compute.__main__ import main
from dashboard.state import widget_key
from tools.figure_check import problems, read_svg
from tools.synthetic import experiment_text, make_coco

RUN, PLAIN = "tiny-dec", "tiny-plain"
EXTRAS = ("zero:5-8", "mean:2/h1")
DECOMPOSE = "[decomposition]\nenabled = true\ntextspan_layers = 3\ntextspan_texts = 4\n"
# Each decomposed image's correct prompt, from the public views and the definition (of the prompts naming one of
# its labels, the one with the highest baseline logit), written here apart from analysis.queries.
CORRECT = """
WITH correct AS (
    SELECT s.image_id, s.prompt FROM scores s JOIN images i ON i.run = s.run AND i.image_id = s.image_id
    WHERE s.run = $run AND s.ablation = 'baseline' AND list_contains(i.labels, s.label)
      AND s.image_id IN (SELECT image_id FROM contributions WHERE run = $run)
    QUALIFY row_number() OVER (PARTITION BY s.image_id ORDER BY s.logit DESC) = 1
)"""
SHARES = CORRECT + """
SELECT c.image_id, c.component, c.layer, c.head, c.logit AS share
FROM contributions c JOIN correct k ON k.image_id = c.image_id AND k.prompt = c.prompt
WHERE c.run = $run AND c.ablation = 'baseline'"""
EFFECTS = CORRECT + """
SELECT e.ablation, e.image_id, e.total, e.direct, e.indirect
FROM effects e JOIN correct k ON k.image_id = e.image_id AND k.prompt = e.prompt
WHERE e.run = $run ORDER BY e.ablation, e.image_id"""
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dec_store(tiny_clip, tmp_path_factory):
    """Run RUN (singles and heads sweeps, EXTRAS, decomposed) and run PLAIN (singles, not decomposed) over 10
    tiny COCO images, one unreadable."""
    from compute.config import load_experiment
    from compute.runner import run

    tmp = tmp_path_factory.mktemp("decomposition-store")
    db = tmp / "dec.duckdb"
    coco = make_coco(tmp / "coco", n=10, broken=(4,))
    text = experiment_text(tiny_clip, coco, db, name=RUN, extra=EXTRAS, more=DECOMPOSE)
    (tmp / "dec.toml").write_text(text.replace('sweep = "paper"', 'sweep = ["singles", "heads"]'))
    (tmp / "plain.toml").write_text(experiment_text(tiny_clip, coco, db, name=PLAIN, sweep="singles"))
    for name in ("dec", "plain"):
        assert run(load_experiment(tmp / f"{name}.toml"), progress=False, echo=lambda _: None).complete
    return db


def open_page(db, monkeypatch, page: str, **params: str):
    return helpers_open_page(db, monkeypatch, page, default_timeout=180, **params)  # the decomposed store's pages are dear


def datasets(at: AppTest) -> list[list[dict]]:
    """The rows of every dataset of every chart on the page, one list per dataset."""
    return [convert_arrow_bytes_to_pandas_df(ds.data.data).to_dict("records") for el in at.get("vega_lite_chart")
            for ds in el.proto.datasets]


def chart_with(at: AppTest, *fields: str) -> list[dict]:
    """The one dataset on the page whose rows have ``fields``."""
    (rows,) = [rows for rows in datasets(at) if rows and all(f in rows[0] for f in fields)]
    return rows


def run_id(db) -> int:
    return sql(db, "SELECT run_id FROM run_t WHERE run = ?", [RUN])[0][0]


# --------------------------------------------------------------------------------------------------
# The page.


def test_every_section_draws_and_its_numbers_are_the_views(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=RUN)
    assert at.title[0].value == "Decomposition"
    assert [h.value for h in at.header] == ["Direct shares", "Total, direct and indirect effects", "Mean-ablation lab",
                                            "Heads in words (TextSpan)"]
    rows = sql(dec_store, SHARES, {"run": RUN})
    images = {r[0] for r in rows}
    assert len(images) == 9  # every readable image has a right prompt (cat, dog or both)
    assert any(f"Over {len(images)} decomposed images" in c.value for c in at.caption)

    # Per layer: attention (heads and out_proj's bias) and MLP, layer 0 the embeddings; mean over the images.
    def mean_of(keep) -> float:
        per_image = {}
        for image, component, layer, head, share in rows:
            if keep(component, layer, head):
                per_image[image] = per_image.get(image, 0.0) + share
        return float(np.mean(list(per_image.values())))

    layers = {(r["layer"], r["part"]): r for r in chart_with(at, "part", "mean")}
    assert len(layers) == 1 + 12 * 2
    assert layers[0, "embeddings"]["mean"] == pytest.approx(mean_of(lambda c, la, h: c == "embeddings"), abs=1e-5)
    for layer in range(1, 13):
        attention = mean_of(lambda c, la, h, L=layer: c in ("head", "attention_bias") and la == L)
        assert layers[layer, "attention"]["mean"] == pytest.approx(attention, abs=1e-5)
        assert layers[layer, "MLP"]["mean"] == pytest.approx(mean_of(lambda c, la, h, L=layer: c == "mlp" and la == L),
                                                             abs=1e-5)
        assert layers[layer, "MLP"]["lo"] <= layers[layer, "MLP"]["mean"] <= layers[layer, "MLP"]["hi"]
    heads = {r["label"]: r for r in chart_with(at, "label", "mean", "head_label")}
    assert len(heads) == 48
    for layer, head in ((1, 0), (7, 2), (12, 3)):
        assert heads[f"L{layer}.h{head}"]["mean"] == pytest.approx(
            mean_of(lambda c, la, h, L=layer, H=head: c == "head" and la == L and h == H), abs=1e-5)

    # Total, direct and indirect: means of the effects view, the paired t-test against 0 (scipy), Holm over the
    # run's ablations per quantity (statsmodels); the chart of single layers and the heatmap of heads hold them.
    effects = sql(dec_store, EFFECTS, {"run": RUN})
    names = sorted({r[0] for r in effects})
    assert len(names) == 12 + 48 + len(EXTRAS)  # every non-baseline ablation
    expect = {}
    for k, q in enumerate(("total", "direct", "indirect")):
        values = {a: np.array([r[2 + k] for r in effects if r[0] == a]) for a in names}
        p = [scipy_stats.ttest_1samp(values[a], 0).pvalue for a in names]
        p_holm = multipletests(p, method="holm")[1]
        for a, ph in zip(names, p_holm, strict=True):
            expect[a, q] = (values[a].mean(), ph)
    points = chart_with(at, "quantity", "verdict")
    assert {r["ablation"] for r in points} == {f"identity:{k}" for k in range(1, 13)}
    for r in points:
        mean, p_holm = expect[r["ablation"], r["quantity"]]
        assert r["value"] == pytest.approx(mean, abs=1e-5)
        assert r["p_holm"] == pytest.approx(p_holm, rel=1e-6, abs=1e-12)
        assert (r["verdict"] != "not significant") == (p_holm < 0.05)
    assert select(at, "dquantity").value == "indirect"
    cells = chart_with(at, "head_label", "holds")
    assert len(cells) == 48
    for r in cells:
        mean, p_holm = expect[r["ablation"], "indirect"]
        assert r["value"] == pytest.approx(mean, abs=1e-5) and r["holds"] == (p_holm < 0.05)
    table = at.dataframe[0].value
    assert len(table) == 12 + 48 + 1  # the single layers, the identity heads and mean:2/h1

    # The lab and its curve; the cards: one per described head (3 layers x 4 heads), each with its texts.
    assert [m.label for m in at.metric] == ["Accuracy", "Components mean-ablated", "Unablated accuracy"]
    curve = chart_with(at, "n_kept", "accuracy")
    assert [r["n_kept"] for r in curve] == list(range(14))
    described = sql(dec_store, "SELECT layer, head, rank, text, variance FROM head_descriptions WHERE run = ? "
                               "ORDER BY layer, head, rank", [RUN])
    assert len(described) == 3 * 4 * 4
    buttons = [b for b in at.button if str(b.key).startswith("dec_card_")]
    assert [b.key for b in buttons] == [f"dec_card_L{la}.h{h}" for la in (10, 11, 12) for h in range(4)]
    page_text = " ".join(m.value for m in at.markdown)
    for _, _, rank, text, variance in described:
        shown = re.sub(r"([^\w\s])", r"\\\1", text)  # escaped Markdown: shown as the text it is
        assert f"{rank}. {shown} ({variance:.0%})" in page_text


def test_the_measure_relative_to_the_mean_over_prompts(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=RUN, dmeasure="relative")
    assert not at.exception
    all_prompts = sql(dec_store, """
        SELECT c.image_id, AVG(c.logit) FROM contributions c
        WHERE c.run = ? AND c.ablation = 'baseline' AND c.component = 'mlp' AND c.layer = 12 GROUP BY ALL""", [RUN])
    mean_over_prompts = dict(all_prompts)
    correct = {r[0]: r[4] for r in sql(dec_store, SHARES, {"run": RUN}) if r[1] == "mlp" and r[2] == 12}
    want = np.mean([correct[i] - mean_over_prompts[i] for i in correct])
    layers = {(r["layer"], r["part"]): r["mean"] for r in chart_with(at, "part", "mean")}
    assert layers[12, "MLP"] == pytest.approx(want, abs=1e-5)


def test_the_labs_accuracy_is_the_stored_shares_mean_ablation(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=RUN)
    with store.connect(dec_store, read_only=True) as con:
        rid = run_id(dec_store)
        components = queries.components(con, rid)

        def accuracy(ids: list[int]) -> str:
            return f"{queries.mean_ablation(con, rid, ids)['correct'].mean():.3f}"

        assert select(at, "lab_preset").value == dec.PRESETS[0] and select(at, "lab_n").value == 4
        assert at.metric[0].value == accuracy(dec.preset(components, dec.PRESETS[0], 4))
        select(at, "lab_preset").set_value("all MLPs").run()
        assert at.metric[0].value == accuracy(dec.preset(components, "all MLPs"))
        assert at.metric[1].value == "12 of 74"
        select(at, "lab_preset").set_value(dec.PRESETS[3]).run()
        select(at, "lab_n").set_value(2).run()
        lab_add = next(w for w in at.multiselect if w.key == widget_key("lab_add"))
        lab_add.set_value(["L3.h1", "L5.mlp", "embeddings"]).run()
        by_label = {f"L{la}.h{h}" if c == "head" else (c if c == "embeddings" else f"L{la}.{c}"): int(i)
                    for i, c, la, h in components[["component_id", "component", "layer", "head"]].itertuples(index=False)
                    if c != "final_ln_bias"}
        ids = sorted(set(dec.preset(components, dec.PRESETS[3], 2)) | {by_label[x] for x in ("L3.h1", "L5.mlp",
                                                                                                 "embeddings")})
        assert at.metric[0].value == accuracy(ids)
        assert at.metric[1].value == f"{len(ids)} of 74"
        assert at.query_params["lab_add"] == "L3.h1,L5.mlp,embeddings"
        select(at, "lab_preset").set_value("none").run()
        lab_add.set_value([]).run()
        unablated = sql(dec_store, "SELECT AVG(correct::DOUBLE) FROM selections WHERE run = ? AND ablation = 'baseline' "
                                   "AND image_id IN (SELECT image_id FROM decomposed_t d JOIN run_t r USING (run_id) "
                                   "WHERE r.run = ?)", [RUN, RUN])[0][0]
        assert at.metric[0].value == accuracy([]) == f"{unablated:.3f}"  # nothing ablated: the stored picks


def test_the_curves_one_query_is_the_plain_method_for_every_n(dec_store):
    with store.connect(dec_store, read_only=True) as con:
        rid = run_id(dec_store)
        components = queries.components(con, rid)
        curve = queries.layer_mean_ablation(con, rid)
        assert sorted(curve["n_kept"].unique()) == list(range(14))
        for n in range(14):
            plain = queries.mean_ablation(con, rid, dec.preset(components, dec.PRESETS[0], n))
            fast = curve[curve["n_kept"] == n].reset_index(drop=True)
            assert list(fast["image_id"]) == list(plain["image_id"])
            assert list(fast["prompt_id"]) == list(plain["prompt_id"]), n
            assert list(fast["correct"]) == list(plain["correct"])


def test_a_head_cards_images_are_its_top_k_by_contribution(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=RUN, dhead="L12.h1")
    top = [i for i, _ in sql(dec_store, "SELECT image_id, share FROM (" + SHARES + ") WHERE component = 'head' AND "
                                        "layer = 12 AND head = 1 ORDER BY share DESC, image_id LIMIT 8", {"run": RUN})]
    links = [dict(parse_qsl(link.proto.query_string)) for link in at.page_link if link.label.startswith("image ")]
    assert [int(q["image"]) for q in links] == top
    assert all(q["run"] == RUN and q["tok_component"] == "L12.h1" for q in links)
    assert any("from L12\\.h1 is largest" in c.value for c in at.caption)
    assert any(m.value.startswith("**L12\\.h1** · direct share") for m in at.markdown)  # its card beside them
    # A card's button chooses its head.
    next(b for b in at.button if b.key == "dec_card_L10.h2").click().run()
    assert at.query_params["dhead"] == "L10.h2"
    top = [i for i, _ in sql(dec_store, "SELECT image_id, share FROM (" + SHARES + ") WHERE component = 'head' AND "
                                        "layer = 10 AND head = 2 ORDER BY share DESC, image_id LIMIT 8", {"run": RUN})]
    assert [int(dict(parse_qsl(link.proto.query_string))["image"]) for link in at.page_link
            if link.label.startswith("image ")] == top


def test_a_run_without_decomposition_gets_one_line(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=PLAIN)
    assert len(at.info) == 1
    assert "`[decomposition] enabled = true`" in at.info[0].value and "already done" in at.info[0].value
    assert not at.get("vega_lite_chart") and not at.header


def test_a_version_2_store_opened_read_only_gets_one_line(dec_store, monkeypatch, tmp_path):
    v2 = tmp_path / "v2.duckdb"
    shutil.copy(dec_store, v2)
    with duckdb.connect(str(v2)) as con:  # what version 2 lacked: the decomposition's views and tables
        for view in ("contributions", "effects", "head_descriptions"):
            con.execute(f"DROP VIEW {view}")
        for table in ("component_t", "decomposed_t", "contribution_t", "direct_t", "component_vector_t",
                      "direct_vector_t", "head_description_t"):
            con.execute(f"DROP TABLE {table}")
        con.execute(f"UPDATE {store.MARKER} SET value = '2' WHERE key = 'schema_version'")
    at = open_page(v2, monkeypatch, "decomposition", run=RUN)
    assert len(at.info) == 1 and "schema version 2" in at.info[0].value
    assert "`[decomposition] enabled = true`" in at.info[0].value
    assert sql(v2, f"SELECT value FROM {store.MARKER} WHERE key = 'schema_version'") == [("2",)]  # read, not migrated


def test_the_image_page_splits_a_heads_share_over_the_patches(dec_store, monkeypatch):
    # The image whose baseline pick is the latest prompt: the section's default prompt is that pick, not the first.
    image, prompt = sql(dec_store, "SELECT s.image_id, s.prompt FROM selections s JOIN prompt_t p ON p.prompt = s.prompt "
                                   "AND p.run_id = (SELECT run_id FROM run_t WHERE run = ?) WHERE s.run = ? AND "
                                   "s.ablation = 'baseline' ORDER BY p.prompt_id DESC, s.image_id LIMIT 1", [RUN, RUN])[0]
    at = open_page(dec_store, monkeypatch, "image", run=RUN, image=str(image), tok_component="L12.h1")
    assert any(s.value == "Direct contribution per patch" for s in at.subheader)
    chosen = select(at, "tok_prompt")
    assert chosen.options[chosen.value] == prompt  # the baseline's pick by default

    def stored(layer: int, head: int | None) -> float:
        return sql(dec_store, "SELECT SUM(logit) FROM contributions WHERE run = ? AND image_id = ? AND ablation = "
                              "'baseline' AND component = 'head' AND layer = ? AND (? IS NULL OR head = ?) AND prompt = ?",
                   [RUN, image, layer, head, head, prompt])[0][0]

    caption = next(c.value for c in at.caption if "over all tokens" in c.value)
    total, cls = (float(x) for x in re.findall(r"([+-]\d+\.\d{4})", caption)[:2])
    assert total == pytest.approx(stored(12, 1), abs=2e-4)  # summed over the tokens: the stored direct share
    patches = chart_with(at, "row", "col", "share")
    assert len(patches) == 16  # the tiny CLIP's 4 x 4 patches
    assert sum(r["share"] for r in patches) + cls == pytest.approx(stored(12, 1), abs=2e-4)
    # Every head of a layer together: the sum of the layer's heads' stored shares.
    select(at, "tok_component").set_value("L11 heads").run()
    caption = next(c.value for c in at.caption if "over all tokens" in c.value)
    assert float(re.findall(r"([+-]\d+\.\d{4})", caption)[0]) == pytest.approx(stored(11, None), abs=2e-4)


# --------------------------------------------------------------------------------------------------
# The export.


@pytest.fixture(scope="module")
def packs(dec_store, tmp_path_factory) -> dict[str, object]:
    """RUN's pack at every size with its decomposition figures alone (the whole pack lists them:
    test_the_export_writes_the_decomposition_figures_and_tables), and PLAIN's whole pack."""
    out = {}
    for size in SIZES:
        folder = tmp_path_factory.mktemp(f"dec-{size}")
        assert main(["export", "--run", RUN, "--db", str(dec_store), "--out", str(folder), "--size", size,
                     "--formats", "svg", "--figures", "decomposition_*"]) == 0
        out[size] = folder
    plain = tmp_path_factory.mktemp("plain")
    assert main(["export", "--run", PLAIN, "--db", str(dec_store), "--out", str(plain), "--formats", "svg"]) == 0
    out["plain"] = plain
    return out


FIGURES = {"decomposition_layers", "decomposition_heads", "decomposition_effects", "decomposition_mean_ablation",
           *(f"decomposition_effects_{g}_{q}" for g in ("identity", "mean") for q in ("total", "direct", "indirect"))}
TABLES = ("decomposition_layers", "decomposition_effects", "decomposition_mean_ablation", "decomposition_texts")


def test_the_export_writes_the_decomposition_figures_and_tables(packs, dec_store):
    with store.connect(dec_store, read_only=True) as con:  # the whole pack's figures, without drawing them
        whole = set(figures.pack_charts(figures.pack_data(con, figures.find_run_id(con, RUN))))
    assert {n for n in whole if n.startswith("decomposition")} == FIGURES
    assert {"means_accuracy", "layers_accuracy"} <= whole and any(n.startswith("heads_") for n in whole)
    for size in SIZES:
        names = {p.name for p in packs[size].iterdir()}
        svgs = {re.sub(r"_part\d+of\d+$", "", n.removesuffix(".svg")) for n in names
                if n.startswith("decomposition") and n.endswith(".svg")}
        assert svgs == FIGURES, size
        for stem in TABLES:
            assert {f"{stem}.md", f"{stem}.csv"} <= names
            assert f"{stem}.tex" in names or f"{stem}_part1of2.tex" in names, stem
        readme = (packs[size] / "README.md").read_text()
        assert all(n.replace("_", "\\_") in readme for n in names if n.startswith("decomposition"))
    assert not [p for p in packs["plain"].iterdir() if p.name.startswith("decomposition")]
    # The effects table's numbers are the views'.
    table = pd.read_csv(packs["screen"] / "decomposition_effects.csv").set_index("ablation")
    effects = sql(dec_store, EFFECTS, {"run": RUN})
    for name in ("identity:5", "identity:12/h3", "mean:2/h1"):
        for k, q in enumerate(("total", "direct", "indirect")):
            assert table.loc[name, q] == pytest.approx(np.mean([r[2 + k] for r in effects if r[0] == name]), abs=1e-5)
    lab = pd.read_csv(packs["screen"] / "decomposition_mean_ablation.csv")
    with store.connect(dec_store, read_only=True) as con:
        rid = run_id(dec_store)
        mlps = dec.preset(queries.components(con, rid), "all MLPs")
        assert lab.set_index("preset").loc["all MLPs", "accuracy"] == pytest.approx(
            queries.mean_ablation(con, rid, mlps)["correct"].mean())


def test_every_decomposition_svg_holds_at_every_size(packs):
    found = []
    for size in SIZES:
        for path in sorted(packs[size].glob("decomposition*.svg")):
            svg = path.read_text()
            found += [f"{size}/{path.name}: {p}" for p in problems(svg, SIZES[size])]
            if SIZES[size]:
                assert read_svg(svg).width == SIZES[size], (size, path.name)
    assert found == []


def test_every_decomposition_tex_compiles_in_one_and_two_columns(packs, tmp_path):
    latex = pdflatex()
    texs = sorted(packs["one-column"].glob("decomposition*.tex"))
    assert len(texs) >= 4
    for k, path in enumerate(texs):
        text = path.read_text()
        needs = re.search(r"^% Needs: (.*)$", text, re.M)
        assert needs, path.name
        shutil.copy(path, tmp_path / f"t{k}.tex")
        for layout in ("", "[twocolumn]"):
            body = f"\\begin{{table}}[t]\\centering\n\\input{{t{k}}}\n\\end{{table}}"
            log = compile_tex(latex, tmp_path, f"doc{k}", f"{layout}{{article}}\n{needs[1]}", body)
            assert not re.search(r"^! ", log, re.M), (path.name, layout)
            assert [x for x in overfull(log) if x > 1] == [], (path.name, layout, overfull(log))
            assert "Float too large" not in log, (path.name, layout)  # each part fits a page


def test_the_export_page_offers_the_decomposition_tables(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "export", run=RUN)
    offered = {b.proto.id for b in at.get("download_button")}
    for stem in ("decomposition_layers", "decomposition_mean_ablation"):
        for ext in ("md", "tex", "csv"):
            assert any(k.endswith(f"{stem}.{ext}") for k in offered), (stem, ext)
    assert any(s.value == "Decomposition tables" for s in at.subheader)


def test_a_click_on_a_heads_cell_adds_it_to_the_lab_and_a_second_takes_it_out(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "decomposition", run=RUN, lab_preset="none")
    assert at.metric[1].value == "0 of 74"
    for k, want in enumerate((["L3.h1"], [])):
        # What Streamlit's selection event holds after a click on the cell of L3.h1 (dashboard.clicks' selection);
        # each click is taken once, then the chart starts afresh under a new key.
        at.session_state[f"dec_shares_{k}"] = {"selection": {"pick_0": [{"label": "L3.h1"}]}}
        at.run()
        assert not at.exception
        assert next(w for w in at.multiselect if w.key == widget_key("lab_add")).value == want
        assert at.metric[1].value == f"{len(want)} of 74"
        assert at.query_params["lab_add"] == ",".join(want)


def test_every_chart_builder_validates_and_keeps_to_the_palette(dec_store):
    from analysis import decomposition_charts as charts
    from analysis.charts import GREY, HOLLOW, PALETTE, SIG_COLOURS

    allowed = set(PALETTE) | set(SIG_COLOURS) | {"black", "white", "#555", "#444", GREY, HOLLOW}
    with store.connect(dec_store, read_only=True) as con:
        d = dec.read(con, run_id(dec_store))
        table = dec.effect_table(d, queries.ablations(con, run_id(dec_store)))
    frame = pd.DataFrame({"row": [0, 0, 1, 1], "col": [0, 1, 0, 1], "share": [0.1, -0.2, 0.0, 0.3]})
    built = [charts.layer_share_chart(dec.layer_parts(d)), charts.head_share_heatmap(dec.head_cells(d, "relative")),
             charts.effects_chart(dec.single_layer_rows(table)), charts.curve_chart(dec.curve(d), 1.0),
             charts.token_chart(frame, "L1.h0", "sum")]
    built += [charts.effects_heatmap(dec.head_rows(table), q, "identity") for q in dec.QUANTITIES]
    for chart in built:
        spec = chart.to_dict(validate=True)  # the app skips Altair's validation: it is done here
        text = json.dumps(spec)
        found = re.findall(r'"(?:color|fill|stroke)": "(#[0-9A-Fa-f]+|[a-z]+)"', text)
        ranges = re.findall(r'"range": \[([^\]]*)\]', text)
        colours = set(found) | {c.strip(' "') for r in ranges for c in r.split(",") if c.strip().startswith('"#')}
        assert colours <= allowed, colours - allowed


def test_the_image_pages_split_waits_for_a_component(dec_store, monkeypatch):
    at = open_page(dec_store, monkeypatch, "image", run=RUN, image="2")
    assert any(s.value == "Direct contribution per patch" for s in at.subheader)
    assert select(at, "tok_component").value == "none"
    assert not [rows for rows in datasets(at) if rows and "share" in rows[0]]  # nothing computed yet
    select(at, "tok_component").set_value("L12.h0").run()
    assert not at.exception and at.query_params["tok_component"] == "L12.h0"
    assert len(chart_with(at, "row", "col", "share")) == 16


def test_a_siglip_run_draws_too(tiny_siglip, tmp_path, monkeypatch):
    """SigLIP: no CLS token, the pooling head's MLP a component without a layer; the page draws every section and
    the Image page's split (over the patches it reads, every token a patch) sums to the stored share."""
    from compute.config import load_experiment
    from compute.runner import run

    coco = make_coco(tmp_path / "coco", n=5)
    db = tmp_path / "sig.duckdb"
    (tmp_path / "sig.toml").write_text(experiment_text(tiny_siglip, coco, db, name="sig", sweep="singles",
                                                       extra=("mean:4/h1",), more=DECOMPOSE))
    assert run(load_experiment(tmp_path / "sig.toml"), progress=False, echo=lambda _: None).complete
    at = open_page(db, monkeypatch, "decomposition", run="sig")
    assert len(at.header) == 4
    assert any("the pooling head's MLP" in c.value for c in at.caption)
    assert len(chart_with(at, "part", "mean")) == 1 + 6 * 2
    image, prompt = sql(db, "SELECT image_id, prompt FROM selections WHERE ablation = 'baseline' ORDER BY image_id "
                            "LIMIT 1")[0]
    at = open_page(db, monkeypatch, "image", run="sig", image=str(image), tok_component="L6.h2")
    caption = next(c.value for c in at.caption if "over all tokens" in c.value)
    assert "CLS" not in caption
    stored = sql(db, "SELECT logit FROM contributions WHERE image_id = ? AND ablation = 'baseline' AND component = "
                     "'head' AND layer = 6 AND head = 2 AND prompt = ?", [image, prompt])[0][0]
    patches = chart_with(at, "row", "col", "share")
    assert len(patches) == 16 and sum(r["share"] for r in patches) == pytest.approx(stored, abs=2e-4)
