"""Hardening: every bad input file, store path and size ends in one line ``error: ...``, exit 2, no
traceback, and leaves every file it was given byte-identical (nothing written, nothing added).

One case per class of bad input (``CASES``): the experiment file (encoding, TOML, types, sizes, ablation
ranges, labels), the command line's sizes, the prompts file of ``rescore``, the COCO annotations and
captions (encoding, types, id uniqueness and range, file names, references), the store path (a
directory, an unwritable or unreadable file or folder, a file that is not a DuckDB store, another
application's DuckDB file, a newer schema), names and prompt texts (control characters, blank or
zero-width-only text), prompts as the model's tokenizer reads them (too long for the text tower, two prompts
the tokenizer makes the same), a model whose outputs are not finite, a model whose config.json does not
match its weights, the model's weights file, output folders and the names a fetch would write, a Ray
address. Every error line is printable: user text in it is escaped, never printed raw. Most run in-process
through ``compute.__main__.main`` (the same code as the command line, fast); a few run as real processes to
show the whole stderr is that one line. Non-finite results part way (exit 1, that batch unwritten) and a
name stored before names were checked (``list`` escapes it) have tests of their own below.

Then the I/O classes, each decided once where it is owned: the RGB the model is shown for every image mode
(compute.dataset.to_rgb), image files that are not regular files or hold too many pixels (errors rows,
never a hang or a raw warning), decode workers that never outlive their run, ``export --image`` of a file
that cannot be read, damaged stores for every verb (compute.storefile), ``--out`` folders, the run's lock
file (never followed), SIGTERM (ends like Ctrl-C) and an unreachable Ray cluster (before a store exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers import (
    ROOT,
    STORE_DAMAGE,
    cli,
    cli_forked,
    cli_process,
    flip,
    foreign_duckdb,
    newer_schema,
    sql,
)
from PIL import Image

from compute.__main__ import main
from compute.errors import StoreError
from compute.models import BACKEND
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
        elif not p.is_file():  # a FIFO or a socket: reading it could block
            out[rel] = f"special {stat.S_IFMT(p.stat().st_mode):o}"
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
        return write_experiment(self.tmp / file, kw.pop("model", self.model), self.coco, kw.pop("db", self.db), **kw)

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
    # --- names and prompt texts: no control characters, not blank ---
    "experiment: prompt text with an escape sequence": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a \\u001b[2J dog", "dog"), ("a photo of a cat", "cat")])),
        "prompts #1.text 'a photo of a \\x1b[2J dog' contains a control character (U+001B at position 13)"),
    "experiment: prompt text with a tab inside": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "dog"), ("a photo\\tof a cat", "cat")])), "prompts #2.text 'a photo\\tof a cat' contains"),
    "experiment: prompt text only zero-width": (lambda s: s.run(exp=s.experiment(
        prompts=[("\\u200b\\u2060\\ufeff", "dog"), ("a photo of a cat", "cat")])),
        "prompts #1: text and label must not be empty (nor only spaces or invisible characters)"),
    "experiment: prompt label with a C1 control": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "d\\u0085og"), ("a photo of a cat", "cat")])),
        "prompts #1.label 'd\\x85og' contains a control character (U+0085"),
    "experiment: name with an escape sequence": (lambda s: _toml(s, 'name = "run\\u001b[2J"'),
                                                 "name 'run\\x1b[2J' contains a control character"),
    "experiment: name only zero-width": (lambda s: _toml(s, 'name = "\\u200b"'), "name '\\u200b' is empty or blank"),
    "prompts file: text with a newline": (lambda s: _rescore(s, b'[[prompts]]\ntext = "a photo\\nof a cat"\nlabel = "cat"\n'),
                                          "prompts #1.text 'a photo\\nof a cat' contains a control character (U+000A"),
    "rescore: --as with an escape sequence": (lambda s: _rescore(s, GOOD_PROMPTS, new="new\x1b[2J\x07"),
                                              "--as 'new\\x1b[2J\\x07' contains a control character"),
    "rescore: --as only zero-width": (lambda s: _rescore(s, GOOD_PROMPTS, new="\u200b\u200d"), "--as '\\u200b\\u200d' is empty"),
    "rescore: --as with a slash": (lambda s: _rescore(s, GOOD_PROMPTS, new="a/b"), "--as 'a/b' must be under 100 characters"),
    # --- prompts as the model's tokenizer reads them (the tiny CLIP: 32 positions, lower-cased words) ---
    "experiment: prompt longer than the text tower": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "dog"), (LONG + " cat", "cat")])),
        "prompt 'a photo of the small cat on the floor with a photo of the sm...' is 43 tokens long: the text "
        "tower of"),
    "experiment: prompt longer than the text tower, opt-in named": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "dog"), (LONG + " cat", "cat")])),
        "reads at most 32; shorten it, or set [model] truncate_prompts = true to cut longer prompts at 32 tokens"),
    "experiment: prompts that differ only in case": (lambda s: s.run(exp=s.experiment(
        prompts=[("a photo of a dog", "dog"), ("A Photo of a Dog", "dog"), ("a photo of a cat", "cat")])),
        "prompts 'a photo of a dog' and 'A Photo of a Dog' are the same to the tokenizer of"),
    "experiment: prompts that differ only past the cut": (lambda s: s.run(exp=_model_key(s.experiment(
        prompts=[("a photo of a dog", "dog"), (LONG + " cat", "cat"), (LONG + " dog", "dog")]),
        "truncate_prompts = true")), "once cut at 32 tokens (the same 32 token ids): they would always tie; keep one"),
    "experiment: truncate_prompts not a boolean": (lambda s: s.run(exp=_model_key(s.experiment(), 'truncate_prompts = "yes"')),
                                                   "model.truncate_prompts must be true or false, got 'yes'"),
    "prompts file: café composed and decomposed": (lambda s: _rescore(s, (
        '[[prompts]]\ntext = "a photo of a caf\u00e9"\nlabel = "cat"\n'
        '[[prompts]]\ntext = "a photo of a cafe\u0301"\nlabel = "cat"\n').encode()), "are the same to the tokenizer"),
    "prompts file: prompt too long, rescore's opt-in named": (lambda s: _rescore(s, (
        f'[[prompts]]\ntext = "{LONG}"\nlabel = "cat"\n[[prompts]]\ntext = "a photo of a dog"\nlabel = "dog"\n').encode()),
        "set --truncate-prompts to cut longer prompts"),
    # --- a model whose outputs are not finite: an error, not an accuracy ---
    "model: NaN weights": (lambda s: s.run(exp=s.experiment(model=_edited_model(s, weights=_all_nan))),
                           "gives a non-finite text embedding (NaN) for prompt 'a photo of a dog': its weights are broken"),
    "model: NaN image tower only": (lambda s: s.run(exp=s.experiment(model=_edited_model(s, weights=_nan_vision))),
                                    "gives a non-finite image embedding (NaN) on a probe image, unablated"),
    "model: an infinite projection": (lambda s: s.run(exp=s.experiment(model=_edited_model(s, weights=_inf_projection))),
                                      "gives a non-finite image embedding (infinity) on a probe image"),
    # --- a model's config.json against its weights ---
    "model: config of 3 layers over 12-layer weights": (lambda s: s.run(exp=s.experiment(
        model=_edited_model(s, config=lambda c: c["vision_config"].update(num_hidden_layers=3)))),
        "config.json does not match its weights: 144 weight(s) the config has no place for "
        "(vision_model.encoder.layers.10.layer_norm1.bias"),
    "model: config of 14 layers over 12-layer weights": (lambda s: s.run(exp=s.experiment(
        model=_edited_model(s, config=lambda c: c["vision_config"].update(num_hidden_layers=14)))),
        "32 weight(s) the config needs are not in the checkpoint (vision_model.encoder.layers.12."),
    "model: config wider than its weights": (lambda s: s.run(exp=s.experiment(
        model=_edited_model(s, config=lambda c: c.update(projection_dim=24)))),
        "weight(s) of another shape (text_projection.weight: (16, 32) in the checkpoint, (24, 32) for the config)"),
    "model: a weight renamed": (lambda s: s.run(exp=s.experiment(model=_edited_model(s, weights=_renamed))),
                                "1 weight(s) the config has no place for (visual_projection.kernel); 1 weight(s) the "
                                "config needs are not in the checkpoint (visual_projection.weight)"),
    "captioner: config of 2 decoder layers over 3": (lambda s: s.run(exp=s.experiment(
        captioner=_edited_model(s, DEMO_CAPTIONER, config=lambda c: c["decoder"].update(n_layer=2)))),
        "config.json does not match its weights: 16 weight(s) the config has no place for (decoder.transformer.h.2."),
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
    "store: another application's DuckDB file": (lambda s: _store(s, foreign_duckdb), "a DuckDB file of another application (tables: customers"),
    "store: another application's file with a run_t": (lambda s: _store(s, lambda db: foreign_duckdb(db, ("run_t", "invoices"))),
                                                       "another application (tables: invoices, run_t"),
    "store: a look-alike meta_t": (lambda s: _store(s, _foreign_lookalike), "another application (tables: meta_t, orders"),
    "store: another application's file with a pending log": (lambda s: _store(s, _foreign_with_pending_log),
                                                             "another application (tables: ledger"),
    "store: written by a newer version": (lambda s: _store(s, newer_schema), "written by a newer version of CLIP Attention Lab "
                                          "(schema version 99; this one knows up to 3); upgrade"),
    "store: list on another application's file": (lambda s: _store(s, foreign_duckdb, verb="list"), "another application"),
    "store: delete on an SQLite file": (lambda s: _store(s, _sqlite, verb="delete"), "is an SQLite database"),
    # --- models on disk ---
    "model: weights file cut in half": (lambda s: s.run(exp=_cut_weights(s)),
                                        "model.safetensors is damaged (Error while deserializing header"),
    # --- output folders and names written from a server's annotations ---
    "fetch: --out an existing file": (lambda s: _fetch(s, s.experiment()), "e.toml is a file, not a folder"),
    "fetch: --out under a file": (lambda s: _fetch(s, s.experiment() / "coco"), "e.toml is a file, not a folder"),
    "fetch: --out in /proc": (lambda s: _fetch(s, Path("/proc/clip-lab-out")), "/proc/clip-lab-out is not writable"),
    "fetch: a file_name '..'": (lambda s: _fetch_names(s, ".."), "unsafe file_name '..'"),
    "fetch: an empty file_name": (lambda s: _fetch_names(s, ""), "unsafe file_name ''"),
    "fetch: a file_name '.'": (lambda s: _fetch_names(s, "."), "unsafe file_name '.'"),
    "fetch: a file_name with a folder": (lambda s: _fetch_names(s, "a/b.jpg"), "unsafe file_name 'a/b.jpg'"),
    # --- a Ray address ---
    "cli: --ray port beyond 65535": (lambda s: s.run("--ray", "127.0.0.1:99999"),
                                     "--ray '127.0.0.1:99999': port 99999 is not a TCP port (1 to 65535)"),
    "cli: --ray port 0": (lambda s: s.run("--ray", "ray://head:0"), "port 0 is not a TCP port"),
}


GOOD_PROMPTS = b'[[prompts]]\ntext = "a photo of a cat"\nlabel = "cat"\n[[prompts]]\ntext = "a photo of a dog"\nlabel = "dog"\n'
LONG = " ".join(["a photo of the small cat on the floor with"] * 4)  # 40 words the tiny tokenizer knows
DEMO_CAPTIONER = ROOT / "data" / "demo" / "models" / "captioner"


def _model_key(exp: Path, line: str) -> Path:
    text = exp.read_text()
    exp.write_text(text.replace("[model]\n", f"[model]\n{line}\n", 1))
    return exp


def _edited_model(s: Setup, source: Path | None = None, *, weights=None, config=None) -> Path:
    """A copy of ``source`` (the tiny CLIP) under the inputs, its safetensors or config.json edited."""
    from safetensors.torch import load_file, save_file

    source = source or s.model
    out = s.tmp / f"{source.name}-edited"
    shutil.copytree(source, out)
    if weights is not None:
        tensors = load_file(out / "model.safetensors")
        weights(tensors)
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        doc = json.loads((out / "config.json").read_text())
        config(doc)
        (out / "config.json").write_text(json.dumps(doc))
    return out


def _all_nan(tensors: dict) -> None:
    for t in tensors.values():
        if t.is_floating_point():
            t.fill_(float("nan"))


def _nan_vision(tensors: dict) -> None:
    for name, t in tensors.items():
        if name.startswith("vision_model.encoder.layers.7.mlp"):
            t.fill_(float("nan"))


def _inf_projection(tensors: dict) -> None:
    tensors["visual_projection.weight"][0, 0] = float("inf")


def _renamed(tensors: dict) -> None:
    tensors["visual_projection.kernel"] = tensors.pop("visual_projection.weight")


def _cut_weights(s: Setup) -> Path:
    model = s.tmp / "model"
    shutil.copytree(s.model, model)
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return write_experiment(s.tmp / "cut.toml", model, s.coco, s.db, sweep="none")


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens; these cases stop before the network


def _fetch(s: Setup, out: Path) -> list[str]:
    return ["fetch", "coco", "--out", str(out), "--base-url", UNREACHABLE]


def _fetch_names(s: Setup, name: str) -> list[str]:
    # Annotations already fetched (so no network): an image whose file_name would leave OUT/val2017.
    out = s.tmp / "fetched"
    (out / "annotations").mkdir(parents=True)
    doc = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 4, "height": 4},
                      {"id": 2, "file_name": name, "width": 4, "height": 4}],
           "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    (out / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    (out / "annotations" / "captions_val2017.json").write_text(json.dumps({"annotations": []}))
    return _fetch(s, out)


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


def _rescore(s: Setup, prompts: bytes, new: str = "new") -> list[str]:
    # A real stored run to rescore: the prompts file and the new name are checked before anything is written.
    db = s.tmp / "rescore.duckdb"
    from compute.config import load_experiment
    from compute.runner import run

    run(load_experiment(s.experiment("base.toml", db=db, name="base")), progress=False, echo=lambda _: None)
    path = s.tmp / "prompts.toml"
    path.write_bytes(prompts)
    return ["rescore", "--run", "base", "--prompts", str(path), "--as", new, "--db", str(db), "--no-progress"]


@pytest.fixture
def setup(tiny_clip, tmp_path) -> Setup:
    tmp = tmp_path / "inputs"
    tmp.mkdir()
    return Setup(tmp, tiny_clip, make_coco(tmp / "coco", n=10), tmp / "out.duckdb")


def refused(setup: Setup, argv: list[str], fragment: str, capsys, code: int = 2) -> str:
    """Run the command line in-process on ``argv``: exit ``code``, one line ``error: ...`` holding ``fragment``,
    every file under setup.tmp unchanged, no store made. Returns the line."""
    before = snapshot(setup.tmp)
    capsys.readouterr()
    got = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert lines[0].isprintable(), f"a control character printed raw: {lines[0]!r}"
    assert snapshot(setup.tmp) == before, "a bad input changed or added a file"
    assert not setup.db.exists()
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(setup, case, capsys):
    build, fragment = CASES[case]
    refused(setup, build(setup), fragment, capsys)


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
                                  "store: another application's DuckDB file", "rescore: --as with an escape sequence",
                                  "model: config of 3 layers over 12-layer weights", "model: config wider than its weights",
                                  "experiment: prompt longer than the text tower"])
def test_bad_input_as_a_real_process_prints_only_the_error_line(setup, case):
    argv = CASES[case][0](setup)
    before = snapshot(setup.tmp)
    result = cli_process(*argv)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stderr.strip().isprintable(), repr(result.stderr)
    assert snapshot(setup.tmp) == before


# --------------------------------------------------------------------------------------------------
# Store paths another user owns. Permissions do not stop root, so as root the files are given to user
# nobody and the command runs in a process that has dropped the capabilities that bypass permission checks.

NOBODY = 65534
CAPS_OVER_PERMISSIONS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_root_powers() -> None:
    """This process (a forked command's, before it runs) loses CAPS_OVER_PERMISSIONS, effective and permitted:
    root, still, but the files' modes now apply to it (the tests' messages say so, or they fail)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in CAPS_OVER_PERMISSIONS:  # all in the first word
        data[0].effective &= ~(1 << cap)
        data[0].permitted &= ~(1 << cap)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


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
        # a process of its own (forked) without root's powers over permissions
        result = cli_forked("run", str(exp), "--no-progress", setup=_drop_root_powers if os.geteuid() == 0 else None)
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
    foreign_duckdb(db, ("accounts", "run_t"))
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
# Names and prompts shown back; prompts cut on purpose; non-finite results part way.


