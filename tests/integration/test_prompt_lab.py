"""The Prompt lab page: new prompts scored from stored embeddings, and saved as a run."""

from __future__ import annotations

import shutil

import pytest
from helpers import APP, DASH_ABLATIONS, sql

from analysis.text import md
from compute.store import DB_ENV


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
    at.switch_page("views/prompt_lab.py").run()
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
    at.switch_page("views/prompt_lab.py").run()
    assert not at.exception
    assert any(md("write `text | label`") in e.value for e in at.error)  # shown as text
