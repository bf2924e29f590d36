"""The Prompt lab page: new prompts scored from stored embeddings, and saved as a run."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import APP, DASH_ABLATIONS, shown, sql

from analysis.text import md
from compute.store import DB_ENV
from dashboard.pages import page_info


@pytest.fixture
def store_copy(dash_store, tmp_path):
    """A private copy of the dashboard test store: this test adds a run to it."""
    db = tmp_path / "lab.duckdb"
    shutil.copy(dash_store, db)
    return db


def accuracy_by_ablation(db, run):
    return sql(db, """SELECT a.ablation, AVG(s.correct::DOUBLE) FROM selection_t s
                      JOIN ablation_t a USING (run_id, ablation_id) JOIN run_t r USING (run_id)
                      WHERE r.run = ? GROUP BY a.ablation_id, a.ablation ORDER BY a.ablation_id""", [run])


def test_prompt_lab_scores_typed_prompts_and_saves_them_as_a_run(store_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(DB_ENV, str(store_copy))
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(run="tiny")
    at.run()
    at.switch_page(page_info("prompt_lab").path).run()
    assert not at.exception, at.exception[0].value

    # Opened on the run's own prompts, the lab reproduces the run's stored accuracy from its embeddings.
    prompts = sql(store_copy, "SELECT prompt, label FROM prompt_t JOIN run_t USING (run_id) WHERE run = 'tiny' "
                  "ORDER BY prompt_id")
    assert at.text_area[0].value == "\n".join(f"{p} | {label}" for p, label in prompts)
    table = at.dataframe[0].value
    stored = accuracy_by_ablation(store_copy, "tiny")
    assert list(table["ablation"]) == [a for a, _ in stored] and len(stored) == DASH_ABLATIONS
    assert max(abs(x - y) for x, (_, y) in zip(table["accuracy"], stored, strict=True)) < 1e-6

    # New prompts: the table changes, the URL keeps them, and saving makes a run with the same numbers.
    new = "a photo of a black cat | cat\na photo of a small dog | dog\na photo of a car on a sink | car"
    at.text_area[0].set_value(new).run()
    assert not at.exception, at.exception[0].value
    assert at.query_params["prompts"] == new
    lab_table = at.dataframe[0].value
    assert len(at.get("vega_lite_chart")) == 2  # accuracy per ablation, logits of the chosen image
    at.text_input[0].set_value("tiny-lab").run()
    at.button[0].click().run()
    assert not at.exception, at.exception[0].value
    assert any(f"Saved run {md('tiny-lab')}:" in s.value for s in at.success)
    saved = accuracy_by_ablation(store_copy, "tiny-lab")
    assert [a for a, _ in saved] == list(lab_table["ablation"])
    assert max(abs(x - y) for x, (_, y) in zip(lab_table["accuracy"], saved, strict=True)) < 1e-6
    assert sql(store_copy, "SELECT status, parent_run FROM run_t WHERE run = 'tiny-lab'") == [("complete", "tiny")]
    assert sql(store_copy, "SELECT COUNT(*) FROM prompt_t JOIN run_t USING (run_id) WHERE run = 'tiny-lab'") == [(3,)]


def test_prompt_lab_explains_bad_lines(store_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(DB_ENV, str(store_copy))
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(run="tiny", prompts="a photo of a cat")
    at.run()
    at.switch_page(page_info("prompt_lab").path).run()
    assert not at.exception
    assert any(md("write `text | label`") in e.value for e in at.error)  # shown as text


def open_lab(db, monkeypatch, **params):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(run="tiny", **params)
    at.run()
    at.switch_page(page_info("prompt_lab").path).run()
    assert not at.exception, at.exception[0].value
    return at


def test_prompt_lab_checks_labels_as_the_command_line_does_and_lists_every_bad_line(dash_store, monkeypatch):
    # An unknown label is refused with the closest known one, as `run` and `rescore` refuse it; nothing scored.
    at = open_lab(dash_store, monkeypatch, prompts="a photo of a cat | cat\na photo of a dgo | dgo")
    (error,) = at.error
    assert md("prompt label 'dgo' is carried by no image") in error.value
    assert md("closest known labels: 'dog'") in error.value
    assert not at.dataframe and not at.get("vega_lite_chart")
    # Every bad line at once, with the unknown labels of the good ones.
    bad = "a cat | cat\na dog\na bird |\na cat | dog\na photo of a kat | kat\n | cat"
    at = open_lab(dash_store, monkeypatch, prompts=bad)
    (error,) = at.error
    for line in ("line 2: write `text | label`", "line 3: an empty label", "line 4: duplicate prompt 'a cat'",
                 "line 6: an empty text"):
        assert md(line) in error.value, line
    assert md("prompt label 'kat' is carried by no image") in error.value  # the good lines' labels are checked too
    assert error.value.startswith("5 problem(s)")
    at = open_lab(dash_store, monkeypatch, prompts="a cat | cat\na photo of a kat | kat\na photo of a dgo | dgo")
    assert at.error[0].value.startswith("2 problem(s)")
    assert md("'kat'") in at.error[0].value and md("'dgo'") in at.error[0].value


def test_prompt_lab_against_the_runs_own_prompts_per_prompt_and_per_template(dash_store, monkeypatch):
    text = "a drawing of a {label} | cat, dog, bird\na photo of a {label}; a picture of a {label} | cat, dog, bird"
    at = open_lab(dash_store, monkeypatch, prompts=text)
    assert not at.error
    versus = at.dataframe[0].value
    stored = dict(accuracy_by_ablation(dash_store, "tiny"))
    assert list(versus["run_accuracy"]) == pytest.approx([stored[a] for a in versus["ablation"]])
    assert list(versus["change_vs_run"]) == pytest.approx(list(versus["accuracy"] - versus["run_accuracy"]))
    table = next(d for d in at.dataframe if "selected" in d.value)
    per_prompt = table.value
    assert list(per_prompt["prompt"]) == [
        "a drawing of a cat", "a drawing of a dog", "a drawing of a bird",
        *(f"mean of 2: a photo of a {x} / a picture of a {x}" for x in ("cat", "dog", "bird"))]
    assert per_prompt["selected"].sum() == 9  # every readable image selects one prompt under baseline
    # As shown: a share with no images to count is "—" (a prompt nobody selects), never "None"; the others 3 decimals
    for row, cells in zip(per_prompt.to_dict("records"), shown(table), strict=True):
        if row["selected"] == 0:
            assert cells["right_when_selected"] == "—"
        else:
            assert re.fullmatch(r"[01]\.\d{3}", cells["right_when_selected"]), cells
    assert (per_prompt["selected"] == 0).any()  # the case above is met
    per_template = next(d.value for d in at.dataframe if "a drawing of a {label}" in d.value)
    assert list(per_template.columns) == ["ablation", "a drawing of a {label}",
                                          "a photo of a {label}; a picture of a {label}"]
    assert len(per_template) == DASH_ABLATIONS
