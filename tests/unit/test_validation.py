"""The validation pass, the store-path checks and the run lock on small inputs: the boundaries of each
check (what passes just inside, what fails just outside), which the command-line cases of
tests/integration/test_hardening.py do not reach one by one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from compute import store
from compute.ablations import MAX_INDEX, parse_ablation
from compute.dataset import ImageLoadError, ImageRecord, inside_path, uncarried_labels
from compute.errors import InputError, StoreError
from compute.runlock import lock_path, run_lock
from compute.validation import (
    MAX_ID,
    check_coco,
    check_count,
    check_file_name,
    check_id,
    load_json,
    read_text,
)


@pytest.mark.parametrize("value", [0, 1, MAX_ID])
def test_ids_inside_the_64_bit_range_pass(value):
    assert check_id(value, "x") == value


@pytest.mark.parametrize("value, message", [
    (MAX_ID + 1, "from 0 to 2^63-1, got 9223372036854775808"),
    (-1, "got -1"),
    (10**29, "got 100000000000000000000000000000"),
    (10**100, "got a 101-digit number"),
    (1.0, "got 1.0 (a float)"),
    (float("inf"), "got inf (not a number)"),
    ("1", "got '1' (a string)"),
    (None, "got None (null)"),
    (False, "got False (a boolean)"),
    ([1], "got [1] (a list)"),
])
def test_ids_outside_it_or_of_another_type_fail(value, message):
    with pytest.raises(InputError, match="^where must be an integer") as info:
        check_id(value, "where")
    assert message in str(info.value)


@pytest.mark.parametrize("name, ok", [("a.jpg", True), ("sub/dir/a.jpg", True), ("../../x.jpg", True),
                                      ("/abs/x.jpg", True), ("é 漢字.jpg", True), ("", False), ("  ", False),
                                      ("a\x00b", False), ("\udcff.jpg", False), ("x" * 5000, False)])
def test_file_names_are_checked_for_what_a_file_system_refuses_not_for_where_they_point(name, ok):
    if ok:
        assert check_file_name(name, "f") == name
    else:
        with pytest.raises(InputError):
            check_file_name(name, "f")


def test_a_minimal_instances_file_and_a_captions_file_pass(tmp_path):
    instances = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                 "categories": [{"id": 7, "name": "cat", "supercategory": "animal"}],
                 "annotations": [{"id": 1, "image_id": 2, "category_id": 7}]}
    captions = {"images": instances["images"], "annotations": [{"id": 5, "image_id": 1, "caption": "a cat"}]}
    check_coco(instances, tmp_path / "i.json", "annotations")
    check_coco(captions, tmp_path / "c.json", "captions")
    check_coco({"images": []}, tmp_path / "empty.json", "annotations")  # nothing selected is a later error


def test_an_instances_annotation_needs_a_category(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1}]}
    with pytest.raises(InputError, match=r"annotations\[0\] has neither a 'category_id'"):
        check_coco(doc, tmp_path / "i.json", "annotations")


def test_text_files_must_be_utf8_and_json_must_parse(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "chat noir ✓"}), encoding="utf-8")
    assert load_json(good, "annotations") == {"name": "chat noir ✓"}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(InputError, match=r"is not UTF-8 text: byte 0xff at line 2 \(offset 14\)"):
        read_text(bad, "experiment")
    with pytest.raises(InputError, match="experiment file not found"):
        read_text(tmp_path / "missing.toml", "experiment")


@pytest.mark.parametrize("what", ["a folder", "a character device", "a FIFO", "a missing file", "below a file"])
def test_a_path_that_is_no_regular_file_is_named_for_what_it_is_and_never_read(tmp_path, what):
    """/dev/zero, a folder or a FIFO given as an experiment or prompts file: one line saying what it is (not
    "not found"), returned at once (a FIFO is never waited on)."""
    (tmp_path / "file.toml").write_text("x = 1\n")
    path = {"a folder": tmp_path, "a character device": Path("/dev/zero"), "a FIFO": tmp_path / "fifo",
            "a missing file": tmp_path / "missing.toml", "below a file": tmp_path / "file.toml" / "x.toml"}[what]
    if what == "a FIFO":
        os.mkfifo(path)
    line = f"prompts file {path} is not a regular file ({what})" if what.startswith("a ") and what != "a missing file" \
        else f"prompts file not found: {path}"
    with pytest.raises(InputError) as e:
        read_text(path, "prompts")
    assert str(e.value) == line


def test_sizes_have_a_ceiling():
    assert check_count(64, "n", 64, "why") == 64
    with pytest.raises(InputError, match="n = 65 is too large: at most 64 \\(why\\)"):
        check_count(65, "n", 64, "why")
    with pytest.raises(InputError, match="positive integer, got True"):
        check_count(True, "n", 64, "why")


def test_layer_and_head_numbers_are_bounded_before_a_range_is_expanded():
    assert parse_ablation(f"zero:1-{MAX_INDEX}").layers == tuple(range(1, MAX_INDEX + 1))
    assert parse_ablation("identity:007").label == "identity:7"  # leading zeros are still small numbers
    for text in (f"zero:{MAX_INDEX + 1}", "zero:1-1" + "0" * 30, "zero:" + "9" * 5000 + "-1",
                 "identity:1/h0-" + "7" * 5000):  # 5000 digits: more than int() converts
        with pytest.raises(InputError, match="is out of range"):
            parse_ablation(text)


def test_inside_the_images_folder_means_after_following_links(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    (root / "in.jpg").symlink_to(root / "a.jpg")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    assert inside_path(root / "in.jpg", root) == root / "a.jpg"
    assert inside_path(root / "sub" / ".." / "a.jpg", root) == root / "a.jpg"
    for name in ("out.jpg", "../secret.jpg", str(tmp_path / "secret.jpg")):
        with pytest.raises(ImageLoadError, match="resolves outside the images folder"):
            inside_path(root / name, root)
    with pytest.raises(ImageLoadError):
        inside_path(root / "loop.jpg", root)
    rec = ImageRecord(1, "out.jpg", root / "out.jpg", (), root)
    assert rec.stored_path == ""  # the store lists no path for it
    assert ImageRecord(2, "a.jpg", root / "a.jpg", (), root).stored_path == str(root / "a.jpg")


def test_labels_no_selected_image_carries():
    recs = [ImageRecord(1, "a", None, ("cat",)), ImageRecord(2, "b", None, ("cat", "dog"))]
    assert uncarried_labels(recs, ["dog", "car", "cat", "car", "bird"]) == ["car", "bird"]


def test_store_kinds_are_told_apart(tmp_path):
    fresh = tmp_path / "fresh.duckdb"
    with duckdb.connect(str(fresh)) as con:
        assert store.identify(con).kind == "empty"
        store.ensure_schema(con, fresh)
        assert (store.identify(con).kind, store.identify(con).version) == ("ours", store.SCHEMA_VERSION)
        con.execute(f"UPDATE {store.MARKER} SET value = 'Another App' WHERE key = 'application'")
        assert store.identify(con).kind == "foreign"
        with pytest.raises(StoreError, match="another application"):
            store.ensure_schema(con, fresh)


def test_store_paths_are_checked_before_anything_opens_them(tmp_path):
    store.check_path(tmp_path / "new" / "deeper" / "s.duckdb", write=True)  # folders made later
    with pytest.raises(StoreError, match="no store at"):
        store.check_path(tmp_path / "missing.duckdb", write=False)
    with pytest.raises(StoreError, match="is a directory"):
        store.check_path(tmp_path, write=False)
    fifo = tmp_path / "pipe.duckdb"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="is not a regular file"):
        store.check_path(fifo, write=True)
    assert not (tmp_path / "new").exists()


def test_io_causes_are_recognised_and_others_are_not():
    assert store.io_cause(OSError(28, "No space left on device")) == "no space left on device"
    assert store.io_cause(duckdb.TransactionException(
        'Failed to commit: Could not write file "x.wal": No space left on device')) == "no space left on device"
    assert store.io_cause(FileNotFoundError(2, "No such file or directory")) is None
    assert store.io_cause(duckdb.ConstraintException("Duplicate key")) is None


def test_a_run_lock_is_one_holder_at_a_time(tmp_path):
    db = tmp_path / "s.duckdb"
    with run_lock(db, "a", echo=lambda _: None):
        assert lock_path(db, "a").read_text() == str(os.getpid())
        with pytest.raises(StoreError, match=f"run 'a' is being written by process {os.getpid()}"), \
                run_lock(db, "a", wait=False):
            pass
        with run_lock(db, "b", wait=False):  # another run of the same store is free
            pass
    assert not lock_path(db, "a").exists()
    with run_lock(db, "a", wait=False):  # free again
        pass
