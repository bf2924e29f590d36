"""The store as a file: where it lives, what may be opened, the connection, its schema version and migrations.

Concurrency: DuckDB lets one process write or several read, never both. The compute stage therefore
holds the file only for short sessions (the writer's, a few batches at most), and every connection, reader
or writer, retries for a while when the file is locked. A dashboard opened during a run sees the batches
committed so far. A process keeps one in-memory DuckDB and ATTACHes each store it opens to it (``_attach``):
building a DuckDB instance per open cost more CPU than most of the queries that followed.

The file knows itself: a marker table names the application and its schema version. ``connect`` refuses
(one line, nothing written) what is not a store this version may write: a directory, an SQLite file,
another application's DuckDB file, a newer schema; it migrates an older one in one transaction. Any change
to the tables' layout bumps SCHEMA_VERSION and adds a step to MIGRATIONS.

A damaged file (bytes changed on disk, a truncated copy) is refused the same way, as ``the store X is
damaged (...)``: DuckDB checksums every block and ``check_store`` reads every block of every table on a
read-only connection (``verify``, about 0.4 s per 100 MB) before the first write of a process, so a damaged
store is found before anything is written to it. DuckDB's index blocks are read only by the writes that
need them: damage there is found by that write, whose transaction is rolled back (exit code 1).

``compute.store`` re-exports what callers need (``store.connect``, ``store.transaction`` ...), so the
rest of the project opens a store through one name.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from compute.errors import StoreError, StoreIOError
from compute.killpoints import kill_point
from compute.storepath import check_path, damage, damaged_text, io_cause

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
SCHEMA_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA_FILE.read_text()))
LOCK_TIMEOUT_S = 120.0

# The store knows itself: its marker table names the application and the schema version of its layout.
# Version 1 (until the hardening issue) kept only meta_t(schema_version = 1), no application name.
APPLICATION = "CLIP Attention Lab store"
SCHEMA_VERSION = 3
MARKER = "clip_attention_lab_t"  # the marker table's name: no other application uses it
READABLE_FROM = 1  # read-only connections accept this version and later (their tables are what readers read)
# DuckDB's on-disk format: a store is created readable by DuckDB 1.1.0 and later (DuckDB 2.0 otherwise writes
# a format only 2.0 reads; 1.0.x cannot read the primary keys' index data whatever this says). Measured with
# tools/storage_versions.py on the demo's rows: the same size within 1% and the same write speed within noise
# as 2.0's own format (docs/store.md). A file keeps the format it was created with: stores created before
# this setting stay 2.0-only until copied (docs/store.md gives the one-line copy).
STORAGE_VERSION = "v1.1.0"


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


# --------------------------------------------------------------------------------------------------
# The connection, and what a failure means (the path checks and causes: compute.storepath).

def _io_error(db: Path, e: BaseException) -> StoreIOError:
    return StoreIOError(f"store {db}: {io_cause(e)}. What was committed is kept and the store is valid; "
                        f"fix the cause (free space) and run the same command again to resume")


# One DuckDB per process, to which stores are ATTACHed. duckdb.connect builds a whole database instance (its
# function catalog: ~30 ms of CPU here, even for an empty file), which a process that opens a store many
# times (the dashboard's script runs, a run's writer sessions) paid at each open; an ATTACH to the instance
# the process keeps costs ~1 ms for an empty file (an open of a store with its checks: 8-10 ms, make bench's
# store section). The file itself is handled as by a connect of its own: ATTACH takes the
# file's lock (a conflict is the same IOException) and replays its log, DETACH, when the last connection to
# the store in this process closes, checkpoints and releases the lock. Connections are cursors of the
# instance, each with the store as its default database (USE).

_host_lock = threading.Lock()  # guards what follows: the dashboard opens stores from several threads
_host: duckdb.DuckDBPyConnection | None = None
_attached: dict[str, list] = {}  # real path -> [alias, read_only, open connections]
_owners: dict[int, tuple[str, list, duckdb.DuckDBPyConnection]] = {}  # id(connection) -> (path, its entry, it)
_aliases = itertools.count()


def _forget_host() -> None:
    """In a forked child: the parent's instance is never used nor freed here (its threads did not survive
    the fork, and freeing it crashes the child); the child opens its own."""
    global _host, _host_lock
    for obj in [_host, *(con for *_, con in _owners.values())]:
        if obj is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))  # a reference nothing drops: never freed
    _host, _host_lock = None, threading.Lock()
    _attached.clear()
    _owners.clear()


os.register_at_fork(after_in_child=_forget_host)


def _new_host() -> duckdb.DuckDBPyConnection:
    # stores it creates are readable by DuckDB 1.1 (STORAGE_VERSION); it spills to the temp folder, not the cwd
    spill = os.path.join(tempfile.gettempdir(), f"clip-lab-duckdb-{os.getpid()}")
    return duckdb.connect(":memory:", config={"storage_compatibility_version": STORAGE_VERSION, "temp_directory": spill})


def _attach(db: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection whose default database is ``db``, attached once per process while connections use it.
    duckdb.Error as duckdb.connect raises it (a lock held elsewhere, a damaged or foreign file)."""
    global _host
    key = os.path.realpath(db)
    with _host_lock:
        if _host is None:
            _host = _new_host()
            _attached.clear()
        con = _host.cursor()
        try:
            entry = _attached.get(key)
            if entry is None:
                alias = f"store_{next(_aliases)}"
                literal = "'" + key.replace("'", "''") + "'"
                con.execute(f"ATTACH {literal} AS {alias}" + (" (READ_ONLY)" if read_only else ""))
                entry = _attached[key] = [alias, read_only, 0]
            elif entry[1] != read_only:  # as duckdb.connect refused a second configuration of one open file
                raise duckdb.ConnectionException(f"Can't open a connection to same database file with a "
                                                 f"different configuration than existing connections ({key})")
            con.execute(f"USE {entry[0]}")
        except BaseException:
            con.close()
            raise
        entry[2] += 1
        _owners[id(con)] = (key, entry, con)
    return con