def test_list_escapes_names_stored_before_names_were_checked(setup, capsys):
    from compute.config import load_experiment
    from compute.runner import run

    run(load_experiment(setup.experiment()), progress=False, echo=lambda _: None)
    with duckdb.connect(str(setup.db)) as con:  # a store made before names were checked (or by another tool)
        con.execute("UPDATE run_t SET run = ?", ["t\x1b[2J\x1b[31mred\u202e"])
    assert main(["list", "--db", str(setup.db)]) == 0
    out = capsys.readouterr().out
    assert "t\\x1b[2J\\x1b[31mred\\u202e" in out and "\x1b" not in out and "\u202e" not in out
    assert main(["delete", "t\x1b[2J", "--db", str(setup.db)]) == 2  # an error line echoes the name escaped
    err = capsys.readouterr().err
    assert err.startswith("error: no run named 't\\x1b[2J'") and "\x1b" not in err


def test_every_verb_that_names_a_missing_run_says_the_same_line(dash_store, tmp_path, capsys):
    """delete, rescore, screen and export name the store and the runs it holds, in one wording."""
    db = tmp_path / "copy.duckdb"  # delete opens the store for writing: a copy, not the session's store
    shutil.copy(dash_store, db)
    prompts = tmp_path / "p.toml"
    prompts.write_text('[[prompts]]\ntext = "a photo of a cat"\nlabel = "cat"\n')
    for argv in (["delete", "nope"], ["rescore", "--run", "nope", "--prompts", str(prompts), "--as", "new"],
                 ["screen", "--run", "nope", "--top", "3"], ["export", "--run", "nope", "--out", str(tmp_path / "o")]):
        assert main([*argv, "--db", str(db)]) == 2, argv
        assert capsys.readouterr().err == f"error: no run named 'nope' in {db} (runs: tiny, tiny-singles)\n", argv
    assert not (tmp_path / "o").exists()  # nothing written


