"""One validation pass over the input files, before anything is computed or written.

Every check raises ``InputError`` for the first offender, in one line that names the file and what is
wrong with it: text that is not UTF-8, values of the wrong type, ids that repeat or do not fit the store's
64-bit columns, file names that cannot be a file name. The sizes the experiment asks for are checked here
too, against limits that keep a typo from allocating the machine away.

Text a person gives and sees again (a run name, a prompt's text and label) passes ``check_line`` once,
wherever it comes from (the experiment file, a prompts file, ``rescore --as``): no control character, and
not blank. ``printable`` escapes whatever is not printable in a line shown on a terminal (the command
line's error lines, ``list``), so text already stored cannot move the cursor or clear the screen.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

from compute.errors import InputError

MAX_ID = 2**63 - 1  # ids are BIGINT in the store
MAX_IMAGES = 2**31 - 1  # run_t.n_images is INTEGER
MAX_PROMPTS = 2**15  # prompt_id is SMALLINT, from 0
MAX_ABLATIONS = 2**15  # ablation_id is SMALLINT, from 0
MAX_BATCH = 65_536  # images (or captions) per batch: far beyond any accelerator's memory
MAX_NEW_TOKENS = 1_024  # caption length: beyond every captioner's context
MAX_BEAMS = 64
MAX_THREADS = 4_096
MAX_WORKERS = 1_024  # decode processes
MAX_ACTORS = 4_096  # Ray actors, each holding a model
MAX_GPUS_PER_ACTOR = 64  # more than any node holds
MAX_FILE_NAME = 4_096  # PATH_MAX
MAX_RUN_NAME = 100
LINE_BREAKS = ("Cc", "Zl", "Zp")  # C0, DEL and C1 controls; the line and paragraph separators


FILE_KINDS = ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a path is, for an error line ("a file", "a folder", "a FIFO", ...)."""
    return next((kind for test, kind in FILE_KINDS if test(mode)), "not a file")


class NotRegularFile(OSError):
    """A path that is a folder, a FIFO, a device or a socket where a regular file is wanted; ``kind`` says which."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a regular file ({kind})")
        self.kind = kind


def open_regular(path: Path | str) -> int:
    """A read descriptor of ``path`` when it is a regular file (links followed), else NotRegularFile; what
    os.stat and os.open raise otherwise (FileNotFoundError ...). Never opens what is not a regular file (a
    device could act on being opened), opens without blocking (a FIFO swapped in after the check cannot hang
    the open) and checks again once open."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(file_kind(mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket swapped in
            raise NotRegularFile("a socket") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(file_kind(mode))
    return fd


