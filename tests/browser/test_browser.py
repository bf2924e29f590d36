"""Every page of a running dashboard server in a real headless Chromium: no exception shown anywhere.

Uses Debian's /usr/bin/chromium through the playwright package (never ``playwright install``); .ci/run
installs it before ``make test``. Screenshots are kept in test-artifacts/screenshots/.
"""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from tools.screenshots import CHROMIUM, PAGES, serve, shoot

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
TITLES = {"overview": "Overview", "layers": "Layers", "image": "Image", "failures": "Failures",
          "compare": "Compare", "prompt_lab": "Prompt lab", "export": "Export"}


def _skip_loudly(reason: str) -> None:
    banner = "!" * 78
    print(f"\n{banner}\n{reason}\n{banner}", file=sys.stderr)
    pytest.skip(reason)


@pytest.mark.browser
@pytest.mark.slow
def test_every_page_renders_without_an_exception_in_chromium(dash_store):
    if not CHROMIUM.is_file():
        _skip_loudly(f"CHROMIUM MISSING: no browser at {CHROMIUM}; the real-browser test did not run "
                     "(apt-get install chromium; .ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_loudly("PLAYWRIGHT MISSING: pip install playwright (the package only; never `playwright install`)")
    db = dash_store
    params = {"run": "tiny", "image": "3", "ablation": "identity:5"}
    with serve(db, ARTIFACTS / "streamlit.log") as url:
        shots = shoot(url, PAGES, ARTIFACTS, params)
    assert [s.page for s in shots] == list(PAGES)
    for shot in shots:
        assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
        assert shot.title == TITLES[shot.page], shot.url
        assert shot.screenshot.stat().st_size > 20_000, f"{shot.screenshot} looks empty"
