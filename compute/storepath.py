"""Where the store lives and what a path or a failure means, before and after DuckDB opens it: the default
store, the checks a path passes before anything is opened (a directory, an SQLite file, not writable ...),
the I/O cause an error reports (a full disk), and what damage DuckDB found in a file's bytes. Pure
functions on paths and messages; compute.storefile opens the file with them.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from compute.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]
DB_ENV = "CLIP_LAB_DB"

DEFAULT_DB_TEXT = "$CLIP_LAB_DB, else data/results.duckdb"  # for --help texts


def default_db() -> Path:
    """The store every verb, the demo and the dashboard use unless told otherwise: $CLIP_LAB_DB, else
    data/results.duckdb of this checkout."""
    return Path(os.environ.get(DB_ENV) or ROOT / "data" / "results.duckdb").expanduser().resolve()


def resolve_db(path: str | Path | None) -> Path:
    """A store path given on a command line, or the default store when none was given."""
    return Path(path).expanduser().resolve() if path is not None else default_db()



SQLITE_MAGIC = b"SQLite format 3\x00"
DUCKDB_MAGIC = b"DUCK"  # at offset 8 of every DuckDB database file
# What an I/O failure says (DuckDB wraps the operating system's message): one line naming the cause.
IO_CAUSES = ("no space left on device", "disk quota exceeded", "read-only file system", "input/output error",
             "file too large", "permission denied", "could not write", "could not fsync", "could not truncate",
             "could not read", "database has been invalidated")
IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}


def check_path(db: Path, write: bool) -> None:
    """StoreError (one line) when ``db`` cannot be a store: a directory, not a regular file, unreadable, an
    SQLite file or anything else that is not a DuckDB file, or (``write``) not writable. Writes nothing."""
    db = Path(db)
    if db.is_dir():
        raise StoreError(f"store {db} is a directory; give a file path such as {db / 'results.duckdb'}")
    if db.exists():
        if not db.is_file():
            raise StoreError(f"store {db} is not a regular file")
        try:
            with open(db, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise StoreError(f"store {db} cannot be read: {_os_cause(e)}{_owner_hint(db)}") from None
        if head.startswith(SQLITE_MAGIC):
            raise StoreError(f"store {db} is an SQLite database, not a DuckDB store: choose another path")
        if head[8:12] != DUCKDB_MAGIC:
            raise StoreError(f"store {db} is not a DuckDB file ({'it is empty' if not head else 'unknown format'}):"
                             f" choose another path")
        if write and not os.access(db, os.W_OK):
            if _readonly_fs(db.parent):
                raise StoreError(f"store {db} is on a read-only file system")
            raise StoreError(f"store {db} is read-only (permission denied){_owner_hint(db)}")
        folder = db.parent
    else:
        if not write:
            raise StoreError(f"no store at {db}")
        folder = db.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise StoreError(f"cannot create store {db}: {folder} is not a folder")
    # DuckDB writes its write-ahead log beside the file, so the folder must be writable too.
    if write and not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write store {db}: folder {folder} is not writable{_readonly_fs(folder)}")


def _os_cause(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _owner_hint(db: Path) -> str:
    try:
        uid = db.stat().st_uid
    except OSError:
        return ""
    if uid == os.geteuid():
        return ""
    try:
        import pwd

        owner = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        owner = f"uid {uid}"
    return f"; it belongs to {owner}"


def _readonly_fs(folder: Path) -> str:
    try:
        return " (a read-only file system)" if os.statvfs(folder).f_flag & os.ST_RDONLY else ""
    except OSError:
        return ""


def io_cause(e: BaseException) -> str | None:
    """The I/O cause an exception reports (disk full, ...), or None when it is not an I/O failure (a damaged
    file is not one: see ``damage``)."""
    if isinstance(e, OSError):
        return _os_cause(e) if e.errno in IO_ERRNOS else None
    text = str(e).lower()
    if "could not read enough bytes" in text or "corrupt database file" in text:
        return None
    for cause in IO_CAUSES:
        if cause in text:
            return next((c for c in IO_CAUSES[:6] if c in text), cause)
    return None


# What DuckDB says when a file's bytes are not what it wrote: a block's checksum, a file that ends early.
_SHORT_READ = re.compile(r"could not read enough bytes.*?attempted to read (\d+) bytes from location (\d+)",
                         re.IGNORECASE | re.DOTALL)


def damage(db: Path, e: BaseException) -> str | None:
    """What is damaged, when ``e`` is DuckDB finding that ``db``'s bytes are not what it wrote; else None."""
    text = str(e).splitlines()[0] if str(e) else ""
    if (short := _SHORT_READ.search(text)) is not None:
        size = f"it ends at byte {os.stat(db).st_size:,}" if db.is_file() else "it ends early"
        return f"cut short: {size}, and its blocks go on to byte {int(short.group(1)) + int(short.group(2)):,} or further"
    if "corrupt database file" in text.lower():
        where = re.search(r"at location (\d+)", text)
        return "a block's checksum does not match its bytes" + (f" at byte {int(where.group(1)):,}" if where else "")
    return None


def damaged_text(db: Path, what: str) -> str:
    return f"the store {db} is damaged ({what}); it was left as it is: restore it from a backup, or choose another store path"