def read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file; InputError naming the file when it is missing, not a regular file (a folder,
    /dev/zero, a FIFO: never read, so never waited on), unreadable or not UTF-8."""
    path = Path(path)
    try:
        fd = open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{what} file not found: {path}") from None
    except NotRegularFile as e:
        raise InputError(f"{what} file {path} is not a regular file ({e.kind})") from None
    except OSError as e:
        raise InputError(f"{what} file {path} cannot be read ({e.strerror or e})") from None
    try:
        with open(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{what} file {path} cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{what} file {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} "
                         f"(offset {e.start}); save it as UTF-8") from None


def load_json(path: Path, what: str) -> Any:
    """A UTF-8 JSON file; InputError naming the file when it is not."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, and numbers of more than 4,300 digits
        raise InputError(f"{what} file {path} is not valid JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise InputError(f"{what} file {path} is not valid JSON (nested too deeply)") from None


# --------------------------------------------------------------------------------------------------
# COCO files.


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a float" if math.isfinite(value) else "not a number"
    if isinstance(value, str):
        return "a string"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def check_id(value: Any, where: str) -> int:
    """An id: an integer (not a boolean, float or string) from 0 to 2^63-1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{where} must be an integer, got {value!r} ({_kind(value)})")
    if not 0 <= value <= MAX_ID:
        digits = len(str(abs(value)))
        shown = value if digits <= 30 else f"a {digits}-digit number"
        raise InputError(f"{where} must be an integer from 0 to 2^63-1, got {shown}")
    return value


def check_text(value: Any, where: str, *, empty: bool = True) -> str:
    """A string that survives the trip to a file system and the store (no lone surrogates)."""
    if not isinstance(value, str):
        raise InputError(f"{where} must be a string, got {value!r:.80} ({_kind(value)})")
    if not empty and not value.strip():
        raise InputError(f"{where} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where} is not valid Unicode (a lone surrogate escape): {value!r:.80}") from None
    return value


def is_blank(text: str) -> bool:
    """Nothing a reader would see: only whitespace and invisible format characters (zero-width space and
    joiners, word joiner, byte-order mark, soft hyphen, direction marks)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def check_line(value: Any, where: str) -> str:
    """One line of text a person gives and will see again: a run name, a prompt's text or label.

    Ordinary Unicode and spaces are fine; a control character (C0, DEL, C1: an escape sequence, a tab, a
    newline) or a line or paragraph separator inside it is refused, and so is text that is empty or blank
    (only whitespace and zero-width characters). -> the text without surrounding whitespace.
    """
    text = check_text(value, where).strip()
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in LINE_BREAKS:
            raise InputError(f"{where} {text!r:.80} contains a control character (U+{ord(ch):04X} at position {i}): "
                             f"use printable text")
    if is_blank(text):
        raise InputError(f"{where} {value!r:.80} is empty or blank (only spaces or invisible characters)")
    return text


def check_run_name(value: Any, where: str) -> str:
    """A run's name (the experiment's ``name``, ``rescore --as``): a line (check_line) under 100 characters,
    printable throughout (no zero-width or other invisible character that would make two names look the
    same) and without '/'. -> the name, stripped."""
    name = check_line(value, where)
    if "/" in name or len(name) > MAX_RUN_NAME or not name.isprintable():
        raise InputError(f"{where} {name!r:.120} must be under {MAX_RUN_NAME} characters, printable, and contain "
                         f"no '/'")
    return name


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped as Python writes it (``\\x1b``,
    ``\\u200b``, ``\\n``), the plain space kept: safe to print on a terminal, and one line."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def check_file_name(value: Any, where: str) -> str:
    """An image's file name: a non-empty string a file system accepts. Where it points is checked when the
    image is opened (it must stay inside the images folder)."""
    name = check_text(value, where, empty=False)
    if "\x00" in name:
        raise InputError(f"{where} contains a NUL byte: {name!r:.80}")
    if len(name.encode("utf-8")) > MAX_FILE_NAME:
        raise InputError(f"{where} is longer than {MAX_FILE_NAME} bytes")
    return name


def _table_list(data: dict, key: str, where: str, required: bool) -> list:
    if key not in data:
        if required:
            raise InputError(f"{where} is not in COCO format (no {key!r} list)")
        return []
    items = data[key]
    if not isinstance(items, list):
        raise InputError(f"{where}: {key!r} must be a list, got {_kind(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{where}: {key}[{i}] must be an object, got {item!r:.80} ({_kind(item)})")
    return items


def check_coco(data: Any, path: Path, what: str) -> None:
    """A COCO instances or captions file, as parsed JSON: images with unique integer ids and string file
    names; categories with unique integer ids and names; annotations with integer ids that refer to listed
    images and categories, and (captions) a string caption."""
    where = f"{what} file {path}"
    if not isinstance(data, dict):
        raise InputError(f"{where} is not in COCO format (the top level is {_kind(data)}, not an object)")
    images = _table_list(data, "images", where, required=True)
    image_at: dict[int, int] = {}
    for i, img in enumerate(images):
        if "id" not in img:
            raise InputError(f"{where}: images[{i}] has no 'id'")
        image_id = check_id(img["id"], f"{where}: images[{i}].id")
        if image_id in image_at:
            raise InputError(f"{where}: images[{i}].id {image_id} repeats images[{image_at[image_id]}].id "
                             f"(image ids must be unique)")
        image_at[image_id] = i
        if "file_name" not in img:
            raise InputError(f"{where}: image {image_id} (images[{i}]) has no file_name")
        check_file_name(img["file_name"], f"{where}: images[{i}].file_name")

    categories = _table_list(data, "categories", where, required=False)
    category_at: dict[int, int] = {}
    for i, cat in enumerate(categories):
        if "id" not in cat or "name" not in cat:
            raise InputError(f"{where}: categories[{i}] needs an 'id' and a 'name'")
        cat_id = check_id(cat["id"], f"{where}: categories[{i}].id")
        if cat_id in category_at:
            raise InputError(f"{where}: categories[{i}].id {cat_id} repeats categories[{category_at[cat_id]}].id "
                             f"(category ids must be unique)")
        category_at[cat_id] = i
        check_text(cat["name"], f"{where}: categories[{i}].name", empty=False)
        if "supercategory" in cat:
            check_text(cat["supercategory"], f"{where}: categories[{i}].supercategory")

    for i, ann in enumerate(_table_list(data, "annotations", where, required=False)):
        at = f"{where}: annotations[{i}]"
        for key in ("id", "image_id"):
            if key not in ann:
                raise InputError(f"{at} has no {key!r}")
        check_id(ann["id"], f"{at}.id")
        if check_id(ann["image_id"], f"{at}.image_id") not in image_at:
            raise InputError(f"{at}.image_id {ann['image_id']} is not an id of the file's images")
        if "category_id" in ann:
            cat_id = check_id(ann["category_id"], f"{at}.category_id")
            if cat_id not in category_at:
                raise InputError(f"{at}.category_id {cat_id} is not an id of the file's categories")
        if "caption" in ann:
            check_text(ann["caption"], f"{at}.caption")
        if "category_id" not in ann and "caption" not in ann:
            raise InputError(f"{at} has neither a 'category_id' (instances) nor a 'caption' (captions)")


# --------------------------------------------------------------------------------------------------
# Sizes.


def check_count(value: int, where: str, maximum: int, why: str) -> int:
    """A positive integer no larger than ``maximum`` (checked before anything is sized from it)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where} must be a positive integer, got {value!r}")
    if value > maximum:
        raise InputError(f"{where} = {value} is too large: at most {maximum:,} ({why})")
    return value


def check_gpus(value: float, where: str) -> float:
    """GPUs per Ray actor: 0 (CPU actors), a fraction of one (actors share a GPU) or a whole number (Ray
    gives an actor a fraction of one GPU or whole GPUs)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InputError(f"{where} must be a number of GPUs from 0 to {MAX_GPUS_PER_ACTOR}, got {value!r}")
    if value > MAX_GPUS_PER_ACTOR:
        raise InputError(f"{where} = {value:g} is too large: at most {MAX_GPUS_PER_ACTOR} (GPUs per actor)")
    if value > 1 and value != int(value):
        raise InputError(f"{where} = {value:g}: above 1 it must be a whole number (Ray gives an actor a fraction "
                         f"of one GPU or whole GPUs)")
    return float(value)


# --------------------------------------------------------------------------------------------------
# TOML tables into dataclasses: every key declared, typed, none unknown (experiment and prompts files).


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The tables of a TOML file; InputError when it is missing, not UTF-8 or not TOML."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, and integers of more than 4,300 digits
        raise InputError(f"{path}: not valid TOML ({str(e)[:200]})") from None


def no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise InputError(f"unknown key {key!r} in {where} (known: {', '.join(sorted(known))})")


def table_of(cls: type, table: Any, where: str, required: set[str] = frozenset()) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking keys and value types."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise InputError(f"[{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    no_unknown(table, set(fields), f"[{where}]")
    for key in sorted(required):
        if key not in table:
            raise InputError(f"missing key {key!r} in [{where}]")
    values = {}
    for key, value in table.items():
        values[key] = typed(value, fields[key].type, f"{where}.{key}")
    return cls(**values)


def typed(value: Any, annotation: str, where: str) -> Any:
    # Annotations are strings (from __future__ import annotations); only a handful of types occur.
    base = annotation.replace(" | None", "")
    if base == "str":
        ok = isinstance(value, str)
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "Path":
        ok = isinstance(value, str)
        value = Path(value) if ok else value
    elif base == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif base == "str | list[str]":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    else:  # pragma: no cover - a new field type needs a branch here
        raise TypeError(f"unsupported config type {annotation} for {where}")
    if not ok:
        wanted = base.replace("list[str]", "a list of strings").replace(" | ", " or ").replace("bool", "true or false")
        raise InputError(f"{where} must be {wanted}, got {value!r}")
    return value


def check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise InputError(f"{where} = {value!r} is not one of: {', '.join(choices)}")
