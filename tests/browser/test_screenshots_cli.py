"""``python -m tools.screenshots``, the command that makes docs/screenshots/: a PNG per page asked for, a line
each, and nothing else in the folder (its server's log only when a page failed). What it cannot shoot:
tests/integration/test_dashboard_hardening.py."""

from __future__ import annotations

import pytest
from helpers import skip_loudly
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