def test_truncate_prompts_is_an_opt_in_that_runs_cut_prompts_and_is_stored(setup, capsys):
    long_cat, long_dog = LONG + " cat", LONG + " cat dog"  # the same first 32 tokens would tie: one long prompt
    exp = _model_key(setup.experiment(prompts=[("a photo of a dog", "dog"), (long_cat, "cat")]), "truncate_prompts = true")
    assert main(["run", str(exp), "--no-progress"]) == 0
    config = json.loads(sql(setup.db, "SELECT config FROM runs")[0][0])
    assert config["model"]["truncate_prompts"] is True
    assert "truncate_prompts" not in config["identity"]  # the same results either way once prompts pass
    prompts = setup.tmp / "p.toml"
    prompts.write_text(f'[[prompts]]\ntext = "{long_dog}"\nlabel = "dog"\n[[prompts]]\ntext = "a photo of a cat"\n'
                       f'label = "cat"\n')
    capsys.readouterr()
    # the parent opted in, so its rescore does too; a parent that did not needs --truncate-prompts
    assert main(["rescore", "--run", "t", "--prompts", str(prompts), "--as", "r", "--db", str(setup.db),
                 "--no-progress"]) == 0
    plain = setup.experiment("plain.toml", name="plain")
    assert main(["run", str(plain), "--no-progress"]) == 0
    capsys.readouterr()
    args = ["rescore", "--run", "plain", "--prompts", str(prompts), "--as", "r2", "--db", str(setup.db), "--no-progress"]
    assert main(args) == 2
    assert "set --truncate-prompts to cut longer prompts at 32 tokens" in capsys.readouterr().err
    assert main([*args, "--truncate-prompts"]) == 0
    assert json.loads(sql(setup.db, "SELECT config FROM runs WHERE run = 'r2'")[0][0])["model"]["truncate_prompts"]


