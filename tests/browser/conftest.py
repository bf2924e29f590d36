"""The browser tier's Chromium: a test asks for ``browser`` and gets the module's one, launched by
tools.screenshots.chromium (``CHROMIUM``: Debian's chromium-headless-shell, else its chromium, through the
playwright package, never ``playwright install``). Without Chromium or playwright the test skips with a
banner, and fails in CI (helpers.skip_loudly).

A test asks for ``tab`` and gets the module's one tab (set to 1440 x 1000 px): a new tab starts a renderer,
which cost Chromium about 1.5 CPU-seconds here, as much as the page load in it (eight loads of the Overview:
22-27 CPU-s in a new tab each, 11-13 in one tab). A test that fails leaves a full-page screenshot of every tab
it still has open in test-artifacts/screenshots/ (``<test>-<n>.png``) and closes them: the next test gets a
new one. A passing test saves none: a full-page PNG costs Chromium about 0.6 CPU-seconds here (the every-page
test took 13 CPU-s and 10 s more when it kept its 22).
"""

from __future__ import annotations

from contextlib import suppress

import pytest
from helpers import ARTIFACTS, skip_loudly

from tools.screenshots import CHROMIUM, chromium


@pytest.fixture(scope="module")
def browser():
    """One Chromium per module (each test opens its own tabs). Not per session: while playwright's sync API
    runs, asyncio.run() in this thread fails, so it must not outlive the browser tests."""
    if not CHROMIUM.is_file():
        skip_loudly(f"CHROMIUM MISSING: no browser at {CHROMIUM}; the real-browser tests did not run "
                    "(apt-get install chromium-headless-shell; .ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_loudly("PLAYWRIGHT MISSING: pip install playwright (the package only; never `playwright install`)")
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def _module_tab(browser):
    return []  # one slot: the module's tab, once a test asked for it (a failed test's hook may have closed it)


@pytest.fixture
def tab(browser, _module_tab):
    """The module's one tab at 1440 x 1000 px, opened again when a failed test closed it; left on a blank page
    (no page of a server the test stopped tries to reconnect). What a test adds to it (an event listener) it
    removes itself."""
    if not _module_tab or _module_tab[0].is_closed():
        _module_tab[:] = [browser.new_page()]
    page = _module_tab[0]
    page.set_viewport_size({"width": 1440, "height": 1000})
    yield page
    if not page.is_closed():
        page.goto("about:blank")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """After a failed test body, before its fixtures close anything: a screenshot of each tab left open."""
    report = yield
    browser = getattr(item, "funcargs", {}).get("browser")
    if report.when == "call" and report.failed and browser is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tabs = [tab for context in browser.contexts for tab in context.pages]
        for n, tab in enumerate(tabs, 1):
            with suppress(Exception):  # a tab that cannot draw any more must not hide the failure itself
                tab.screenshot(path=str(ARTIFACTS / f"{item.name[:80]}-{n}.png"), full_page=True, timeout=10_000)
            with suppress(Exception):
                tab.close()  # (the browser outlives the test: its module's other tests go on)
    return report
