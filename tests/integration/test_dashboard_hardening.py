"""The dashboard on hostile files, in AppTest: a store that is not one of this tool's, or is damaged, shows one
error naming the store and what is wrong, in the words of the command line's one line, and no exception; and
an image path the store lists that is a FIFO, a pixel bomb or a transparent image gives a placeholder saying
why (or the picture composited on white) on the Failures grid and the Image page, without hanging.

Each store case is a copy of the dashboard tests' store (conftest.dash_store) changed as test_hardening's
STORE_DAMAGE cases change theirs (every verb of the command line is checked against the same cases there),
plus a store written by a newer schema. The page must leave the file byte-identical: the dashboard only reads.
Real-Chromium counterpart: tests/browser/test_browser_hardening.py. At the end, the screenshots command
(tools/screenshots.py) on what it cannot shoot: one line, exit 2, before a server or a browser starts.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers import APP, STORE_DAMAGE, newer_schema, sql
from PIL import Image
from streamlit.testing.v1 import AppTest

from analysis.text import md
from compute.__main__ import main
from compute.store import DB_ENV
from dashboard import thumbnails
from dashboard.pages import DEFAULT, page_info


def _newer_in_place(db: Path) -> None:
    db.unlink()  # the copy of the dashboard store goes: a fresh store marked with a newer schema
    newer_schema(db)


BAD_STORES: dict[str, tuple[Callable[[Path], None], str]] = {
    **STORE_DAMAGE,
    "written by a newer schema": (_newer_in_place, "written by a newer version of CLIP Attention Lab"),
}
TIMEOUT_S = 60  # per script run (a read blocked on a FIFO is let go by FifoWatch: AppTest's timeout cannot)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_line(db: Path, capsys) -> str:
    """What ``python -m compute list --db DB`` says of the store, without its ``error: ``."""
    capsys.readouterr()
    assert main(["list", "--db", str(db)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), line
    return line.removeprefix("error: ")


def open_app(db: Path, monkeypatch, page: str = DEFAULT, **params: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params.update(params)
    at.run()
    if page != DEFAULT:
        at.switch_page(page_info(page).path).run()
    return at


def assert_one_error(at: AppTest, db: Path, line: str, fragment: str) -> None:
    """The page shows the command line's line (escaped as data), once, and nothing raised. Of a file cut short,
    the first missing block a read meets depends on what it reads: its offset may differ from the line's."""
    assert not at.exception, at.exception[0].value
    assert [_any_block(e.value) for e in at.error] == [_any_block(md(line))]
    assert str(db) in line and fragment in line, line


def _any_block(text: str) -> str:
    return re.sub(r"go on to byte [\\,0-9]+ or further", "go on to byte N or further", text)


# --------------------------------------------------------------------------------------------------
# Stores that are not stores, or damaged.


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_a_bad_store_is_one_error_naming_it_and_no_exception(dash_store, tmp_path, case, monkeypatch, capsys):
    db = tmp_path / "store.duckdb"
    shutil.copy(dash_store, db)
    make, fragment = BAD_STORES[case]
    make(db)
    before = _digest(db)
    line = cli_line(db, capsys)
    for page in ("overview", "failures", "image"):
        assert_one_error(open_app(db, monkeypatch, page), db, line, fragment)
    assert _digest(db) == before and not Path(f"{db}.wal").exists()  # read, never written


@pytest.mark.parametrize("case", ["a changed block of data", "a changed database header", "cut in half",
                                  "random bytes"])
def test_a_store_damaged_while_the_app_runs_shows_the_error_on_the_next_run(dash_store, tmp_path, case,
                                                                            monkeypatch, capsys):
    db = tmp_path / "store.duckdb"
    shutil.copy(dash_store, db)
    at = open_app(db, monkeypatch, "overview", run="tiny")
    assert not at.exception and not at.error and at.title[0].value == "Overview"
    make, fragment = BAD_STORES[case]
    make(db)
    line = cli_line(db, capsys)
    at.run()
    assert_one_error(at, db, line, fragment)


# --------------------------------------------------------------------------------------------------
# Image files the store lists: a FIFO, a pixel bomb, a transparent PNG.

