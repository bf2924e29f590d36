"""The browser tier's Chromium: a test asks for ``browser`` and gets the module's one, launched by
tools.screenshots.chromium (``CHROMIUM``: Debian's chromium-headless-shell, else its chromium, through the
playwright package, never ``playwright install``). Without Chromium or playwright the test skips with a
banner, and fails in CI (helpers.skip_loudly).
"""

from __future__ import annotations

import pytest
from helpers import skip_loudly

from tools.screenshots import CHROMIUM, chromium


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        skip_loudly(f"CHROMIUM MISSING: no browser at {CHROMIUM}; the real-browser tests did not run "
                    "(apt-get install chromium-headless-shell; .ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_loudly("PLAYWRIGHT MISSING: pip install playwright (the package only; never `playwright install`)")
    with chromium() as launched:
        yield launched
