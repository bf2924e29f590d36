"""Browsing from a result to its images, in AppTest on the tests' store (conftest.dash_store): a click on a chart's
mark or a table's row opens the Failures page on what it shows (AppTest sets the selection as the browser
would: through the chart's or table's state); Failures opens on the ablation it was called with, else on the
worst one; a URL naming what is not there says so in one line; the root URL keeps its run for the session.
The browser tests (tests/browser) click the real marks and press the real keys."""

from __future__ import annotations

import shutil

import pytest
from helpers import APP, select, sql
from streamlit.testing.v1 import AppTest

from compute.store import DB_ENV
from dashboard.pages import DEFAULT, page_info


def opener(db, monkeypatch):
    """open_page(page, **params): an AppTest of the app on ``db``, opened at ``page`` with ``params`` in its URL."""
    monkeypatch.setenv(DB_ENV, str(db))

    def open_page(page: str = DEFAULT, /, **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update(params)
        at.run()
        if page != DEFAULT:
            at.switch_page(page_info(page).path).run()
        assert not at.exception, at.exception[0].value
        return at

    return open_page


@pytest.fixture
def app(dash_store, monkeypatch):
    return opener(dash_store, monkeypatch)


def click(at: AppTest, key: str, selection: dict) -> AppTest:
    """What a click on the chart or table ``key`` sends (a chart: {"pick_0": [datum fields]}; a table: rows)."""
    at.session_state[key] = {"selection": selection}
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def on_failures(at: AppTest) -> dict[str, str]:
    """The Failures page's filters as shown, after checking that page is the one shown."""
    assert at.title[0].value == "Failures"
    return {p: select(at, p).value for p in ("ablation", "outcome", "label", "selected")}


def drawn(el) -> str:
    """The SVG Vega draws for a chart element of the page (its Arrow datasets put back in the spec); raises
    where Vega refuses the spec, as the browser would (silently: an empty chart)."""
    import json

    import vl_convert
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    spec = json.loads(el.proto.spec)
    spec["datasets"] = {ds.name: json.loads(convert_arrow_bytes_to_pandas_df(ds.data.data).to_json(orient="records"))
                        for ds in el.proto.datasets}
    return vl_convert.vegalite_to_svg(spec)


def worst(db) -> str:
    """The ablation of run "tiny" with the lowest accuracy, baseline aside (the first in sweep order on a tie)."""
    return sql(db, """
        SELECT a.ablation FROM selection_t s JOIN ablation_t a USING (run_id, ablation_id) JOIN run_t r USING (run_id)
        WHERE r.run = 'tiny' AND a.kind <> 'baseline'
        GROUP BY a.ablation_id, a.ablation ORDER BY AVG(s.correct::DOUBLE), a.ablation_id LIMIT 1""")[0][0]


# --------------------------------------------------------------------------------------------------
# Clicks.


def test_a_click_on_a_layers_mark_or_row_opens_failures_on_what_it_shows(app):
    at = click(app("layers", run="tiny", label="cat"), "layers_curve", {"pick_0": [{"ablation": "identity:5"}]})
    assert on_failures(at) == {"ablation": "identity:5", "outcome": "flip", "label": "cat", "selected": ""}
    assert at.query_params["page"] == "1" and at.query_params["run"] == "tiny"

    at = click(app("layers", run="tiny"), "layers_blocks", {"pick_0": [{"ablation": "identity:5-8"}]})
    assert on_failures(at) == {"ablation": "identity:5-8", "outcome": "flip", "label": "", "selected": ""}

    # A cell of the accuracy per label: that label's images the ablation gets wrong.
    at = click(app("layers", run="tiny"), "layers_labels", {"pick_0": [{"ablation": "zero:5-8", "label": "dog"}]})
    assert on_failures(at) == {"ablation": "zero:5-8", "outcome": "wrong", "label": "dog", "selected": ""}

    # A cell of the confusion: its images, right or wrong, under the ablation the confusion shows.
    at = click(app("layers", run="tiny", ablation="identity:1-12"), "layers_confusion",
               {"pick_0": [{"true_label": "cat", "selected_label": "dog"}]})
    assert on_failures(at) == {"ablation": "identity:1-12", "outcome": "all", "label": "cat", "selected": "dog"}

    at = click(app("layers", run="tiny"), "layers_tests", {"rows": [2], "columns": [], "cells": []})
    assert on_failures(at)["ablation"] == "identity:3"  # the third tested ablation (baseline is not tested)

    # A filter left on the Failures page earlier does not hide what was clicked.
    at = app("failures", run="tiny", selected="dog", outcome="fixed")
    at.switch_page(page_info("layers").path).run()
    at = click(at, "layers_blocks", {"pick_0": [{"ablation": "identity:1-12"}]})
    assert on_failures(at) == {"ablation": "identity:1-12", "outcome": "flip", "label": "", "selected": ""}


def test_a_click_on_an_overview_row_bar_or_point_opens_failures(app):
    at = click(app("overview", run="tiny"), "overview_table", {"rows": [4], "columns": [], "cells": []})
    assert on_failures(at) == {"ablation": "identity:4", "outcome": "flip", "label": "", "selected": ""}
    at = click(app("overview", run="tiny"), "overview_table", {"rows": [0], "columns": [], "cells": []})
    assert on_failures(at)["ablation"] == "baseline" and at.query_params["outcome"] == "wrong"  # its own errors
    at = click(app("overview", run="tiny"), "overview_changes_accuracy", {"pick_0": [{"ablation": "zero:5-8"}]})
    assert on_failures(at)["ablation"] == "zero:5-8"
    at = click(app("overview", run="tiny"), "overview_means_score_baseline", {"pick_0": [{"ablation": "identity:7"}]})
    assert on_failures(at)["ablation"] == "identity:7"


def test_a_click_on_heads_and_flow_rows_and_points_opens_failures(heads_store, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(heads_store))

    def page(name: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update({"run": "tiny-heads"})
        at.run()
        return at.switch_page(page_info(name).path).run()

    at = page("heads")
    row = at.dataframe[0].value.iloc[5]  # the table's own order: by change
    at = click(at, "heads_table", {"rows": [5], "columns": [], "cells": []})
    assert on_failures(at)["ablation"] == row["ablation"]
    at = page("flow")
    assert "knockout:4/cls&gt;patches" in drawn(at.get("vega_lite_chart")[0])  # Vega draws its points (two layers)
    at = click(at, "flow_points", {"pick_1": [{"ablation": "knockout:4/cls>patches"}]})
    assert on_failures(at) == {"ablation": "knockout:4/cls>patches", "outcome": "flip", "label": "", "selected": ""}
    at = page("flow")
    row = at.dataframe[0].value.iloc[7]
    at = click(at, "flow_table", {"rows": [7], "columns": [], "cells": []})
    assert on_failures(at)["ablation"] == row["ablation"]


def test_a_click_on_an_embedding_opens_its_image_and_a_bar_its_failures(app):
    at = click(app("embeddings", run="tiny", ablation="identity:1-12"), "embeddings_points", {"pick_0": [{"image_id": 6}]})
    assert at.title[0].value == "Image"
    assert (at.query_params["image"], at.query_params["ablation"]) == ("6", "identity:1-12")
    at = click(app("embeddings", run="tiny"), "embeddings_bars", {"pick_0": [{"ablation": "identity:2"}]})
    assert on_failures(at)["ablation"] == "identity:2"


def test_every_clickable_chart_carries_the_selection_it_is_read_by(app):
    import json

    for page, charts in (("layers", 4), ("overview", 6), ("embeddings", 2)):
        at = app(page, run="tiny", ablation="identity:1-12")
        specs = [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]
        clickable = [s for s in specs if any(p["name"].startswith("pick_") for p in s.get("params", []))]
        assert len(clickable) == charts == len(specs), page
        for el in at.get("vega_lite_chart"):
            assert 'aria-roledescription="' in drawn(el)  # Vega takes the spec and draws marks


# --------------------------------------------------------------------------------------------------
# The ablation Failures opens on.


def test_failures_opens_on_the_ablation_it_was_called_with_else_the_worst(app, dash_store):
    at = app("failures", run="tiny")
    assert select(at, "ablation").value == worst(dash_store)
    assert at.query_params["ablation"] == worst(dash_store)

    assert select(app("failures", run="tiny", ablation="identity:3"), "ablation").value == "identity:3"

    # Another page's default is nobody's choice: Layers shows identity:1 under "Confusion under" by default.
    at = app("layers", run="tiny")
    assert select(at, "ablation").value == "identity:1"
    at.switch_page(page_info("failures").path).run()
    assert select(at, "ablation").value == worst(dash_store)
    # The user's choice on another page is: it carries over.
    at.switch_page(page_info("layers").path).run()
    select(at, "ablation").set_value("identity:7").run()
    at.switch_page(page_info("failures").path).run()
    assert select(at, "ablation").value == "identity:7"
    # And on Failures itself, a choice stays.
    select(at, "ablation").set_value("identity:9").run()
    select(at, "outcome").set_value("all").run()
    assert select(at, "ablation").value == "identity:9"


# --------------------------------------------------------------------------------------------------
# A URL naming what is not there.


def test_a_url_naming_a_missing_run_image_or_ablation_says_what_is_shown_instead(dash_store, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(dash_store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"run": "nope", "image": "99999", "ablation": "identity:99"})
    at.run()  # the URL's first page (Overview) resolves the run
    notices = [w.value.replace("\\", "") for w in at.warning]
    assert notices == ["No run “nope” in this store (from the URL): showing run tiny-singles (complete) instead."]
    at.switch_page(page_info("image").path).run()  # the page that reads the image and the ablation
    notices = [w.value.replace("\\", "") for w in at.warning]
    assert notices[0].startswith("No image “99999” in run tiny-singles (from the URL): showing image 1 · ")
    assert notices[1] == ("No ablation “identity:99” in run tiny-singles (from the URL): showing ablation identity:1 "
                          "instead.")
    assert (at.query_params["run"], at.query_params["image"], at.query_params["ablation"]) == (
        "tiny-singles", "1", "identity:1")  # the URL says what is shown
    at.run()
    assert not at.warning  # said once, for the URL as it came

    app = opener(dash_store, monkeypatch)
    at = app("failures", run="tiny", ablation="identity:3", outcome="sideways", page="7")
    notices = [w.value.replace("\\", "") for w in at.warning]
    assert [n.split(" (from")[0] for n in notices] == ["No show “sideways” here", "No page “7” here"]
    assert not app("image", run="tiny", image="3", ablation="identity:5").warning  # all there: nothing said


def test_the_root_url_keeps_its_run_for_the_session(dash_store, tmp_path, monkeypatch):
    from compute.prompts import Prompt
    from compute.rescore import rescore

    db = tmp_path / "copy.duckdb"
    shutil.copy(dash_store, db)
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.query_params["run"] == "tiny-singles"  # the newest complete run
    assert "newest complete run" in select(at, "run").help
    rescore(db, "tiny-singles", [Prompt("a photo of a cat", "cat"), Prompt("a photo of a dog", "dog")], "newer",
            progress=False, echo=lambda _: None)
    at.query_params.clear()  # the menu's links carry no run
    at.run()
    assert select(at, "run").value == "tiny-singles" and "newer (complete)" in select(at, "run").options
    assert not at.warning
    # A new session opens the newest complete run of its own time.
    assert AppTest.from_file(APP, default_timeout=60).run().query_params["run"] == "newer"
