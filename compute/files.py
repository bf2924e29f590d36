"""Small file-system helpers the run path, fetch, export and the demo share."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from compute.errors import InputError
from compute.validation import file_kind


def write_json_atomic(path: Path, doc: Any, **dump_options: Any) -> None:
    """Write ``doc`` as JSON to ``path`` so that a reader (or a crash) never sees half a file: a sibling
    temporary file, then an atomic rename over ``path``. ``dump_options`` go to ``json.dump``."""
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(doc, f, **dump_options)
        f.write("\n")
    os.replace(part, path)


def check_out_folder(path: Path, flag: str = "--out") -> None:
    """InputError (one line) unless ``path`` is a folder files can be written into, or can become one: not a
    file, not under a file, on a file system that takes new files (a folder is made and removed in the
    deepest folder that exists, which also refuses /proc and read-only mounts). Leaves every file as it was."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{flag} {path} is a link to nothing: give a folder")
    folder = path
    while not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            what = f"{flag} {path} is" if folder == path else f"{flag} {path}: {folder} is"
            try:
                kind = file_kind(folder.stat().st_mode)  # /dev/null: a character device
            except OSError:  # a link to nothing above the folder
                kind = "a link to nothing"
            raise InputError(f"{what} {kind}, not a folder: give a folder (it is created if needed)")
        if folder == folder.parent:
            break
        folder = folder.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".clip-lab-probe-", dir=folder))
    except OSError as e:
        where = "" if folder == path else f": nothing can be created in {folder}"
        raise InputError(f"{flag} {path} is not writable{where} ({(e.strerror or str(e)).lower()})") from None
