"""A real dashboard server in a real headless Chromium while the store changes under it: pages load while
``python -m compute run`` writes a run, and while ``delete`` removes runs the page is showing. No page
shows an exception; the writer and the deleter end as they would alone. A page that shows one is kept as a
screenshot in test-artifacts/screenshots/concurrency/.
"""

from __future__ import annotations

import time

import pytest
from helpers import ARTIFACTS, start_cli, start_python

from compute import store
from tools.screenshots import serve, shoot
from tools.synthetic import make_coco, write_experiment

PAGES = ("overview", "failures", "image")
DELETER = """
import sys
from compute.__main__ import main
db, names = sys.argv[1], sys.argv[2:]
print("ready", flush=True)  # imports done: a delete now takes a moment
for name in names:
    sys.stdin.readline()  # the test's word that pages are loading now (at the end of its input: go on)
    assert main(["delete", name, "--db", db]) == 0
"""


def run_names(db) -> list[str]:
    with store.connect(db, read_only=True) as con:
        return [r["run"] for r in store.list_runs(con)]


def done_pairs(db, name: str) -> int:
    with store.connect(db, read_only=True) as con:
        return next((r["n_done"] for r in store.list_runs(con) if r["run"] == name), 0)


@pytest.mark.browser
@pytest.mark.slow
def test_pages_load_in_chromium_while_a_run_writes_and_while_runs_are_deleted(browser, tiny_clip, tmp_path):
    from compute.config import load_experiment
    from compute.models import load_clip
    from compute.prompts import Prompt
    from compute.rescore import rescore
    from compute.runner import run

    coco = make_coco(tmp_path / "coco", n=24)
    db = tmp_path / "busy.duckdb"
    run(load_experiment(write_experiment(tmp_path / "base.toml", tiny_clip, coco, db, name="base", sweep="singles")),
        progress=False, echo=lambda _: None)
    clip = load_clip(str(tiny_clip), "cpu")
    victims = [f"victim-{i}" for i in range(4)]
    for name in victims:
        rescore(db, "base", [Prompt("a photo of a cat", "cat"), Prompt("a photo of a dog", "dog")], name,
                progress=False, echo=lambda _: None, clip=clip)
    # 40 batches of one image: 3 s of writing alone here, twice that beside the page loads, which start as soon as
    # the run's row appears (120 images made the test wait 10 s more for a run its loads had already overlapped).
    live = write_experiment(tmp_path / "live.toml", tiny_clip, make_coco(tmp_path / "live", n=40), db, name="live",
                            batch_size=1)
    out = ARTIFACTS / "concurrency"

    tab = browser.new_page()  # every load in one tab: a new one starts a renderer (2 CPU-s here)
    with serve(db, ARTIFACTS / "streamlit-concurrency.log") as url:
        # 1. While a compute run writes the store.
        writer = start_cli("run", str(live), "--no-progress")  # a real process (forked: no new interpreter's imports)
        try:
            deadline = time.monotonic() + 240
            while "live" not in run_names(db):
                assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()[1][-2000:]
                time.sleep(0.1)
            loads_while_writing = 0
            while writer.poll() is None and not loads_while_writing:
                before = done_pairs(db, "live")
                shots = shoot(url, PAGES, out / "writing", {"run": "live", "image": "3"}, tab=tab, keep="failed")
                for shot in shots:
                    assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
                # Batches landed while these pages loaded (the run may have ended during the last ones: the
                # loop started each load while it was writing).
                loads_while_writing += done_pairs(db, "live") > before
            _, err = writer.communicate(timeout=300)
        finally:
            if writer.poll() is None:
                writer.kill()
        assert writer.returncode == 0, err[-2000:]
        assert loads_while_writing >= 1, "no page load overlapped the run's writes"

        # 2. While runs the pages show are deleted.
        deleter = start_python(DELETER, str(db), *victims, stdin=True)  # a real process, forked
        try:
            assert deleter.stdout.readline() == "ready\n", deleter.communicate()[1][-2000:]
            loads_while_deleting = 0
            k = 0
            while deleter.poll() is None and not loads_while_deleting:
                before = len(run_names(db))
                deleter.stdin.write("go\n")  # the next delete starts as these pages load
                deleter.stdin.flush()
                shots = shoot(url, PAGES, out / "deleting", {"run": victims[k % len(victims)], "image": "3"},
                              tab=tab, keep="failed")
                for shot in shots:
                    assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
                loads_while_deleting += len(run_names(db)) < before  # runs vanished while these pages loaded
                k += 1
            _, err = deleter.communicate(timeout=120)
        finally:
            if deleter.poll() is None:
                deleter.kill()
        assert deleter.returncode == 0, err[-2000:]
        assert loads_while_deleting >= 1, "no page load overlapped the deletes"
        assert sorted(run_names(db)) == ["base", "live"]
        # a link to a deleted run
        for shot in shoot(url, PAGES, out / "after", {"run": victims[0], "image": "3"}, tab=tab, keep="failed"):
            assert not shot.exceptions, f"{shot.url}: {shot.exceptions[0]}"
    tab.close()
