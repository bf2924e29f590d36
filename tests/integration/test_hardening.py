"""Hardening: every bad input file, store path and size ends in one line ``error: ...``, exit 2, no
traceback, and leaves every file it was given byte-identical (nothing written, nothing added).

One case per class of bad input (``CASES``): the experiment file (encoding, TOML, types, sizes, ablation
ranges, labels), the command line's sizes, the prompts file of ``rescore``, the COCO annotations and
captions (encoding, types, id uniqueness and range, file names, references), and the store path (a
directory, an unwritable or unreadable file or folder, a file that is not a DuckDB store, another
application's DuckDB file, a newer schema). Most run in-process through ``compute.__main__.main`` (the same
code as the command line, fast); a few run as real processes to show the whole stderr is that one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from helpers import ROOT, cli, cli_process, sql

from compute.__main__ import main
from tools.synthetic import make_coco, write_experiment


def snapshot(root: Path) -> dict[str, str]:
    """Every file (SHA-256), link and folder under ``root``: equal snapshots mean nothing was touched or added."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link -> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Setup:
    tmp: Path
    model: Path
    coco: Path
    db: Path

    def experiment(self, file: str = "e.toml", **kw) -> Path:
        kw.setdefault("sweep", "none")
        return write_experiment(self.tmp / file, self.model, self.coco, kw.pop("db", self.db), **kw)

    def annotations(self, doc, name: str = "instances.json") -> None:
        path = self.coco / "annotations" / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))

    def instances(self) -> dict:
        return json.loads((self.coco / "annotations" / "instances.json").read_text())

    def run(self, *more: str, exp: Path | None = None) -> list[str]:
        return ["run", str(exp or self.experiment()), "--no-progress", *more]


def _toml(s: Setup, text: str) -> list[str]:
    path = s.tmp / "bad.toml"
    path.write_text(s.experiment().read_text().replace('name = "t"', text, 1))
    return ["run", str(path), "--no-progress"]


def _toml_bytes(s: Setup, data: bytes) -> list[str]:
    path = s.tmp / "bad.toml"
    path.write_bytes(data)
    return ["run", str(path), "--no-progress"]


def _image_field(s: Setup, index: int, key: str, value) -> list[str]:
    doc = s.instances()
    doc["images"][index][key] = value
    s.annotations(doc)
    return s.run()


def _set(s: Setup, edit: Callable[[dict], None], name: str = "instances.json", **kw) -> list[str]:
    doc = json.loads((s.coco / "annotations" / name).read_text())
    edit(doc)
    s.annotations(doc, name)
    return s.run(exp=s.experiment(**kw)) if kw else s.run()


def _with_captions(s: Setup, edit: Callable[[dict], None]) -> list[str]:
    more = f'captions = "{s.coco / "annotations" / "captions.json"}"\nlabels = ["categories", "captions"]\n'
    exp = s.experiment()
    exp.write_text(exp.read_text().replace("[ablations]", more + "[ablations]"))
    doc = json.loads((s.coco / "annotations" / "captions.json").read_text())
    edit(doc)
    s.annotations(doc, "captions.json")
    return s.run(exp=exp)


def _store(s: Setup, make: Callable[[Path], None], verb: str = "run") -> list[str]:
    db = s.tmp / "store.duckdb"
    make(db)
    if verb == "run":
        return s.run("--db", str(db))
    return [verb, *(["t"] if verb == "delete" else []), "--db", str(db)]


def _foreign(db: Path, tables: tuple[str, ...] = ("customers",)) -> None:
    with duckdb.connect(str(db)) as con:
        for t in tables:
            con.execute(f"CREATE TABLE {t} (id INTEGER, name VARCHAR)")
            con.execute(f"INSERT INTO {t} VALUES (1, 'x')")


