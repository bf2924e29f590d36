"""``python -m compute fetch coco`` against a COCO-shaped tree served on 127.0.0.1."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from coco_server import ARCHIVE, IMAGES, CocoServer, CocoTree, build_coco_tree, file_name, ids_with
from PIL import Image
from pycocotools.coco import COCO

from compute import download
from compute.errors import InputError
from compute.fetch import add_arguments, fetch_coco, main, select_images

CATS = ids_with("cat")  # 101-105
ALL = set(IMAGES)


@pytest.fixture(autouse=True)
def _fast_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)  # retries still happen, without the waits
    for name in ("no_proxy", "NO_PROXY"):  # a proxy set in the environment must not see 127.0.0.1
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def tree(tmp_path: Path) -> CocoTree:
    return build_coco_tree(tmp_path / "server")


@pytest.fixture
def server(tree: CocoTree) -> Iterator[CocoServer]:
    with CocoServer(tree.root) as running:
        yield running


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "data" / "coco"


def rel(image_id: int) -> str:
    return f"val2017/{file_name(image_id)}"


def image_ids(out: Path) -> set[int]:
    return {int(path.stem) for path in (out / "val2017").glob("*.jpg")}


def all_files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*")) if root.exists() else []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute fetch")
    add_arguments(parser)
    return main(parser.parse_args(argv))


def test_complete_fetch_with_category_filter(tree: CocoTree, server: CocoServer, out: Path) -> None:
    result = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)

    assert (result.selected, result.fetched, result.present, result.failed) == (5, 5, 0, [])
    assert image_ids(out) == CATS
    for image_id in CATS:
        assert (out / rel(image_id)).read_bytes() == tree.jpegs[rel(image_id)]
    # Only the two needed members are extracted; the decoys stay in the cached archive.
    assert all_files(out / "annotations") == ["captions_val2017.json", "instances_val2017.json"]
    assert (out / ".cache" / "annotations_trainval2017.zip").read_bytes() == tree.archive_bytes
    assert not [path for path in all_files(out) if path.endswith(".part")]

    instances = COCO(str(out / "annotations/instances_val2017.json"))
    assert set(instances.getImgIds(catIds=instances.getCatIds(catNms=["cat"]))) == CATS
    captions = COCO(str(out / "annotations/captions_val2017.json"))
    assert captions.imgToAnns[101][0]["caption"].startswith("A black cat")

    manifest = json.loads((out / "fetch_manifest.json").read_text())
    assert manifest["split"] == "val2017" and manifest["count"] == 5
    assert manifest["selection"] == {"categories": ["cat"], "caption_contains": None, "limit": None}
    assert set(manifest["files"]) == {rel(i) for i in CATS}
    entry = manifest["files"][rel(101)]
    assert entry["sha256"] == hashlib.sha256(tree.jpegs[rel(101)]).hexdigest()
    assert entry["size"] == len(tree.jpegs[rel(101)])

    # One request each: the archive once, only the selected images.
    assert server.log.requests == {ARCHIVE: 1, **{rel(i): 1 for i in CATS}}

    # Running again downloads nothing; without the extracted JSONs it re-extracts from the cache.
    for path in (out / "annotations").glob("*.json"):
        path.unlink()
    again = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    assert (again.fetched, again.present, again.failed) == (0, 5, [])
    assert server.log.requests[ARCHIVE] == 1
    assert sum(server.log.requests.values()) == 6


@pytest.mark.parametrize(
    ("categories", "phrase", "limit", "expected"),
    [
        (None, None, None, ALL),
        (["cat"], None, None, CATS),
        (["Dog", "bird"], None, None, ids_with("dog") | ids_with("bird")),
        # whole phrase, any case and spacing: not "black catalog" (103) nor "black cats" (105)
        (None, "black cat", None, {101, 102, 106}),
        (None, "BLACK  Cat", None, {101, 102, 106}),
        (["cat"], "black cat", None, {101, 102}),
        (["dog"], None, 2, {104, 106}),
        (None, None, 3, {101, 102, 103}),
    ],
)
def test_select_images(
    tree: CocoTree, categories: list[str] | None, phrase: str | None, limit: int | None, expected: set[int]
) -> None:
    selected = select_images(tree.instances, tree.captions, categories, phrase, limit)
    assert [image["id"] for image in selected] == sorted(expected)


def test_caption_filter_fetch(server: CocoServer, out: Path) -> None:
    result = fetch_coco(out, caption_contains="black cat", base_url=server.url, workers=2, verbose=False)
    assert (result.fetched, result.failed) == (3, [])
    assert image_ids(out) == {101, 102, 106}


def test_cli_fetch_and_summary(server: CocoServer, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "coco",
        "--split",
        "val2017",
        "--categories",
        "cat, dog",
        "--out",
        str(out),
        "--base-url",
        server.url,
    ]
    assert run_cli([*argv, "--workers", "4"]) == 0
    assert image_ids(out) == CATS | ids_with("dog")
    assert "fetched 9, already present 0, failed 0" in capsys.readouterr().out

    assert run_cli(argv) == 0
    assert "fetched 0, already present 9, failed 0" in capsys.readouterr().out


def test_interrupted_then_resumed(tree: CocoTree, server: CocoServer, out: Path) -> None:
    # The link dies after 3 whole images: every later image response is cut half way.
    server.images_before_drop = 3
    code = run_cli(["coco", "--out", str(out), "--base-url", server.url, "--workers", "4"])
    assert code == 1
    first = image_ids(out)
    assert len(first) == 3
    for image_id in first:  # what is there under a final name is whole
        assert (out / rel(image_id)).read_bytes() == tree.jpegs[rel(image_id)]
    assert not [path for path in all_files(out) if path.endswith(".part")]
    manifest = json.loads((out / "fetch_manifest.json").read_text())
    assert set(manifest["files"]) == {rel(i) for i in first} and len(manifest["failed"]) == 9

    server.images_before_drop = None
    before = server.log.requests.copy()
    result = fetch_coco(out, base_url=server.url, verbose=False)
    assert (result.fetched, result.present, result.failed) == (9, 3, [])
    assert image_ids(out) == ALL
    for image_id in ALL:
        assert (out / rel(image_id)).read_bytes() == tree.jpegs[rel(image_id)]
    new_requests = server.log.requests - before
    assert set(new_requests) == {rel(i) for i in ALL - first}  # only what was missing, archive not again
    assert all(count == 1 for count in new_requests.values())


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_archive_download_resumes(tree: CocoTree, server: CocoServer, out: Path, ranges: bool) -> None:
    server.ranges = ranges
    server.truncate = {ARCHIVE}  # every archive response is cut half way
    with pytest.raises(
        InputError, match="cannot download .*annotations_trainval2017.zip.*run again to resume"
    ):
        fetch_coco(out, base_url=server.url, verbose=False)
    part = out / ".cache" / "annotations_trainval2017.zip.part"
    assert all_files(out) == [".cache", ".cache/annotations_trainval2017.zip.part"]
    assert server.log.requests[ARCHIVE] == download.TRIES
    part_size = part.stat().st_size
    assert 0 < part_size < len(tree.archive_bytes)
    if ranges:  # each retry continued where the last stopped: 1/2, then 3/4, then 7/8 of the file
        assert part_size > len(tree.archive_bytes) * 0.8

    server.truncate = set()
    first_run = len(server.log.served)
    result = fetch_coco(out, categories=["bird"], base_url=server.url, verbose=False)
    assert (result.fetched, result.failed) == (len(ids_with("bird")), [])
    assert (out / ".cache" / "annotations_trainval2017.zip").read_bytes() == tree.archive_bytes
    assert not part.exists()
    [(start, sent)] = [
        (start, sent) for path, start, sent, _ in server.log.served[first_run:] if path == ARCHIVE
    ]
    if ranges:
        assert (start, sent) == (part_size, len(tree.archive_bytes) - part_size)
        assert server.log.bytes_sent(ARCHIVE) == len(tree.archive_bytes)  # over both runs, no byte twice
    else:
        assert (start, sent) == (0, len(tree.archive_bytes))


def test_cut_image_is_never_left_under_its_final_name(server: CocoServer, out: Path) -> None:
    server.truncate = {rel(103)}
    result = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    assert (result.fetched, result.present) == (4, 0)
    assert [path for path, _ in result.failed] == [rel(103)]
    assert "connection closed after" in result.failed[0][1]
    assert server.log.requests[rel(103)] == download.TRIES
    assert image_ids(out) == CATS - {103}
    assert not [path for path in all_files(out) if path.endswith(".part")]


def test_missing_image_fails_at_once(tree: CocoTree, server: CocoServer, out: Path) -> None:
    (tree.root / rel(105)).unlink()  # a 404 is no transient error: one request, no retries
    result = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    assert result.failed == [(rel(105), "HTTP 404 Not Found")]
    assert server.log.requests[rel(105)] == 1
    assert image_ids(out) == CATS - {105}


def test_a_failure_a_rerun_cannot_fix_is_not_told_to_rerun(
    tree: CocoTree, server: CocoServer, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree.root / rel(105)).unlink()  # a 404: the same request gets the same answer
    assert run_cli(["coco", "--categories", "cat", "--out", str(out), "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert f"failed: {rel(105)}: HTTP 404 Not Found" in err
    assert "run the same command again" not in err and "running again will not fetch them" in err


def test_corrupted_local_files_are_refetched(tree: CocoTree, server: CocoServer, out: Path) -> None:
    fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    (out / rel(101)).write_bytes(b"this is not a jpeg")
    whole = tree.jpegs[rel(102)]
    (out / rel(102)).write_bytes(whole[: len(whole) // 2])
    # A valid JPEG of the right size but other pixels: only the manifest's checksum can tell.
    size = Image.open(io.BytesIO(tree.jpegs[rel(103)])).size
    other = io.BytesIO()
    Image.new("RGB", size, "red").save(other, "JPEG")
    (out / rel(103)).write_bytes(other.getvalue())

    result = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    assert (result.fetched, result.present, result.failed) == (3, 2, [])
    for image_id in CATS:
        assert (out / rel(image_id)).read_bytes() == tree.jpegs[rel(image_id)]
    assert {i: server.log.requests[rel(i)] for i in CATS} == {101: 2, 102: 2, 103: 2, 104: 1, 105: 1}

    # Without a manifest, a full decode still finds a truncated file.
    (out / "fetch_manifest.json").unlink()
    whole = tree.jpegs[rel(104)]
    (out / rel(104)).write_bytes(whole[: len(whole) - 200])
    result = fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    assert (result.fetched, result.present) == (1, 4)
    assert (out / rel(104)).read_bytes() == whole


def test_offline_is_one_clear_error_and_writes_nothing(server: CocoServer, out: Path) -> None:
    offline = f"http://127.0.0.1:{closed_port()}"

    # Nothing fetched yet: the archive cannot be reached; not even OUT is created.
    with pytest.raises(InputError) as caught:
        run_cli(["coco", "--out", str(out), "--base-url", offline])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach {offline} (URLError:")
    assert message.endswith("check your network or --base-url")
    assert not out.exists()

    # Everything present: no network needed at all.
    fetch_coco(out, categories=["cat"], base_url=server.url, verbose=False)
    result = fetch_coco(out, categories=["cat"], base_url=offline, verbose=False)
    assert (result.fetched, result.present, result.failed) == (0, 5, [])

    # Annotations present, some images missing: the image downloads cannot reach the host.
    (out / rel(101)).unlink()
    (out / rel(102)).unlink()
    before = all_files(out)
    with pytest.raises(InputError, match=r"^cannot reach http://127\.0\.0\.1:\d+ \(URLError: .*--base-url$"):
        fetch_coco(out, categories=["cat"], base_url=offline, verbose=False)
    assert all_files(out) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--categories", "catt"], r"unknown COCO category 'catt': did you mean cat\?"),
        (["--categories", "cat,zebra"], r"unknown COCO category 'zebra': known: bird, cat, dog"),
        (["--categories", " , "], r"--categories is empty"),
        (["--categories", "bird", "--caption-contains", "black cat"], r"no val2017 image matches"),
        (["--caption-contains", "  "], r"--caption-contains is empty"),
        (["--limit", "0"], r"--limit must be at least 1"),
        (["--workers", "0"], r"--workers must be at least 1"),
    ],
)
def test_bad_input(server: CocoServer, out: Path, argv: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_cli(["coco", "--out", str(out), "--base-url", server.url, *argv])
    assert not (out / "val2017").exists()


def test_bad_base_url(out: Path) -> None:
    with pytest.raises(InputError, match="--base-url must be an http"):
        run_cli(["coco", "--out", str(out), "--base-url", "images.cocodataset.org"])
    assert not out.exists()