def test_non_finite_results_part_way_stop_the_run_before_that_batch_is_written(setup, monkeypatch, capsys):
    import torch

    from compute import engine

    original = engine.SweepEngine.embeddings
    calls = []

    def overflowing(self, pixel_values, tap=None):  # the second batch overflows under one ablation, as float16 can
        out = original(self, pixel_values, tap)
        calls.append(len(pixel_values))
        if len(calls) == 2:
            victim = next(a for a in out if a.label == "identity:5")
            out[victim] = torch.full_like(out[victim], float("inf"))
        return out

    monkeypatch.setattr(engine.SweepEngine, "embeddings", overflowing)
    exp = setup.experiment(extra=("identity:5", "zero:2"))
    capsys.readouterr()
    assert main(["run", str(exp), "--no-progress", "--workers", "0"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: model {setup.model} gives non-finite image embeddings "
                                                   "(infinity) under ablation 'identity:5' for image(s) "), lines
    assert lines[0].endswith(": this batch was not written; the run stays incomplete (run in float32, or leave out "
                             "that ablation)")
    ids = [i for (i,) in sql(setup.db, "SELECT image_id FROM images ORDER BY image_id")]
    first, second = ids[:4], ids[4:8]
    assert f"for image(s) {', '.join(map(str, second))}:" in lines[0]
    # the batch before it was committed whole; nothing of the failing batch (or after it) was written
    assert sql(setup.db, "SELECT DISTINCT image_id FROM selections ORDER BY 1") == [(i,) for i in first]
    assert sql(setup.db, "SELECT COUNT(*) FROM scores WHERE NOT isfinite(logit)") == [(0,)]
    assert sql(setup.db, "SELECT status FROM runs") == [("running",)]


# Image files: what the model is shown, what is read at all, and how large. One conversion to RGB (the image
# processor's own: transparency onto white; 16-bit scaled to 8 bits), regular files only, at most
# compute.dataset.MAX_PIXELS pixels. (The workers' pixels on every mode: test_pipeline.py.)


def _reference(path: Path) -> Image.Image:
    """The decoded file as the processor is to see it, built here without compute.dataset: 16-bit samples
    scaled by their high byte, everything else left to the processor's own conversion."""
    image = Image.open(path)
    image.load()
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    return image


def _transparent_and_deep(images: Path) -> None:
    """Images 1-4 of a make_coco folder become an RGBA, an LA, a palette-with-alpha and a 16-bit PNG (the name
    keeps its .jpg: decoders go by content)."""
    rng = np.random.default_rng(3)
    for i, mode in enumerate(["RGBA", "LA", "P", "I;16"], start=1):
        path = images / f"{i:012d}.jpg"
        rgb = Image.open(path).convert("RGB")
        w, h = rgb.size
        alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        if mode == "RGBA":
            image = rgb.copy()
            image.putalpha(alpha)
        elif mode == "LA":
            image = rgb.convert("L")
            image.putalpha(alpha)
        elif mode == "P":
            image = rgb.quantize(16)
            image.info["transparency"] = bytes(range(0, 256, 16))
        else:
            image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        image.save(path, "PNG", **({"transparency": image.info["transparency"]} if mode == "P" else {}))


def test_transparent_and_16_bit_images_are_scored_and_drawn_on_the_processors_pixels(tiny_clip, tmp_path, capsys):
    from transformers import CLIPModel, CLIPProcessor

    from analysis.overlays import image_maps
    from compute.models import load_clip, seen_image

    coco = make_coco(tmp_path / "coco", n=6)
    _transparent_and_deep(coco / "images")
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, sweep="none")
    assert main(["run", str(exp), "--no-progress", "--workers", "2"]) == 0
    rows = sql(db, """SELECT i.path, p.prompt, s.logit FROM score_t s
                      JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
                      JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
                      ORDER BY s.image_id, s.prompt_id""")
    paths = list(dict.fromkeys(r[0] for r in rows))
    prompts = list(dict.fromkeys(r[1] for r in rows))
    stored = torch.tensor([r[2] for r in rows]).view(len(paths), len(prompts))
    assert len(paths) == 6 and not sql(db, "SELECT * FROM errors")

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip, **BACKEND)

    def own_logits(images: list[Image.Image]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**processor(text=prompts, images=images, padding=True, return_tensors="pt")).logits_per_image

    references = [_reference(Path(p)) for p in paths]
    torch.testing.assert_close(stored, own_logits(references), atol=1e-4, rtol=1e-5)
    # The old conversion (PIL's convert("RGB"): alpha dropped, 16 bits clipped) scores other pixels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL: a palette's alpha table is dropped by convert("RGB")
        old = own_logits([Image.open(p).convert("RGB") for p in paths])
    assert (old[:4] - stored[:4]).abs().amax(dim=1).min() > 1e-3 and torch.allclose(old[4:], stored[4:], atol=1e-4)
    # The Image page and export --image draw the very image the run scored.
    clip = load_clip(str(tiny_clip), device="cpu")
    for path, reference in zip(paths, references, strict=True):
        seen = seen_image(clip, processor.image_processor(images=[reference], return_tensors="pt")["pixel_values"][0])
        assert np.array_equal(image_maps(clip, path, "baseline").picture, seen), path