def _foreign_lookalike(db: Path) -> None:
    # Another application's meta_t with a schema_version of 1: not this tool's version-1 layout.
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE meta_t (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta_t VALUES ('schema_version', '1')")
        con.execute("CREATE TABLE orders (id INTEGER)")


def _foreign_with_pending_log(db: Path) -> None:
    # A writer that died before its checkpoint: the rows live only in the write-ahead log, which a
    # read-write open would replay into the file.
    code = ("import duckdb, os, sys; con = duckdb.connect(sys.argv[1]); "
            "con.execute('CREATE TABLE ledger (id INTEGER)'); con.execute('INSERT INTO ledger VALUES (42)'); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    assert Path(f"{db}.wal").exists()


def _newer(db: Path) -> None:
    from compute import store

    with store.connect(db) as con:
        con.execute(f"UPDATE {store.MARKER} SET value = '99' WHERE key = 'schema_version'")


def _sqlite(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (a)")


BIG = "9" * 5000  # more digits than Python converts to an int by default

# case -> (build the inputs and return argv, a fragment the one error line must contain)
CASES: dict[str, tuple[Callable[[Setup], list[str]], str]] = {
    # --- the experiment file ---
    "experiment: not UTF-8 (Latin-1)": (lambda s: _toml_bytes(s, s.experiment().read_bytes().replace(
        b'name = "t"', 'name = "café"'.encode("latin-1"))), "is not UTF-8 text: byte 0xe9 at line 1"),
    "experiment: UTF-16": (lambda s: _toml_bytes(s, s.experiment().read_text().encode("utf-16")),
                           "is not UTF-8 text: byte 0xff"),
    "experiment: not TOML": (lambda s: _toml(s, "name = = 'x'"), "not valid TOML"),
    "experiment: 5000-digit integer": (lambda s: _toml(s, f'name = "t"\nx = {BIG}'), "not valid TOML (Exceeds the limit"),
    "experiment: name not a string": (lambda s: _toml(s, "name = 5"), "name must be a string"),
    "experiment: name with a control character": (lambda s: _toml(s, 'name = "a\\u0007b"'), "printable"),
    "experiment: batch_size a string": (lambda s: s.run(exp=_replace(s, "batch_size = 4", 'batch_size = "4"')),
                                        "model.batch_size must be int, got '4'"),
    "experiment: batch_size 0": (lambda s: s.run(exp=_replace(s, "batch_size = 4", "batch_size = 0")),
                                 "model.batch_size must be a positive integer, got 0"),
    "experiment: batch_size huge": (lambda s: s.run(exp=_replace(s, "batch_size = 4", "batch_size = 10000000000000")),
                                    "model.batch_size = 10000000000000 is too large: at most 65,536"),
    "experiment: limit beyond 2^31": (lambda s: s.run(exp=_dataset_key(s, "limit = 99999999999999999999")),
                                      "dataset.limit = 99999999999999999999 is too large"),
    "experiment: limit a boolean": (lambda s: s.run(exp=_dataset_key(s, "limit = true")), "dataset.limit must be int"),
    "experiment: num_beams huge": (lambda s: s.run(exp=s.experiment(more="[captions]\nnum_beams = 1000000\n")),
                                   "captions.num_beams = 1000000 is too large: at most 64"),
    "experiment: max_new_tokens huge": (lambda s: s.run(exp=s.experiment(more="[captions]\nmax_new_tokens = 10000000\n")),
                                        "captions.max_new_tokens = 10000000 is too large"),
    "experiment: caption batch_size negative": (lambda s: s.run(exp=s.experiment(more="[captions]\nbatch_size = -3\n")),
                                                "captions.batch_size must be a positive integer, got -3"),
    "experiment: ablation layer beyond any tower": (lambda s: s.run(exp=s.experiment(extra=("identity:1-99999",))),
                                                    "layer 99999 is beyond any model (layers run from 1 to at most 1024)"),
    "experiment: ablation layer of 5000 digits": (lambda s: s.run(exp=s.experiment(extra=(f"zero:{BIG}",))),
                                                  "is out of range"),
    "experiment: head range beyond any model": (lambda s: s.run(exp=s.experiment(
        extra=("identity:3/h0-99999999999999999999",))), "head 99999999999999999999 is beyond any model"),
    "experiment: head number of 5000 digits": (lambda s: s.run(exp=s.experiment(extra=(f"zero:2/h{BIG}",))),
                                               "is out of range: head 999999"),
    "experiment: head beyond the model": (lambda s: s.run(exp=s.experiment(extra=("identity:3/h1,h4",))),
                                          "head 4 does not exist (its layers have heads 0-3)"),
    "experiment: ablation beyond the model": (lambda s: s.run(exp=s.experiment(extra=("uniform:5,13",))),
                                              "layer 13 does not exist (the vision tower has layers 1-12)"),
    "experiment: extra not a list of strings": (lambda s: s.run(exp=_replace(s, "extra = []", "extra = [3]")),
                                                "ablations.extra must be a list of strings"),
    "experiment: too many prompts": (lambda s: s.run(exp=s.experiment(
        prompts=[(f"a photo of a cat {i}", "cat") for i in range(32_769)])), "32,769 prompts: a run holds at most 32,768"),
    "experiment: prompt label nobody carries": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "dgo"), ("a photo of a cat", "cat")])),
        "prompt label 'dgo' is carried by no image: the categories of"),
    "experiment: caption label nobody says": (lambda s: s.run(exp=_caption_labels(
        s, [("a photo of a black cat", "black cat"), ("a photo of a blak cat", "blak cat")])),
        "closest known labels: 'black cat'"),
    "experiment: a prompt text not a string": (lambda s: s.run(exp=_replace(s, 'text = "a photo of a dog"', "text = 1")),
                                               "prompts #1.text must be str"),
    # --- the command line ---
    "cli: --limit huge": (lambda s: s.run("--limit", "1" + "0" * 30), "--limit = 1000000000000000000000000000000 is too large"),
    "cli: --batch-size 0": (lambda s: s.run("--batch-size", "0"), "--batch-size must be a positive integer, got 0"),
    "cli: --threads huge": (lambda s: s.run("--threads", "100000000"), "--threads = 100000000 is too large"),
    "cli: --workers huge": (lambda s: s.run("--workers", "100000"), "--workers = 100000 is too large: at most 1,024"),
    # --- the prompts file of rescore (the store it would write to stays identical) ---
    "prompts file: not UTF-8": (lambda s: _rescore(s, b'[[prompts]]\ntext = "a photo of a ni\xf1o"\nlabel = "cat"\n'),
                                "prompts file"),
    "prompts file: unknown key": (lambda s: _rescore(s, b'colour = "red"\n[[prompts]]\ntext = "x"\nlabel = "cat"\n'),
                                  "unknown key 'colour' in top level"),
    "prompts file: label nobody carries": (lambda s: _rescore(s, b'[[prompts]]\ntext = "a photo of a kat"\nlabel = "kat"\n'),
                                           "prompt label 'kat' is carried by no image"),
    # --- COCO annotations ---
    "annotations: not UTF-8": (lambda s: _latin1_annotations(s), "is not UTF-8 text: byte 0xe2"),
    "annotations: not JSON": (lambda s: s.annotations("{not json") or s.run(), "is not valid JSON"),
    "annotations: 5000-digit number": (lambda s: s.annotations('{"images": [{"id": ' + BIG + "}]}") or s.run(),
                                       "is not valid JSON (Exceeds the limit"),
    "annotations: nested too deeply": (lambda s: s.annotations("[" * 100_000 + "]" * 100_000) or s.run(),
                                       "is not valid JSON"),
    "annotations: top level a list": (lambda s: s.annotations([1, 2]) or s.run(), "the top level is a list, not an object"),
    "annotations: no images": (lambda s: s.annotations({"annotations": []}) or s.run(), "no 'images' list"),
    "annotations: images not a list": (lambda s: _set(s, lambda d: d.update(images={"1": {}})), "'images' must be a list"),
    "annotations: image not an object": (lambda s: _set(s, lambda d: d["images"].append("x.jpg")), "must be an object"),
    "annotations: image id a string": (lambda s: _image_field(s, 2, "id", "3"), "images[2].id must be an integer, got '3' (a string)"),
    "annotations: image id null": (lambda s: _image_field(s, 0, "id", None), "images[0].id must be an integer, got None (null)"),
    "annotations: image id a float": (lambda s: _image_field(s, 1, "id", 2.0), "images[1].id must be an integer, got 2.0 (a float)"),
    "annotations: image id NaN": (lambda s: s.annotations(json.dumps(s.instances()).replace('"id": 4,', '"id": NaN,', 1))
                                  or s.run(), "got nan (not a number)"),
    "annotations: image ids mixed": (lambda s: _image_field(s, 5, "id", "6"), "images[5].id must be an integer, got '6'"),
    "annotations: image id beyond 64 bits": (lambda s: _image_field(s, 0, "id", 2**64), "must be an integer from 0 to 2^63-1, got 18446744073709551616"),
    "annotations: image id negative": (lambda s: _image_field(s, 0, "id", -1), "from 0 to 2^63-1, got -1"),
    "annotations: image id a boolean": (lambda s: _image_field(s, 0, "id", True), "got True (a boolean)"),
    "annotations: float ids that collide": (lambda s: _set(s, lambda d: [img.update(id=img["id"] + 0.25) for img in d["images"]]),
                                            "images[0].id must be an integer, got 1.25"),
    "annotations: duplicate image ids": (lambda s: _image_field(s, 3, "id", 2), "images[3].id 2 repeats images[1].id"),
    "annotations: file_name not a string": (lambda s: _image_field(s, 0, "file_name", 17), "images[0].file_name must be a string, got 17"),
    "annotations: file_name missing": (lambda s: _set(s, lambda d: d["images"][0].pop("file_name")), "image 1 (images[0]) has no file_name"),
    "annotations: file_name empty": (lambda s: _image_field(s, 0, "file_name", " "), "images[0].file_name must not be empty"),
    "annotations: file_name with a NUL": (lambda s: _image_field(s, 0, "file_name", "a\x00.jpg"), "contains a NUL byte"),
    "annotations: file_name a lone surrogate": (lambda s: s.annotations(json.dumps(s.instances()).replace(
        '"000000000001.jpg"', '"\\udc80.jpg"')) or s.run(), "is not valid Unicode"),
    "annotations: categories not a list": (lambda s: _set(s, lambda d: d.update(categories="cat")), "'categories' must be a list"),
    "annotations: category without a name": (lambda s: _set(s, lambda d: d["categories"][0].pop("name")), "categories[0] needs an 'id' and a 'name'"),
    "annotations: category name not a string": (lambda s: _set(s, lambda d: d["categories"][1].update(name=["dog"])),
                                                 "categories[1].name must be a string"),
    "annotations: duplicate category ids": (lambda s: _set(s, lambda d: d["categories"][2].update(id=1)), "categories[2].id 1 repeats categories[0].id"),
    "annotations: annotation of an unknown category": (lambda s: _set(s, lambda d: d["annotations"][0].update(category_id=99)),
                                                       "annotations[0].category_id 99 is not an id of the file's categories"),
    "annotations: annotation of an unknown image": (lambda s: _set(s, lambda d: d["annotations"][0].update(image_id=999)),
                                                    "annotations[0].image_id 999 is not an id of the file's images"),
    "annotations: annotation id a string": (lambda s: _set(s, lambda d: d["annotations"][3].update(id="4")), "annotations[3].id must be an integer"),
    "captions: caption not a string": (lambda s: _with_captions(s, lambda d: d["annotations"][2].update(caption=None)),
                                       "annotations[2].caption must be a string, got None"),
    "captions: image id beyond 64 bits": (lambda s: _with_captions(s, lambda d: d["annotations"][0].update(image_id=2**70)),
                                          "captions file"),
    # --- the store path ---
    "store: a directory": (lambda s: s.run("--db", str(s.tmp)), "is a directory"),
    "store: its folder is a file": (lambda s: s.run("--db", str(s.tmp / "e.toml" / "x.duckdb")), "is not a folder"),
    "store: a text file": (lambda s: _store(s, lambda db: db.write_text("name,value\n1,2\n")), "is not a DuckDB file (unknown format)"),
    "store: an empty file": (lambda s: _store(s, lambda db: db.write_bytes(b"")), "is not a DuckDB file (it is empty)"),
    "store: an SQLite file": (lambda s: _store(s, _sqlite), "is an SQLite database, not a DuckDB store"),
    "store: another application's DuckDB file": (lambda s: _store(s, _foreign), "a DuckDB file of another application (tables: customers"),
    "store: another application's file with a run_t": (lambda s: _store(s, lambda db: _foreign(db, ("run_t", "invoices"))),
                                                       "another application (tables: invoices, run_t"),
    "store: a look-alike meta_t": (lambda s: _store(s, _foreign_lookalike), "another application (tables: meta_t, orders"),
    "store: another application's file with a pending log": (lambda s: _store(s, _foreign_with_pending_log),
                                                             "another application (tables: ledger"),
    "store: written by a newer version": (lambda s: _store(s, _newer), "written by a newer version of CLIP Attention Lab "
                                          "(schema version 99; this one knows up to 2); upgrade"),
    "store: list on another application's file": (lambda s: _store(s, _foreign, verb="list"), "another application"),
    "store: delete on an SQLite file": (lambda s: _store(s, _sqlite, verb="delete"), "is an SQLite database"),
}


