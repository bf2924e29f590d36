"""Every page of a running dashboard server in a real headless Chromium: no exception shown anywhere.

Uses Debian's /usr/bin/chromium through the playwright package (never ``playwright install``); .ci/run
installs it before ``make test``. Screenshots are kept in test-artifacts/screenshots/.
"""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from tools.screenshots import CHROMIUM, CONTENT, EXCEPTION, PAGES, serve, shoot

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
TITLES = {"overview": "Overview", "layers": "Layers", "heads": "Heads", "flow": "Flow", "image": "Image",
          "failures": "Failures", "compare": "Compare", "prompt_lab": "Prompt lab", "export": "Export"}


def _skip_loudly(reason: str) -> None:
    banner = "!" * 78
    print(f"\n{banner}\n{reason}\n{banner}", file=sys.stderr)
    pytest.skip(reason)


def _need_browser() -> None:
    if not CHROMIUM.is_file():
        _skip_loudly(f"CHROMIUM MISSING: no browser at {CHROMIUM}; the real-browser test did not run "
                     "(apt-get install chromium; .ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_loudly("PLAYWRIGHT MISSING: pip install playwright (the package only; never `playwright install`)")


@pytest.mark.browser
@pytest.mark.slow
def test_every_page_renders_without_an_exception_in_chromium(dash_store):
    _need_browser()
    db = dash_store
    params = {"run": "tiny", "image": "3", "ablation": "identity:5"}
    with serve(db, ARTIFACTS / "streamlit.log") as url:
        shots = shoot(url, PAGES, ARTIFACTS, params)
    assert [s.page for s in shots] == list(PAGES)
    for shot in shots:
        assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
        assert shot.title == TITLES[shot.page], shot.url
        assert shot.screenshot.stat().st_size > 20_000, f"{shot.screenshot} looks empty"


@pytest.mark.browser
@pytest.mark.slow
def test_heads_flow_and_attention_maps_in_chromium_and_a_click_on_a_head_opens_its_failures(heads_store):
    _need_browser()
    from playwright.sync_api import sync_playwright

    from tools.screenshots import CHROMIUM_ARGS, FINISHED, RUNNING

    out = ARTIFACTS / "heads"
    with serve(heads_store, out / "streamlit.log") as url:
        shots = shoot(url, ("heads", "flow", "image"), out, {"run": "tiny-heads", "image": "3",
                                                             "ablation": "identity:6/h2"})
        for shot in shots:
            assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
            assert shot.title == TITLES[shot.page], shot.url
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1600})

                def finished() -> None:
                    tab.wait_for_selector("h1", timeout=60_000)
                    tab.wait_for_function(FINISHED, timeout=60_000)
                    tab.wait_for_selector(RUNNING, state="detached", timeout=60_000)

                tab.goto(f"{url}/heads?run=tiny-heads", wait_until="networkidle")
                finished()
                # A click on the heatmap cell of identity:7/h3 (Vega's SVG labels each cell with its tooltip).
                cell = tab.locator('[data-testid="stVegaLiteChart"] svg g.mark-rect path[aria-label*="identity:7/h3;"]')
                assert cell.count() == 1
                cell.first.click()
                tab.wait_for_url("**/failures?**", timeout=60_000)
                finished()
                assert "ablation=identity%3A7%2Fh3" in tab.url and "run=tiny-heads" in tab.url
                assert tab.locator("h1").first.inner_text() == "Failures"
                assert not tab.locator(EXCEPTION).all_inner_texts()
                assert "ablation identity:7/h3; correctness flips" in tab.locator(CONTENT).inner_text()
                # Back on Heads, the page stays there: the click is not replayed.
                tab.locator('[data-testid="stSidebarNavLink"]', has_text="Heads").click()
                tab.wait_for_url("**/heads**", timeout=60_000)
                finished()
                tab.wait_for_timeout(1500)
                assert "/heads" in tab.url and tab.locator("h1").first.inner_text() == "Heads"
            finally:
                browser.close()