@pytest.mark.slow
def test_image_files_that_are_not_regular_files_are_error_rows_never_a_hang(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=9)
    images = coco / "images"

    def path(i: int) -> Path:
        p = images / f"{i:012d}.jpg"
        p.unlink()
        return p

    kinds = {2: "a FIFO", 3: "a socket", 4: "a folder", 6: "a FIFO"}
    os.mkfifo(path(2))  # opening it for reading would wait for a writer forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path(3)))
    path(4).mkdir()
    os.mkfifo(images / "pipe")
    path(6).symlink_to(images / "pipe")  # a link that stays inside the folder, to a FIFO
    try:  # a device node (the one /dev/zero is): needs CAP_MKNOD
        os.mknod(images / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        os.replace(images / "zero", images / f"{5:012d}.jpg")
        kinds[5] = "a character device"
    except PermissionError:
        pass
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, tmp_path / "r.duckdb", sweep="none")
    try:
        result = cli("run", str(exp), "--no-progress", "--workers", "2", timeout=240)  # a hang fails here
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{len(kinds)} image(s) could not be read" in result.stdout
    errors = sql(tmp_path / "r.duckdb", "SELECT image_id, stage, message FROM errors ORDER BY image_id")
    assert errors == [(i, "load", f"{i:012d}.jpg is not a regular file ({kind}): not read")
                      for i, kind in sorted(kinds.items())]
    scored = {i for (i,) in sql(tmp_path / "r.duckdb", "SELECT DISTINCT image_id FROM selections")}
    assert scored == set(range(1, 10)) - set(kinds)


