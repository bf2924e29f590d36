"""The dashboard keeps working while ``python -m compute run`` writes to the same store.

A real compute process commits batch after batch (each an open -> write -> close transaction) while the
dashboard renders pages and reads the run's progress through its own query functions: no lock error, no
exception on a page, progress that only grows and is seen part way, and a run that still completes. And,
deterministically, what a writer committing in the middle of a render does: the render starts over, so a
page never draws two states of the store at once.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time

import pytest
from helpers import APP, DASH_ABLATIONS, start_cli, start_python
from streamlit.testing.v1 import AppTest

from analysis import queries
from compute import store
from compute.store import DB_ENV
from compute.writer import BatchWriter
from dashboard.context import progress
from dashboard.pages import page_info
from tools.synthetic import make_coco, write_experiment

N_LIVE = 16

# A render that reads the runs, lets a writer in (as layout.chart does before drawing), then reads each run's
# ablations. The first time, a run is deleted in between: read as they come, the two reads would disagree
# (a listed run without ablations).
MID_RENDER_WRITE = """
from pathlib import Path

import streamlit as st

from analysis import queries
from compute import store
from dashboard import reading

db = Path({db!r})
st.session_state["renders"] = st.session_state.get("renders", 0) + 1
with reading.render(db):
    runs = reading.load(queries.runs)
    reading.release()
    if not st.session_state.get("written"):
        st.session_state["written"] = True
        with store.connect(db) as con:
            store.delete_run(con, store.find_run(con, "tiny-singles").run_id)
    counts = [len(reading.load(queries.ablations, int(i))) for i in runs["run_id"]]
    st.text(repr((list(runs["run"]), counts)))
"""


def run_progress(db) -> tuple[str, int, int] | None:
    """(status, pairs done, pairs expected) as the sidebar computes it, or None before the run exists."""
    with store.connect(db, read_only=True) as con:
        runs = queries.runs(con)
    if runs.empty:
        return None
    run = runs.iloc[0].to_dict()
    return (run["status"], *progress(run))


def test_a_commit_in_the_middle_of_a_render_starts_it_over_on_the_new_state(dash_store, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(dash_store, db)
    at = AppTest.from_string(MID_RENDER_WRITE.format(db=str(db)), default_timeout=60).run()
    assert not at.exception, at.exception[0].value
    assert at.session_state["renders"] == 2  # the first render found the store changed and started over
    (shown,) = [t.value for t in at.text]
    assert shown == repr((["tiny"], [DASH_ABLATIONS]))  # one state: the run deleted, the other whole
    at.run()  # nothing changed since: one render, from the cache
    assert at.session_state["renders"] == 3 and [t.value for t in at.text] == [shown]


def pace_the_writer() -> None:
    """In the run's process: its store writer, after each session (the file closed: readers' turn), waits for
    a line on stdin before the next, so the test's renders land between commits on a machine of any speed."""
    session = BatchWriter._session

    def paced(self: BatchWriter, item: object) -> object:
        following = session(self, item)
        sys.stdin.readline()  # "" at the end of the input (the test gone): no wait
        return following

    BatchWriter._session = paced