def _check_unless_open(db: Path, write: bool) -> None:
    """``check_path``, unless this process has ``db`` attached (a store, then): its check reads the file's
    header, and closing that descriptor would drop every POSIX lock this process holds on the file, DuckDB's
    included, letting another process write under this one's readers. Under the lock that attaches."""
    with _host_lock:
        if os.path.realpath(db) not in _attached:
            check_path(db, write)


def _close(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection of ``_attach``; the last one to its store detaches it (a checkpoint: like closing a
    database, it can meet a full disk). A failed detach leaves this process a new instance for later opens."""
    global _host
    with _host_lock:
        key, entry, _ = _owners.pop(id(con), (None, None, None))
        try:
            if entry is not None:
                entry[2] -= 1
                if entry[2] == 0:
                    if _attached.get(key) is entry:  # (not if a failed detach has replaced the instance since)
                        del _attached[key]
                    try:
                        con.execute("USE memory")
                        con.execute(f"DETACH {entry[0]}")
                    except BaseException:
                        _host = None  # what it still holds stays with it; the next open starts afresh
                        raise
        finally:
            con.close()


def _open(db: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """``_attach``, retrying while another process holds the file; open failures as one line. ``_close`` it."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return _attach(db, read_only)
        except duckdb.Error as e:  # a damaged header is a plain duckdb.Error, the rest IOException
            if (what := damage(db, e)) is not None:
                raise StoreError(damaged_text(db, what)) from None
            if isinstance(e, duckdb.IOException) and _is_lock_error(e):
                if time.monotonic() <= deadline:
                    time.sleep(delay * (0.5 + random.random()))  # jitter: readers and the writer do not lockstep
                    delay = min(delay * 1.5, 0.5)
                    continue
                raise StoreIOError(f"store {db} is busy: another process has held it for {timeout:.0f} s; "
                                   f"try again when it is done") from None
            text = str(e)
            if "newer" in text.lower() or "version" in text.lower():
                raise StoreError(f"store {db} was written by another version of DuckDB ({text.splitlines()[0]}); "
                                 f"use the duckdb version that wrote it") from None
            if io_cause(e) is not None and "permission denied" not in text.lower():
                raise _io_error(db, e) from None
            raise StoreError(f"cannot open store {db}: {text.splitlines()[0]}") from None


@dataclass(frozen=True)
class StoreKind:
    kind: str  # "empty" | "ours" | "foreign"
    version: int = 0
    tables: tuple[str, ...] = ()


def identify(con: duckdb.DuckDBPyConnection) -> StoreKind:
    """What the open file is: empty, this application's store (with its schema version) or another's."""
    tables = tuple(sorted(r[0] for r in con.execute(STORE_TABLES).fetchall()))
    if not tables:
        return StoreKind("empty")
    if MARKER in tables:
        marks = dict(con.execute(f"SELECT key, value FROM {MARKER}").fetchall())
        if marks.get("application") == APPLICATION and str(marks.get("schema_version", "")).isdigit():
            return StoreKind("ours", int(marks["schema_version"]), tables)
    elif {"meta_t", "run_t", "selection_t", "score_t"} <= set(tables):  # version 1, before the marker
        row = con.execute("SELECT value FROM meta_t WHERE key = 'schema_version'").fetchone()
        if row and row[0] == "1":
            return StoreKind("ours", 1, tables)
    return StoreKind("foreign", 0, tables)


STORE_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"


def check_kind(db: Path, found: StoreKind, write: bool) -> None:
    """StoreError unless the file is a store this version may open (for writing: migrate or create)."""
    if found.kind == "foreign":
        shown = ", ".join(found.tables[:5]) + (", ..." if len(found.tables) > 5 else "")
        raise StoreError(f"{db} is a DuckDB file of another application (tables: {shown}; no CLIP Attention "
                         f"Lab marker): it was left untouched; choose another store path")
    if found.kind == "ours" and found.version > SCHEMA_VERSION:
        raise StoreError(f"store {db} was written by a newer version of CLIP Attention Lab (schema version "
                         f"{found.version}; this one knows up to {SCHEMA_VERSION}); upgrade to use it")
    if not write:
        if found.kind == "empty":
            raise StoreError(f"store {db} holds no runs yet (an empty DuckDB file)")
        if found.version < READABLE_FROM:
            raise StoreError(f"store {db} has schema version {found.version}, too old to read: open it for "
                             f"writing once (python -m compute list is enough after a run) to migrate it")


_verified: set[tuple[int, int]] = set()  # (device, inode) of files this process found to be its stores


def check_store(db: Path, write: bool, timeout: float = LOCK_TIMEOUT_S) -> None:
    """Every check ``connect`` makes before it writes, on a read-only look at the file: path problems,
    another application's file, a newer schema. StoreError (one line) on the first; writes nothing."""
    db = Path(db)
    try:
        st = db.stat()
    except OSError:
        st = None
    if st is not None and (st.st_dev, st.st_ino) in _verified:
        return  # checked once in this process: a later failure is an I/O failure, reported as such
    _check_unless_open(db, write)
    if st is None:
        return
    con = _open(db, read_only=True, timeout=timeout)  # read-only: a foreign file's pending log is not replayed
    try:
        found = identify(con)
        check_kind(db, found, write)
        if found.kind == "ours":
            verify(con)
    except duckdb.Error as e:
        if (what := damage(db, e)) is not None:
            raise StoreError(damaged_text(db, what)) from None
        raise StoreError(f"cannot read store {db}: {str(e).splitlines()[0]}") from None
    finally:
        _close(con)
    _verified.add((st.st_dev, st.st_ino))


def verify(con: duckdb.DuckDBPyConnection) -> None:
    """Read every block of every table's columns (DuckDB checks each block's checksum as it reads it):
    duckdb.Error when one is damaged or missing. A hash of every value, since a count or a min can be
    answered from the row groups' statistics without reading a block."""
    for (table,) in con.execute(STORE_BASE_TABLES).fetchall():
        quoted = '"' + table.replace('"', '""') + '"'  # a name from the file's own catalog
        con.execute(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {quoted}").fetchall()


STORE_BASE_TABLES = ("SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
                     "AND table_type = 'BASE TABLE'")


@contextmanager
def connect(db: str | Path, read_only: bool = False, timeout: float = LOCK_TIMEOUT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open ``db`` (retrying while another process holds it), yield, always close.

    Before anything is written the file is checked (``check_store``): another application's DuckDB file,
    a newer schema, an SQLite file, a directory, an unwritable folder are refused in one line (StoreError)
    and left untouched. A write connection creates the file and its schema if needed and migrates an
    older schema (one transaction). I/O failures inside the block (a full disk) become one line naming
    the store and the cause (StoreIOError); DuckDB rolls the open transaction back.
    """
    db = Path(db)
    if read_only:
        _check_unless_open(db, write=False)
    else:
        check_store(db, write=True, timeout=timeout)
        if not db.parent.is_dir():
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _io_error(db, e) if io_cause(e) else StoreError(f"cannot create store {db}: {e}") from None
    con = _open(db, read_only, timeout)
    try:
        if read_only:
            check_kind(db, identify(con), write=False)
        else:
            ensure_schema(con, db)
        yield con
    except (duckdb.Error, OSError) as e:
        if (what := damage(db, e)) is not None:  # found by a read or a write (an index block)
            raise (StoreError if read_only else StoreIOError)(damaged_text(db, what)) from None
        if io_cause(e) is None:
            raise
        raise _io_error(db, e) from None
    finally:
        try:
            _close(con)
        except duckdb.Error as e:  # closing checkpoints: it can meet a full disk too
            if (what := damage(db, e)) is not None:
                raise StoreIOError(damaged_text(db, what)) from None
            if io_cause(e) is None:
                raise
            raise _io_error(db, e) from None


def ensure_schema(con: duckdb.DuckDBPyConnection, db: Path | str = "store") -> None:
    """Make the open file a current store: nothing if it is one, create the schema in an empty file, or
    migrate an older one, each in one transaction. StoreError for another application's file or a newer
    schema (nothing is written)."""
    found = identify(con)
    if found.kind == "ours" and found.version == SCHEMA_VERSION:
        if not set(SCHEMA_TABLES) <= set(found.tables):
            # A store of this version written before its last tables were added (version 3 grew while it was
            # unreleased): schema.sql is idempotent and adds only what is missing.
            with transaction(con, "migrate"):
                con.execute(SCHEMA_FILE.read_text())
        return
    check_kind(Path(db), found, write=True)
    with transaction(con, "migrate" if found.kind == "ours" else "create-store"):
        if found.kind == "ours":
            for version in range(found.version, SCHEMA_VERSION):
                MIGRATIONS[version](con)
        con.execute(SCHEMA_FILE.read_text())  # idempotent: tables a migration did not make, the views
        con.execute(f"CREATE TABLE IF NOT EXISTS {MARKER} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
        con.executemany(f"INSERT OR REPLACE INTO {MARKER} VALUES (?, ?)",
                        [["application", APPLICATION], ["schema_version", str(SCHEMA_VERSION)]])
        if found.kind == "empty":
            con.execute(f"INSERT INTO {MARKER} VALUES ('created_at', ?)", [datetime.now().isoformat()])


# Migrations: MIGRATIONS[v] turns a version-v store into a version v+1 one, inside ensure_schema's
# transaction (a crash leaves the old version intact). schema.sql then adds what is new and the views.


def _migrate_1_to_2(con: duckdb.DuckDBPyConnection) -> None:
    # Version 1 kept its version in meta_t(key, value) and no application name, so a DuckDB file of any
    # application with a meta_t table looked alike. Version 2 moves it to the marker table and records
    # where the store came from. It also gives every store ablation_t's heads and target (head-level and
    # knockout ablations), which stores written while the version still read 1 may lack: their ablations
    # are whole layers without a target.
    con.execute("ALTER TABLE ablation_t ADD COLUMN IF NOT EXISTS heads INTEGER[] DEFAULT []")
    con.execute("ALTER TABLE ablation_t ADD COLUMN IF NOT EXISTS target VARCHAR")
    con.execute(f"CREATE TABLE {MARKER} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute(f"INSERT INTO {MARKER} SELECT 'migrated_from_' || key, value FROM meta_t")
    con.execute(f"INSERT INTO {MARKER} VALUES ('migrated_at', ?)", [datetime.now().isoformat()])
    con.execute("DROP TABLE meta_t")


def _migrate_2_to_3(con: duckdb.DuckDBPyConnection) -> None:
    # Version 3 records, per (image, ablation), whether a low-precision run computed it again in float32
    # (compute.precision): selection_t.verified, NULL for every pair stored before (computed in the run's
    # dtype, as it was). It also adds the decomposition's tables (component_t, decomposed_t, contribution_t,
    # direct_t, the vector tables, head_description_t) and views (contributions, effects, head_descriptions),
    # and attribution's tables (estimate_t, attributed_t, attribution_t) and view (attributions), which
    # schema.sql creates; runs stored before have no decomposition or attribution rows.
    con.execute("ALTER TABLE selection_t ADD COLUMN IF NOT EXISTS verified VARCHAR")


MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, point: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception. ``point``: the crash tests' kill point, reached inside
    the transaction just before COMMIT (see compute.killpoints)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        if point is not None:
            kill_point(point)
    except BaseException:
        with suppress(duckdb.Error):  # a failed statement may have ended the transaction already
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