def _replace(s: Setup, old: str, new: str) -> Path:
    exp = s.experiment()
    text = exp.read_text()
    assert old in text
    exp.write_text(text.replace(old, new, 1))
    return exp


def _dataset_key(s: Setup, line: str) -> Path:
    return _replace(s, "[ablations]", f"{line}\n[ablations]")


def _caption_labels(s: Setup, prompts) -> Path:
    more = f'captions = "{s.coco / "annotations" / "captions.json"}"\nlabels = ["captions"]\n'
    exp = s.experiment(prompts=prompts)
    exp.write_text(exp.read_text().replace("[ablations]", more + "[ablations]"))
    return exp


def _latin1_annotations(s: Setup) -> list[str]:
    path = s.coco / "annotations" / "instances.json"
    path.write_bytes(path.read_text().replace("thing", "chât").encode("latin-1"))
    return s.run()


def _rescore(s: Setup, prompts: bytes) -> list[str]:
    # A real stored run to rescore: the prompts file is checked before anything is written to it.
    db = s.tmp / "rescore.duckdb"
    from compute.config import load_experiment
    from compute.runner import run

    run(load_experiment(s.experiment("base.toml", db=db, name="base")), progress=False, echo=lambda _: None)
    path = s.tmp / "prompts.toml"
    path.write_bytes(prompts)
    return ["rescore", "--run", "base", "--prompts", str(path), "--as", "new", "--db", str(db), "--no-progress"]