def test_an_image_of_too_many_pixels_is_an_error_row_and_no_warning_is_printed(tiny_clip, tmp_path, capfd):
    coco = make_coco(tmp_path / "coco", n=5)
    images = coco / "images"
    Image.new("L", (12000, 12000)).save(images / f"{2:012d}.jpg", "PNG")  # 144 MP in a small file
    Image.new("L", (9000, 9000)).save(images / f"{3:012d}.jpg", "PNG")  # 81 MP: under PIL's own limit
    assert (images / f"{2:012d}.jpg").stat().st_size < 300_000
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, sweep="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", str(exp), "--no-progress", "--workers", "2"]) == 0
    out, err = capfd.readouterr()  # the workers' stderr too (they write to the same descriptor)
    assert "DecompressionBomb" not in out + err and "Warning" not in err, err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    limit = "more than the 67,108,864 an image may have (compute.dataset.MAX_PIXELS): not decoded"
    assert sql(db, "SELECT image_id, message FROM errors ORDER BY 1") == [
        (2, f"{2:012d}.jpg is 144,000,000 pixels, {limit}"),
        (3, f"{3:012d}.jpg is 9,000 x 9,000 = 81,000,000 pixels, {limit}")]
    assert {i for (i,) in sql(db, "SELECT DISTINCT image_id FROM selections")} == {1, 4, 5}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_killed_run_leaves_no_decode_worker_behind_even_one_blocked_in_a_read(tiny_clip, tmp_path, monkeypatch):
    """A worker made to block in a read (a FIFO opened behind the regular-file check's back) dies with the
    process that started it, killed with SIGKILL: no orphan keeps waiting."""
    import multiprocessing

    from transformers import AutoImageProcessor

    from compute import loader as loader_module
    from compute.dataset import ImageRecord

    fifo, pids = tmp_path / "pipe", tmp_path / "pids"
    os.mkfifo(fifo)

    def blocking_load(recipe, record):
        with open(fifo, "rb") as f:  # no writer ever comes
            return f.read()

    monkeypatch.setattr(loader_module, "load", blocking_load)  # inherited by the forks below
    processor = AutoImageProcessor.from_pretrained(tiny_clip, **BACKEND)
    records = [ImageRecord(1, "a.jpg", tmp_path / "a.jpg", ())]

    def a_run() -> None:
        with loader_module.Loader(processor, "cpu", torch.float32, 1, 1) as loader:
            loader.start()
            written = pids.with_suffix(".part")  # renamed whole: the test never reads it half written
            written.write_text(" ".join(map(str, loader.pids)))
            written.rename(pids)
            list(loader.batches(records))  # waits for the blocked worker

    run = multiprocessing.get_context("fork").Process(target=a_run)
    run.start()
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = int(pids.read_text())
        time.sleep(1.0)  # the worker has its task and sits in open(fifo)
        assert _alive(worker)
        os.kill(run.pid, signal.SIGKILL)
        run.join(10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the decode worker outlived its run"
    finally:
        if run.is_alive():
            run.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize("listed", ["a FIFO", "/etc/passwd", "/dev/zero", "a missing file", "nothing"])
def test_export_image_of_a_file_that_cannot_be_read_is_one_line(setup, real_store, listed, capsys):
    db = setup.tmp / "store.duckdb"
    shutil.copy(real_store, db)
    path = {"a FIFO": str(setup.tmp / "gone.jpg"), "/etc/passwd": "/etc/passwd", "/dev/zero": "/dev/zero",
            "a missing file": str(setup.tmp / "missing.jpg"), "nothing": ""}[listed]
    if listed == "a FIFO":  # the image file was replaced after the run
        os.mkfifo(path)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE image_t SET path = ? WHERE image_id = 3", [path])
    fragment = {"a FIFO": "gone.jpg is not a regular file (a FIFO)", "/etc/passwd": "cannot decode passwd: not an image",
                "/dev/zero": "zero is not a regular file (a character device)", "a missing file": "file not found",
                "nothing": "was never read (its file lies outside the images folder)"}[listed]
    out = setup.tmp.parent / "pack"
    line = refused(setup, ["export", "--run", "t", "--db", str(db), "--out", str(out), "--image", "3"], fragment, capsys)
    assert line.startswith("error: image 3 of run 't' ")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# The store file: damaged (bytes changed on disk, cut short) or not a store at all, for every verb that opens it.
# One line, exit 2, the file byte-identical, no write-ahead log left beside it.


@pytest.fixture(scope="module")
def real_store(tiny_clip, tmp_path_factory) -> Path:
    """A store of this tool with one complete run "t" (10 images, the paper sweep). Tests copy it."""
    from compute.config import load_experiment
    from compute.runner import run

    tmp = tmp_path_factory.mktemp("real-store")
    exp = write_experiment(tmp / "e.toml", tiny_clip, make_coco(tmp / "coco", n=10), tmp / "s.duckdb")
    run(load_experiment(exp), progress=False, echo=lambda _: None)
    return tmp / "s.duckdb"




@pytest.mark.parametrize("verb", ["list", "delete", "export", "run"])
@pytest.mark.parametrize("damage", list(STORE_DAMAGE))
def test_a_damaged_store_is_one_line_for_every_verb_and_stays_byte_identical(setup, real_store, damage, verb, capsys):
    db = setup.tmp / "store.duckdb"
    shutil.copy(real_store, db)
    make, fragment = STORE_DAMAGE[damage]
    make(db)
    out = setup.tmp.parent / "pack"
    argv = {"list": ["list", "--db", str(db)], "delete": ["delete", "t", "--db", str(db)],
            "export": ["export", "--run", "t", "--out", str(out), "--db", str(db)],
            "run": setup.run("--db", str(db))}[verb]
    line = refused(setup, argv, fragment, capsys)
    if "damaged" in fragment:
        assert line.startswith(f"error: the store {db} is damaged (") and "it was left as it is" in line
    assert "the store is valid" not in line
    assert not out.exists() and not Path(f"{db}.wal").exists()


def test_the_store_check_reads_every_block_of_data(real_store, tmp_path):
    """Every block a table's values live in is read by the check before a write (a count alone would not)."""
    from compute import storefile

    with duckdb.connect(str(real_store), read_only=True) as con:
        tables = [t for (t,) in con.execute(storefile.STORE_BASE_TABLES).fetchall()]
        blocks = {b for t in tables for (b,) in con.execute(
            f"SELECT DISTINCT block_id FROM pragma_storage_info('{t}') WHERE block_id >= 0").fetchall()}
        size, total = con.execute("SELECT block_size, total_blocks FROM pragma_database_size()").fetchone()
    headers = real_store.stat().st_size - total * size
    assert len(blocks) >= 3
    for block in sorted(blocks):
        db = tmp_path / f"b{block}.duckdb"
        shutil.copy(real_store, db)
        flip(db, headers + block * size + 1000)
        storefile._verified.clear()
        with pytest.raises(StoreError, match=f"is damaged .*at byte {headers + block * size:,}"):
            storefile.check_store(db, write=True)


# --------------------------------------------------------------------------------------------------
# Output folders, the run's lock file, signals, Ray.


@pytest.mark.parametrize("case", ["an existing file", "a path under a file", "a folder in /proc", "/dev/null",
                                  "a FIFO"])
def test_export_out_that_cannot_be_a_folder_is_one_line(setup, real_store, case, capsys):
    db = setup.tmp / "store.duckdb"
    shutil.copy(real_store, db)
    if case == "a FIFO":
        os.mkfifo(setup.tmp / "fifo")
    out, fragment = {"an existing file": (db, "store.duckdb is a file, not a folder"),
                     "a path under a file": (db / "pack", "store.duckdb is a file, not a folder"),
                     "a folder in /proc": (Path("/proc/clip-lab-pack"), "/proc/clip-lab-pack is not writable"),
                     "/dev/null": (Path("/dev/null"), "--out /dev/null is a character device, not a folder"),
                     "a FIFO": (setup.tmp / "fifo", "fifo is a FIFO, not a folder")}[case]
    refused(setup, ["export", "--run", "t", "--db", str(db), "--out", str(out)], fragment, capsys)


@pytest.mark.parametrize("planted", ["a link to another file", "a link to nothing", "a FIFO", "a folder"])
def test_the_run_lock_never_follows_a_link_nor_waits_on_a_fifo(setup, planted, capsys):
    from compute.runlock import lock_path

    victim = setup.tmp / "victim.txt"
    victim.write_text("someone else's file\n")
    lock = lock_path(setup.db, "t")
    what = {"a link to another file": "a symbolic link", "a link to nothing": "a symbolic link",
            "a FIFO": "a FIFO or a device", "a folder": "a folder"}[planted]
    if planted == "a link to another file":
        lock.symlink_to(victim)
    elif planted == "a link to nothing":
        lock.symlink_to(setup.tmp / "created-by-nobody")
    elif planted == "a FIFO":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    refused(setup, setup.run(), f"the run's lock file {lock} is {what}, not a regular file", capsys)
    assert victim.read_text() == "someone else's file\n"


def _count(db: Path) -> int:
    try:
        return sql(db, "SELECT COUNT(*) FROM selection_t")[0][0]
    except Exception:  # locked by the writer, or not created yet
        return 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
def test_sigterm_during_a_run_ends_like_ctrl_c(tiny_clip, tmp_path):
    n = 40  # 20 batches: the stop comes just after the first is committed, while both workers decode
    coco = make_coco(tmp_path / "coco", n=n, size=(320, 240), photo=True)
    db = tmp_path / "w.duckdb"
    exp = write_experiment(tmp_path / "w.toml", tiny_clip, coco, db, batch_size=2, categories=())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = ["run", str(exp), "--no-progress", "--workers", "2"]
    cmd = [sys.executable, "-m", "compute", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(db) == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # a batch is committed: the workers are at work
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        workers = [int(c) for c in kids.read_text().split()] if kids.exists() else []
        assert proc.poll() is None and len(workers) == 2, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: what was committed is kept; run the same command again to "
                                        "resume"], err
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a decode worker outlived the run"
    assert 0 < _count(db) < n * 21
    again = cli(*args)  # the same command resumes (in this process: the stop above is what needs a process)
    assert again.returncode == 0, again.stderr
    assert "resuming run" in again.stdout + again.stderr
    assert sql(db, "SELECT COUNT(*), COUNT(DISTINCT (image_id, ablation)) FROM selections") == [(n * 21, n * 21)]


def test_an_unreachable_ray_cluster_is_one_line_before_any_store_or_run_exists(setup, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused(setup, setup.run("--ray", f"127.0.0.1:{port}"), f"cannot reach Ray at 127.0.0.1:{port}: Connection refused",
            capsys, code=1)


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