KINDS = ("fifo", "bomb", "clear")  # image_id % 3 -> what its listed path holds
PHOTO_PX = 280  # dashboard/views/image.py's photo
REASONS = {"fifo": "not a regular file", "bomb": "too many pixels"}


class FifoWatch:
    """Counts the reads that open ``fifo`` and ends each at once (opens the FIFO for writing, then closes it):
    a page that would block on it is caught and let go, so a regression fails the test instead of hanging it
    (AppTest's timeout waits for the script's thread)."""

    def __init__(self, fifo: Path) -> None:
        self.fifo, self.readers = fifo, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader has it open
                    continue
                raise
            self.readers += 1
            os.close(fd)  # the reader sees the end of the file

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Hostile:
    db: Path
    kinds: dict[int, str]  # what each image's listed path holds
    fifo: FifoWatch


@pytest.fixture
def hostile_store(dash_store, tmp_path) -> Iterator[Hostile]:
    """A copy of the dashboard store whose images (both runs) are listed at a FIFO, a 12000 x 12000 PNG of 144
    KB and a fully transparent red RGBA PNG (white once composited, red if its alpha were dropped)."""
    files = tmp_path / "files"
    files.mkdir()
    os.mkfifo(files / "fifo.jpg")
    Image.new("L", (12000, 12000)).save(files / "bomb.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(files / "clear.png")
    assert (files / "bomb.png").stat().st_size < 300_000
    paths = {"fifo": files / "fifo.jpg", "bomb": files / "bomb.png", "clear": files / "clear.png"}
    db = tmp_path / "hostile.duckdb"
    shutil.copy(dash_store, db)
    with duckdb.connect(str(db)) as con:
        ids = [i for (i,) in con.execute("SELECT DISTINCT image_id FROM image_t").fetchall()]
        kinds = {int(i): KINDS[i % 3] for i in ids}
        con.executemany("UPDATE image_t SET path = ? WHERE image_id = ?", [[str(paths[k]), i] for i, k in kinds.items()])
    watch = FifoWatch(paths["fifo"])
    try:
        yield Hostile(db, kinds, watch)
    finally:
        watch.close()


@pytest.fixture
def drawn(monkeypatch) -> dict[int, bytes]:
    """The thumbnail bytes each page hands st.image, by image id (pages call dashboard.thumbnails.thumbnail)."""
    seen: dict[int, bytes] = {}
    real = thumbnails.thumbnail

    def spy(run_id: int, image_id: int, size: int = thumbnails.THUMB_PX) -> bytes:
        seen[int(image_id)] = out = real(run_id, image_id, size)
        return out

    monkeypatch.setattr(thumbnails, "thumbnail", spy)
    return seen


def plain(text: str) -> str:
    """Markdown escaped by analysis.text.md, as the text it shows."""
    return re.sub(r"\\(.)", r"\1", text)


def assert_drawn_as(jpeg: bytes, kind: str, size: int) -> None:
    if kind in REASONS:
        assert jpeg == thumbnails._placeholder_jpeg(size, REASONS[kind])
        return
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)  # (h, w, 3)
    assert pixels.min() >= 245, f"transparency not composited onto white: min {pixels.min(axis=(0, 1))}"


def test_failures_grid_draws_a_placeholder_for_a_fifo_and_a_bomb_and_transparency_on_white(hostile_store, drawn,
                                                                                          monkeypatch):
    db, kinds = hostile_store.db, hostile_store.kinds
    at = open_app(db, monkeypatch, "failures", run="tiny", ablation="identity:1", outcome="wrong")
    assert hostile_store.fifo.readers == 0, "the page opened the FIFO to read it (it would have hung)"
    assert not at.exception, at.exception[0].value
    wrong = sql(db, "SELECT image_id FROM selections WHERE run = 'tiny' AND ablation = 'identity:1' AND NOT correct")
    assert len(at.image) == len(drawn) == len(wrong) and set(drawn) == {i for (i,) in wrong}
    assert {kinds[i] for i in drawn} == set(KINDS)
    for image_id, jpeg in drawn.items():
        assert_drawn_as(jpeg, kinds[image_id], thumbnails.THUMB_PX)


