"""The dashboard keeps working while ``python -m compute run`` writes to the same store.

A real compute process commits batch after batch (each an open -> write -> close transaction) while the
dashboard renders pages and reads the run's progress through its own query functions: no lock error, no
exception on a page, progress that only grows and is seen part way, and a run that still completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import APP, ROOT
from streamlit.testing.v1 import AppTest

from compute import store
from compute.store import DB_ENV
from compute.testing import make_coco, write_experiment
from dashboard import queries, ui


def run_progress(db) -> tuple[str, int, int] | None:
    """(status, pairs done, pairs expected) as the sidebar computes it, or None before the run exists."""
    with store.connect(db, read_only=True) as con:
        runs = queries.runs(con)
    if runs.empty:
        return None
    run = runs.iloc[0].to_dict()
    return (run["status"], *ui.progress(run))


@pytest.mark.slow
def test_pages_render_while_a_compute_run_writes_the_store(tiny_clip, tmp_path, monkeypatch):
    coco = make_coco(tmp_path / "coco", n=24)
    db = tmp_path / "live.duckdb"
    exp = write_experiment(tmp_path / "live.toml", tiny_clip, coco, db, name="live", batch_size=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-m", "compute", "run", str(exp), "--no-progress"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv(DB_ENV, str(db))
    seen, at = [], None
    pages = ["views/overview.py", "views/failures.py", "views/layers.py", "views/image.py"]
    try:
        deadline = time.monotonic() + 240
        while writer.poll() is None and time.monotonic() < deadline:
            if not db.exists() or (progress := run_progress(db)) is None:
                time.sleep(0.1)
                continue
            seen.append(progress)
            if at is None:
                at = AppTest.from_file(APP, default_timeout=60).run()  # registers the pages
            at.switch_page(pages[len(seen) % len(pages)]).run()  # a new batch since the last render: fresh data
            assert not at.exception, at.exception[0].value
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    done = [d for _, d, _ in seen]
    assert done == sorted(done), "progress went backwards"
    expected = 24 * 21
    assert any(0 < d < expected for d in done), f"never saw the run part way: {seen[:3]}...{seen[-3:]}"
    assert any(status == "running" for status, _, _ in seen)
    assert run_progress(db) == ("complete", expected, expected)
    assert len(seen) >= 3
    at = AppTest.from_file(APP, default_timeout=60).run()  # and the finished run shows as such
    assert not at.exception and at.sidebar.selectbox[0].options == ["live (complete)"]