@pytest.mark.slow
def test_pages_render_while_a_compute_run_writes_the_store(tiny_clip, tmp_path, monkeypatch):
    # 16 batches of one; the writer commits at most four per session (compute.writer): four sessions or more,
    # and a render between each two
    coco = make_coco(tmp_path / "coco", n=N_LIVE)
    db = tmp_path / "live.duckdb"
    exp = write_experiment(tmp_path / "live.toml", tiny_clip, coco, db, name="live", batch_size=1)
    # a real process (forked: no new interpreter's imports)
    writer = start_cli("run", str(exp), "--no-progress", stdin=True, setup=pace_the_writer)
    monkeypatch.setenv(DB_ENV, str(db))
    seen, at = [], None
    pages = [page_info(k).path for k in ("overview", "failures", "layers", "image")]
    try:
        deadline = time.monotonic() + 240
        while writer.poll() is None and time.monotonic() < deadline:
            if not db.exists() or (progress := run_progress(db)) is None or seen[-1:] == [progress]:
                time.sleep(0.05)
                continue
            seen.append(progress)
            if at is None:
                at = AppTest.from_file(APP, default_timeout=60).run()  # registers the pages
            at.switch_page(pages[len(seen) % len(pages)]).run()  # a new state since the last render: fresh data
            assert not at.exception, at.exception[0].value
            with contextlib.suppress(BrokenPipeError):  # the run may have ended since
                writer.stdin.write("\n")  # the writer's next session
                writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    done = [d for _, d, _ in seen]
    assert done == sorted(done), "progress went backwards"
    expected = N_LIVE * 21
    assert sum(0 < d < expected for d in done) >= 2, f"not seen part way twice: {seen}"
    assert any(status == "running" for status, _, _ in seen)
    assert run_progress(db) == ("complete", expected, expected)
    assert len(seen) >= 3, seen  # rendered at three states of the store or more
    at = AppTest.from_file(APP, default_timeout=60).run()  # and the finished run shows as such
    assert not at.exception and at.sidebar.selectbox[0].options == ["live (complete)"]


DELETER = """
import sys
from compute.__main__ import main
db, names = sys.argv[1], sys.argv[2:]
for name in names:
    sys.stdin.readline()  # the test's word that a page renders now (at the end of its input: go on)
    assert main(["delete", name, "--db", db]) == 0
"""


@pytest.mark.slow
def test_pages_render_while_runs_are_deleted_from_the_store(tiny_clip, tmp_path, monkeypatch):
    from compute.config import load_experiment
    from compute.models import load_clip
    from compute.prompts import Prompt
    from compute.rescore import rescore
    from compute.runner import run

    coco = make_coco(tmp_path / "coco", n=10)
    db = tmp_path / "shrinking.duckdb"
    run(load_experiment(write_experiment(tmp_path / "keep.toml", tiny_clip, coco, db, name="keep")), progress=False,
        echo=lambda _: None)
    clip = load_clip(str(tiny_clip), "cpu")
    victims = [f"victim-{i}" for i in range(6)]
    for name in victims:  # runs that come and go: rescored from "keep" (they read its embeddings)
        rescore(db, "keep", [Prompt("a photo of a cat", "cat"), Prompt("a photo of a dog", "dog")], name,
                progress=False, echo=lambda _: None, clip=clip)
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception[0].value
    deleter = start_python(DELETER, str(db), *victims, stdin=True)  # a real process, forked
    pages = [page_info(k).path for k in ("overview", "failures", "layers", "image", "compare")]
    renders = 0
    try:
        deadline = time.monotonic() + 240
        while deleter.poll() is None and time.monotonic() < deadline:
            # The page asks for a run that is being deleted, or is already gone: it must still render.
            with contextlib.suppress(BrokenPipeError):  # the last delete may have ended the deleter
                deleter.stdin.write("go\n")  # the next delete starts as this page renders
                deleter.stdin.flush()
            at.query_params["run"] = victims[renders % len(victims)]
            at.switch_page(pages[renders % len(pages)]).run()
            assert not at.exception, at.exception[0].value
            renders += 1
        out, err = deleter.communicate(timeout=120)
    finally:
        if deleter.poll() is None:
            deleter.kill()
    assert deleter.returncode == 0, err[-2000:]
    assert renders >= 3, "the pages were not read while the runs were deleted"
    with store.connect(db, read_only=True) as con:
        assert list(queries.runs(con)["run"]) == ["keep"]
    at.query_params["run"] = victims[0]  # a link to a deleted run opens the remaining one
    at.switch_page(page_info("overview").path).run()
    assert not at.exception and at.sidebar.selectbox[0].value == "keep"