@pytest.mark.parametrize("kind", KINDS)
def test_image_page_of_a_fifo_a_bomb_or_a_transparent_image(hostile_store, drawn, kind, monkeypatch):
    db, kinds = hostile_store.db, hostile_store.kinds
    image_id = next(i for i, k in sorted(kinds.items()) if k == kind and i != 4)
    at = open_app(db, monkeypatch, "image", run="tiny", image=str(image_id), ablation="identity:1")
    assert hostile_store.fifo.readers == 0, "the page opened the FIFO to read it (it would have hung)"
    assert not at.exception, at.exception[0].value
    assert list(drawn) == [image_id]
    assert_drawn_as(drawn[image_id], kind, PHOTO_PX)
    warnings = [w.value for w in at.warning if w.value.startswith("No attention maps")]
    maps = len(at.get("vega_lite_chart")) - 2  # after the logit heatmap and bars: one chart per layer
    assert len(at.image) == 1  # the photo
    if kind == "clear":
        assert not warnings and maps == 12
    else:
        assert len(warnings) == 1 and maps == 0, warnings
        assert {"fifo": "is not a regular file (a FIFO)", "bomb": "is 144,000,000 pixels"}[kind] in plain(warnings[0])


def test_thumbnails_decode_through_compute_dataset_only(tmp_path):
    """The thumbnail is compute.dataset's decoding (regular files only, MAX_PIXELS, to_rgb) at reduced scale."""
    os.mkfifo(tmp_path / "fifo.jpg")
    Image.new("LA", (40, 20), (0, 0)).save(tmp_path / "la.png")  # black, fully transparent: white
    Image.new("RGB", (320, 160), (10, 200, 30)).save(tmp_path / "big.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    watch = FifoWatch(tmp_path / "fifo.jpg")
    try:
        assert thumbnails._thumbnail(str(tmp_path / "fifo.jpg"), 96) == thumbnails._placeholder_jpeg(96, "not a regular file")
    finally:
        watch.close()
    assert watch.readers == 0
    assert thumbnails._thumbnail(str(tmp_path / "gone.jpg"), 96) == thumbnails._placeholder_jpeg(96, "image not found")
    assert thumbnails._thumbnail(str(tmp_path / "text.jpg"), 96) == thumbnails._placeholder_jpeg(96, "unreadable image")
    assert thumbnails._thumbnail(str(tmp_path), 96) == thumbnails._placeholder_jpeg(96, "not a regular file")
    la = Image.open(io.BytesIO(thumbnails._thumbnail(str(tmp_path / "la.png"), 96)))
    assert la.size == (40, 20) and np.asarray(la).min() >= 245
    big = Image.open(io.BytesIO(thumbnails._thumbnail(str(tmp_path / "big.jpg"), 96)))
    assert big.size == (96, 48)
    assert np.abs(np.asarray(big).astype(int) - (10, 200, 30)).max() <= 12


# --------------------------------------------------------------------------------------------------
# The screenshots command.

@pytest.mark.parametrize(("argv", "line"), [
    (["--width", "0"], "error: --width must be between 320 and 7680 pixels, got 0"),
    (["--width", "99999999"], "error: --width must be between 320 and 7680 pixels, got 99999999"),
    (["--pages", " , "], "error: --pages names no page: choose from overview, layers,"),
    (["--pages", "overview,nope"], "error: unknown page 'nope': choose from overview, layers,"),
    (["--param", "image"], "error: --param 'image' is not KEY=VALUE (e.g. image=12"),
    (["--param", "=3"], "error: --param '=3' is not KEY=VALUE"),
    (["--run", "nope"], "error: no run named 'nope' in {db} (runs: tiny-heads)"),
    (["--db", "{folder}"], "error: no store at {folder}"),
    (["--db", "{text}"], "error: store {text} is not a DuckDB file"),
])
def test_the_screenshots_command_refuses_what_it_cannot_shoot_in_one_line(heads_store, tmp_path, capsys, argv, line):
    from tools import screenshots

    (tmp_path / "notes.txt").write_text("not a store\n")
    fill = {"db": heads_store, "folder": tmp_path, "text": tmp_path / "notes.txt"}
    out = tmp_path / "shots"
    code = screenshots.main(["--db", str(heads_store), "--out", str(out), *[a.format(**fill) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(line.format(**fill)) and err.count("\n") == 1, err
    assert not out.exists()  # nothing written (and no page shot: the folder would exist)