@pytest.fixture
def setup(tiny_clip, tmp_path) -> Setup:
    tmp = tmp_path / "inputs"
    tmp.mkdir()
    return Setup(tmp, tiny_clip, make_coco(tmp / "coco", n=10), tmp / "out.duckdb")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(setup, case, capsys):
    build, fragment = CASES[case]
    argv = build(setup)
    before = snapshot(setup.tmp)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert snapshot(setup.tmp) == before, "a bad input changed or added a file"
    assert not setup.db.exists()


def _run_measured(cmd: list[str], env: dict, tmp: Path, limit_gb: int = 6) -> tuple[int, str, float]:
    """Run ``cmd`` with its address space capped (a runaway allocation fails instead of eating the machine);
    return its exit code, its stderr and its own peak resident memory in MB."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit_gb << 30, limit_gb << 30))

    err_path = tmp / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(), usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_huge_layer_range_is_refused_before_it_is_expanded(setup):
    exp = setup.experiment(extra=("identity:1-99999999999999999999",))
    before = snapshot(setup.tmp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code, stderr, peak_mb = _run_measured([sys.executable, "-m", "compute", "run", str(exp)], env, setup.tmp.parent)
    assert code == 2, stderr[-2000:]
    assert stderr.strip().splitlines() == [
        f"error: {exp}: ablation 'identity:1-99999999999999999999' is out of range: layer 99999999999999999999 "
        "is beyond any model (layers run from 1 to at most 1024)"]
    assert peak_mb < 2000, f"peak memory {peak_mb:.0f} MB: the range was expanded"  # was past 15 GB
    print(f"peak resident memory of the refused run: {peak_mb:.0f} MB")
    assert snapshot(setup.tmp) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", ["experiment: not UTF-8 (Latin-1)", "annotations: image id a string",
                                  "store: another application's DuckDB file"])
def test_bad_input_as_a_real_process_prints_only_the_error_line(setup, case):
    argv = CASES[case][0](setup)
    before = snapshot(setup.tmp)
    result = cli_process(*argv)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert snapshot(setup.tmp) == before


# --------------------------------------------------------------------------------------------------
# Store paths another user owns. Permissions do not stop root, so as root the files are given to user
# nobody and the command runs without the capabilities that bypass permission checks.

NOBODY = 65534
CAPS_OVER_PERMISSIONS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_root_powers() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in CAPS_OVER_PERMISSIONS:  # PR_CAPBSET_DROP: gone from the command exec'd next
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_non_owner(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    extra = {"preexec_fn": _drop_root_powers} if os.geteuid() == 0 else {}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **extra)


def _restore(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.slow
@pytest.mark.parametrize("case, mode_db, mode_dir, fragment", [
    ("a read-only folder", None, 0o555, "cannot write store {db}: folder {folder} is not writable"),
    ("a store file owned by someone else, read-only", 0o444, 0o755, "store {db} is read-only (permission denied)"),
    ("a store file nobody else may read", 0o600, 0o755, "store {db} cannot be read: permission denied"),
])
def test_store_paths_of_another_owner_are_one_line_and_untouched(setup, case, mode_db, mode_dir, fragment):
    folder = setup.tmp / "stores"
    folder.mkdir()
    db = folder / "s.duckdb"
    exp = setup.experiment(db=db)
    if mode_db is not None:
        from compute import store

        with store.connect(db):  # an empty store of this tool
            pass
        db.chmod(mode_db)
    folder.chmod(mode_dir)
    if os.geteuid() == 0:  # someone else's
        for p in (folder, *folder.iterdir()):
            os.chown(p, NOBODY, NOBODY)
    before = snapshot(setup.tmp)
    try:
        result = _as_non_owner([sys.executable, "-m", "compute", "run", str(exp), "--no-progress"])
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
        assert fragment.format(db=db, folder=folder) in lines[0]
        if os.geteuid() == 0 and mode_db is not None:
            assert lines[0].endswith("; it belongs to nobody")
        assert snapshot(setup.tmp) == before
    finally:
        _restore(folder)


@pytest.mark.slow
@pytest.mark.root
def test_a_store_on_a_read_only_file_system(setup, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        assert main(setup.run("--db", str(mnt / "s.duckdb"))) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: cannot write store {mnt / 's.duckdb'}: folder {mnt} is not writable (a read-only file system)"
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_foreign_duckdb_file_keeps_its_checksum_and_rows(setup, capsys):
    db = setup.tmp / "theirs.duckdb"
    _foreign(db, ("accounts", "run_t"))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for argv in (setup.run("--db", str(db)), ["list", "--db", str(db)], ["delete", "t", "--db", str(db)]):
        assert main(argv) == 2
        assert "another application" in capsys.readouterr().err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert sql(db, "SELECT table_name FROM information_schema.tables ORDER BY 1") == [("accounts",), ("run_t",)]


# --------------------------------------------------------------------------------------------------
# Image files outside the images folder, and labels.


@pytest.mark.slow
def test_images_outside_the_folder_go_to_the_errors_view_unread(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=8)
    images = coco / "images"
    os.mkfifo(tmp_path / "outside.jpg")  # opening it would block: the run proves it never reads it
    shutil.copy(images / f"{3:012d}.jpg", tmp_path / "elsewhere.jpg")
    (images / "escape.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    (images / "inner.jpg").symlink_to(images / f"{5:012d}.jpg")  # a link that stays inside: fine
    (images / "sub").mkdir()
    linked = tmp_path / "linked-images"
    linked.symlink_to(images)  # the folder itself may be a link
    doc = json.loads((coco / "annotations" / "instances.json").read_text())
    names = {2: "../../outside.jpg", 3: str(tmp_path / "elsewhere.jpg"), 4: "escape.jpg", 5: "inner.jpg",
             6: f"sub/../{6:012d}.jpg"}
    for img in doc["images"]:
        img["file_name"] = names.get(img["id"], img["file_name"])
    (coco / "annotations" / "instances.json").write_text(json.dumps(doc))
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, tmp_path / "r.duckdb", sweep="none")
    exp.write_text(exp.read_text().replace(f'images = "{images}"', f'images = "{linked}"'))

    result = cli("run", str(exp), "--no-progress", timeout=240)  # a read of the FIFO fails here
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 image(s) could not be read" in result.stdout
    errors = sql(tmp_path / "r.duckdb", "SELECT image_id, stage, message FROM errors ORDER BY image_id")
    assert [(i, s) for i, s, _ in errors] == [(2, "load"), (3, "load"), (4, "load")]
    for (_, _, message), name in zip(errors, ("../../outside.jpg", str(tmp_path / "elsewhere.jpg"), "escape.jpg"),
                                     strict=True):
        assert message == f"{name!r} resolves outside the images folder {linked}: not read"
    assert sql(tmp_path / "r.duckdb", "SELECT DISTINCT image_id FROM selections ORDER BY 1") == [
        (1,), (5,), (6,), (7,), (8,)]
    # The store lists no path for them, so nothing downstream (captions, thumbnails) can open them.
    paths = dict(sql(tmp_path / "r.duckdb", "SELECT image_id, path FROM image_t"))
    assert paths[2] == paths[3] == paths[4] == "" and paths[5] == str(linked / "inner.jpg")
    assert sql(tmp_path / "r.duckdb", "SELECT COUNT(*) FROM images")[0][0] == 8


def test_a_known_label_no_selected_image_carries_is_a_warning(tiny_clip, tiny_coco, tmp_path, capsys):
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, tiny_coco, tmp_path / "r.duckdb", sweep="none",
                           prompts=[("a photo of a cat", "cat"), ("a photo of a dog", "dog"),
                                    ("a photo of a car", "car"), ("a photo of a bird", "bird")],
                           categories=("dog",))
    assert main(["run", str(exp), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("warning: no selected image carries the label(s) 'car', 'bird': their prompts can never be "
                      "correct (fine for distractors)")
    assert sql(tmp_path / "r.duckdb", "SELECT status FROM runs") == [("complete",)]


# --------------------------------------------------------------------------------------------------
# Bad input under --ray (moved here from test_ray.py: it never starts Ray, and it reads CASES).

SAME_ERRORS = ["experiment: not TOML", "experiment: batch_size 0", "experiment: ablation beyond the model",
               "experiment: head beyond the model", "experiment: prompt label nobody carries", "cli: --workers huge",
               "annotations: image id a string", "annotations: duplicate image ids", "store: a directory",
               "store: an SQLite file"]
RAY_OPTIONS = {
    ("--ray", "--ray-actors", "0"): "error: --ray-actors must be a positive integer, got 0",
    ("--ray", "--ray-actors", "5000"): "error: --ray-actors = 5000 is too large: at most 4,096",
    ("--ray", "--ray-gpus-per-actor", "-1"): "error: --ray-gpus-per-actor must be a number of GPUs from 0 to 64",
    ("--ray", "--ray-gpus-per-actor", "1.5"): "error: --ray-gpus-per-actor = 1.5: above 1 it must be a whole number",
    ("--ray", "--ray-gpus-per-actor", "nan"): "error: --ray-gpus-per-actor must be a number of GPUs",
    ("--ray", "not an address"): "error: --ray 'not an address' is not a Ray address",
    ("--ray", "ray://"): "error: --ray 'ray://' is not a Ray address",
    ("--ray-actors", "2"): "error: --ray-actors needs --ray",
    ("--ray", "--method", "plain"): "error: --method plain runs in one process only",
}


@pytest.mark.ray
@pytest.mark.slow
def test_bad_input_under_ray_gets_the_same_one_line_errors_before_ray_is_imported(tiny_clip, tmp_path):
    """Every case runs without and with --ray in one process, which must never import ray: each error is
    the single-process run's line, exit code 2, and nothing is written."""
    script = ["import json, sys, io, contextlib", "from compute.__main__ import main", "out = []",
              "for argv in json.loads(sys.argv[1]):",
              "    err = io.StringIO()",
              "    with contextlib.redirect_stderr(err):",
              "        code = main(argv)",
              "    out.append([code, err.getvalue()])",
              "print(json.dumps({'results': out, 'ray imported': 'ray' in sys.modules}))"]
    argvs, expected = [], []
    setups = []
    for k, case in enumerate(SAME_ERRORS):
        setup = Setup(tmp_path / f"case{k}", tiny_clip, None, tmp_path / f"case{k}" / "out.duckdb")
        setup.tmp.mkdir()
        setup.coco = make_coco(setup.tmp / "coco", n=10)
        build, fragment = CASES[case]
        argv = build(setup)
        assert argv[0] == "run"
        argvs += [argv, [*argv, "--ray"], [*argv, "--ray", "ray://head.example:10001", "--ray-actors", "8"]]
        expected.append(fragment)
        setups.append((setup, snapshot(setup.tmp)))
    exp = write_experiment(tmp_path / "good.toml", tiny_clip, setups[0][0].coco, tmp_path / "good.duckdb")  # bad options
    argvs += [["run", str(exp), "--no-progress", *options] for options in RAY_OPTIONS]

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "\n".join(script), json.dumps(argvs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    for k, fragment in enumerate(expected):
        plain, local, remote = results[3 * k : 3 * k + 3]
        assert plain[0] == 2 and len(plain[1].strip().splitlines()) == 1, (SAME_ERRORS[k], plain)
        assert fragment in plain[1], (SAME_ERRORS[k], plain)
        assert local == plain and remote == plain, SAME_ERRORS[k]
    for (code, err), want in zip(results[3 * len(expected):], RAY_OPTIONS.values(), strict=True):
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(want), (want, err)
    assert not report["ray imported"], "ray was imported: Ray work could have started before the checks"
    for setup, before in setups:
        assert snapshot(setup.tmp) == before, "a bad input changed or added a file"
    assert not (tmp_path / "good.duckdb").exists()
    print(f"{len(argvs)} refused runs in {time.monotonic() - t0:.1f} s, ray never imported")
