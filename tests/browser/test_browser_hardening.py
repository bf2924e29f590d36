"""The dashboard in a real headless Chromium on a damaged store: the page shows compute.storefile's one line
(what the command line prints after ``error:``) as its error, and no exception. The AppTest cases of every
bad store kind are tests/integration/test_dashboard_hardening.py; this one shows a real server and browser
draw the same thing.
"""

from __future__ import annotations

import shutil

import pytest
from helpers import ARTIFACTS, data_block, flip

from compute import store
from compute.errors import StoreError
from tools.screenshots import EXCEPTION, FINISHED, page_url, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ERROR = '[data-testid="stAlertContentError"]'


def test_a_damaged_store_shows_its_one_line_in_chromium_and_no_exception(browser, dash_store, tmp_path):
    db = tmp_path / "store.duckdb"
    shutil.copy(dash_store, db)
    flip(db, data_block(db))  # found by a query, not when the file is opened
    with pytest.raises(StoreError) as refused, store.connect(db, read_only=True) as con:
        store.list_runs(con)  # what the command line's `list` reads
    line = str(refused.value)
    assert line.startswith(f"the store {db} is damaged (a block's checksum does not match its bytes at byte ")

    with serve(db, ARTIFACTS / "streamlit-hardening.log") as url:
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        for page in ("overview", "failures"):
            tab.goto(page_url(url, page, {"run": "tiny"}), timeout=60_000)
            tab.wait_for_selector(ERROR, timeout=60_000)
            tab.wait_for_function(FINISHED, timeout=60_000)
            assert tab.locator(EXCEPTION).count() == 0, tab.locator(EXCEPTION).first.inner_text()
            assert [t.strip() for t in tab.locator(ERROR).all_inner_texts()] == [line]
        tab.close()  # (left open when a check fails: conftest.py screenshots it)
