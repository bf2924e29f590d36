"""Compare across prompt variants and the Prompt lab's checks in a real headless Chromium, against a real
server: a run and its rescored variant side by side (the variant offered first, accuracy per ablation with the
rule's marks, the flipping images at one width), at 1440 and 800 px without anything overflowing; the lab
refusing an unknown label with the closest known one and listing every bad line, then scoring templates.

The store is made by the real compute path (a tiny random CLIP, COCO files via pycocotools, ``rescore``).
Uses Debian's Chromium (tools.screenshots.CHROMIUM) through the playwright package (never ``playwright install``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, sql

from tools.screenshots import CONTENT, EXCEPTION, finished, page_url, reflowed, serve
from tools.synthetic import make_coco, write_experiment

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts" / "screenshots" / "compare-lab"
VARIANT = [("a drawing of a cat", "cat"), ("a drawing of a dog", "dog"), ("a drawing of a bird", "bird"),
           ("a sketch of a car", "car")]


@pytest.fixture(scope="module")
def variant_store(tiny_clip, tmp_path_factory) -> Path:
    """Run "shapes" (the single layers of the tiny CLIP over 12 images) and "shapes-drawn", its rescore with
    other prompts of the same labels."""
    from compute.config import load_experiment
    from compute.prompts import Prompt
    from compute.rescore import rescore
    from compute.runner import run

    tmp = tmp_path_factory.mktemp("variant-store")
    db = tmp / "variant.duckdb"
    coco = make_coco(tmp / "coco", n=12)
    run(load_experiment(write_experiment(tmp / "e.toml", tiny_clip, coco, db, name="shapes", sweep="singles")),
        progress=False, echo=lambda _: None)
    rescore(db, "shapes", [Prompt(t, label) for t, label in VARIANT], "shapes-drawn", progress=False,
            echo=lambda _: None)
    return db


@pytest.fixture(scope="module")
def server(variant_store):
    with serve(variant_store, ARTIFACTS / "streamlit.log") as url:
        yield url


def open_page(tab, url: str, page: str, params: dict[str, str]) -> None:
    tab.goto(page_url(url, page, params), timeout=60_000)
    finished(tab)


def test_compare_sets_a_rescored_variant_beside_its_run(server, browser, variant_store):
    tab = browser.new_page(viewport={"width": 1440, "height": 1200})
    open_page(tab, server, "compare", {"run": "shapes", "mode": "runs"})
    assert not tab.locator(EXCEPTION).all_inner_texts()
    assert "run_b=shapes-drawn" in tab.url  # the variant is offered, and first
    text = tab.locator(CONTENT).inner_text()
    assert "other prompts, the same labels" in text and "Accuracy per ablation" in text
    assert "McNemar's paired test of B against A per ablation, Holm-adjusted over these 13 tests" in text
    chart_text = " ".join(tab.locator('[data-testid="stVegaLiteChart"] svg').all_text_contents())
    assert "accuracy per ablation" in chart_text and "relative depth" in chart_text
    flips = sql(variant_store, """
        SELECT COUNT(*) FROM selections x JOIN selections y ON y.image_id = x.image_id AND y.ablation = x.ablation
        WHERE x.run = 'shapes' AND y.run = 'shapes-drawn' AND x.correct <> y.correct GROUP BY x.ablation
        ORDER BY 1 DESC LIMIT 1""")[0][0]
    images = tab.locator(f'{CONTENT} [data-testid="stImage"] img')
    assert images.count() == min(flips, 12) > 0
    widths = {round(images.nth(k).bounding_box()["width"]) for k in range(images.count())}
    assert len(widths) == 1, widths  # one width for every thumbnail of the grid
    tab.set_viewport_size({"width": 800, "height": 1200})
    assert reflowed(tab) == []
    widths = {round(images.nth(k).bounding_box()["width"]) for k in range(images.count())}
    assert len(widths) == 1, widths
    tab.close()


def type_prompts(tab, text: str) -> None:
    area = tab.locator(f'{CONTENT} textarea').first
    area.fill(text)
    area.press("Control+Enter")  # a text area applies its value on Ctrl+Enter (or when it loses focus)
    tab.wait_for_timeout(500)
    finished(tab)


def test_the_prompt_lab_names_the_closest_label_and_every_bad_line(server, browser):
    tab = browser.new_page(viewport={"width": 1440, "height": 1200})
    open_page(tab, server, "prompt_lab", {"run": "shapes"})
    assert not tab.locator(EXCEPTION).all_inner_texts()
    type_prompts(tab, "a photo of a cat | cat\na photo of a dgo | dgo\na bird\na photo of a cat | cat\n | dog")
    error = tab.locator('[data-testid="stAlertContentError"]').inner_text()
    assert error.startswith("4 problem(s), nothing scored")
    for part in ("line 3: write `text | label`", "line 4: duplicate prompt 'a photo of a cat' (line 1 asks it already)",
                 "line 5: an empty text", "prompt label 'dgo' is carried by no image", "closest known labels: 'dog'"):
        assert part.replace("`", "") in error.replace("`", ""), part
    assert "text | label" in tab.url.replace("+", " ").replace("%7C", "|") or "prompts=" in tab.url
    assert tab.locator('[data-testid="stVegaLiteChart"]').count() == 0  # nothing scored

    type_prompts(tab, "a drawing of a {label} | cat, dog, bird\na photo of a {label}; a picture of a {label}")
    assert not tab.locator('[data-testid="stAlertContentError"]').count()
    text = tab.locator(CONTENT).inner_text()
    assert "Per prompt" in text and "Per template" in text
    assert "mean of 2: a photo of a cat / a picture of a cat" in text
    chart_text = " ".join(tab.locator('[data-testid="stVegaLiteChart"] svg').all_text_contents())
    assert "the run's prompts" in chart_text and "these prompts" in chart_text
    tab.close()
