"""``python -m tools.screenshots``, the command that makes docs/screenshots/: a PNG per page asked for, a line
each, and nothing else in the folder (its server's log only when a page failed). What it cannot shoot:
tests/integration/test_dashboard_hardening.py. And the pictures the browser tests keep: ``shoot(keep="failed")``
only of a page that shows an exception, the tier's conftest only of the tabs a failing test left open."""

from __future__ import annotations

import os

import pytest
from helpers import ROOT, run_probe, skip_loudly
from PIL import Image

from tools import screenshots

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_screenshots_command_writes_one_png_per_page_and_nothing_else(heads_store, tmp_path, capsys):
    if not screenshots.CHROMIUM.is_file():
        skip_loudly(f"CHROMIUM MISSING: no browser at {screenshots.CHROMIUM}; the screenshots command was not run")
    out = tmp_path / "shots"
    code = screenshots.main(["--db", str(heads_store), "--out", str(out), "--run", "tiny-heads",
                             "--pages", "overview,heads", "--width", "1000"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["heads.png", "overview.png"]  # no streamlit.log
    assert Image.open(out / "heads.png").size[0] == 1000
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{out / 'overview.png'}  Overview  ok", f"{out / 'heads.png'}  Heads  ok"]


# Three pages under st.navigation: the default served at the root, one that draws, one whose script raises.
PAGES_APP = '''
import streamlit as st

def home():
    st.title("Home")

def fine():
    st.title("Fine")
    st.write("every line drawn")

def broken():
    st.title("Broken")
    raise ValueError("a page that fails")

st.navigation([st.Page(home, title="Home", default=True), st.Page(fine, title="Fine", url_path="fine"),
               st.Page(broken, title="Broken", url_path="broken")]).run()
'''


def test_shoot_keeping_failed_pages_saves_the_picture_of_a_page_with_an_exception_only(tmp_path, browser):
    """What the browser tests ask of ``shoot``: ``keep="failed"`` leaves no PNG of a page that passed and keeps
    the one of a page that shows an exception, with the exception's text; ``keep="all"`` keeps both."""
    app = tmp_path / "pages_app.py"
    app.write_text(PAGES_APP)
    with screenshots.serve(tmp_path / "unused.duckdb", tmp_path / "streamlit.log", app=app, script_args=[]) as url:
        failed = screenshots.shoot(url, ("fine", "broken"), tmp_path / "failed", browser=browser, keep="failed")
        every = screenshots.shoot(url, ("fine", "broken"), tmp_path / "all", browser=browser, keep="all")
    assert [(s.page, s.title) for s in failed] == [("fine", "Fine"), ("broken", "Broken")]
    fine, broken = failed
    assert fine.exceptions == [] and fine.screenshot is None
    assert any("a page that fails" in text for text in broken.exceptions)
    assert broken.screenshot == tmp_path / "failed" / "broken.png"
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == ["broken.png"]
    assert Image.open(broken.screenshot).size[0] == 1400  # shoot's default width
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["broken.png", "fine.png"]
    assert all(s.screenshot is not None for s in every)


# The browser tier's conftest loaded by a probe run of pytest, its screenshots sent to the probe's folder.
PROBE_CONFTEST = '''
import importlib.util, os
from pathlib import Path

import helpers

helpers.ARTIFACTS = Path(os.environ["PROBE_ARTIFACTS"])  # read by the conftest when it loads
spec = importlib.util.spec_from_file_location("browser_conftest", os.environ["BROWSER_CONFTEST"])
browser_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(browser_conftest)
browser = browser_conftest.browser
pytest_runtest_makereport = browser_conftest.pytest_runtest_makereport
'''
PROBE_TESTS = '''
def test_fails_with_two_tabs_open(browser):
    for text in ("one", "two"):
        browser.new_page().set_content(f"<h1>{text}</h1>")
    assert False, "on purpose"

def test_passes_with_a_tab_open(browser):
    assert [tab for context in browser.contexts for tab in context.pages] == []  # the failed test's were closed
    browser.new_page().set_content("<h1>fine</h1>")
'''


def test_a_failing_browser_test_leaves_a_screenshot_of_each_open_tab_and_a_passing_one_none(tmp_path):
    """tests/browser/conftest.py's hook, run by a real pytest on a probe: the failing test's two tabs are saved
    as <test>-1.png and <test>-2.png, then closed; the passing test (which keeps a tab open) saves nothing."""
    if not screenshots.CHROMIUM.is_file():
        skip_loudly(f"CHROMIUM MISSING: no browser at {screenshots.CHROMIUM}; the probe was not run")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "conftest.py").write_text(PROBE_CONFTEST)
    (probe / "test_probe.py").write_text(PROBE_TESTS)
    shots = tmp_path / "shots"
    result = run_probe(probe, env={**os.environ, "PROBE_ARTIFACTS": str(shots),
                                   "BROWSER_CONFTEST": str(ROOT / "tests" / "browser" / "conftest.py")})
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    assert sorted(p.name for p in shots.iterdir()) == ["test_fails_with_two_tabs_open-1.png",
                                                       "test_fails_with_two_tabs_open-2.png"]
    assert all(Image.open(p).size[0] > 0 for p in shots.iterdir())
