"""Reading the store from a page: cached results, one read-only connection per script run, one snapshot.

Cache: results are cached on (function, store path, change token, arguments); the change token is the stat
of the store file and of its WAL, so a commit by a running compute job invalidates the cache without opening
the file.

One snapshot per script run. A page draws what several reads return (the run, its ablations, a summary, an
image's rows), and they must fit together: a run deleted between two of them would leave the page looking
up what no longer exists. So the first read of a script run pins the store's change token and every later
read of that run is keyed by it: cache hits all come from that state. A read that must go to the file
opens a connection and checks, once it holds the file, that the file is still in that state (while a reader
holds it no writer can commit: DuckDB lets one process write or several read). If a writer committed in
between, the script run starts over on the new state (``st.rerun``): what it drew so far is replaced, and
no page ever draws two states at once.

A file that is not a store this version reads (empty, another application's DuckDB file, random bytes, a newer
schema) or that is damaged (a block whose checksum fails, a file cut short; found when a read meets it, so
also when it was damaged while the app runs) stops the page with one error: compute.storefile's line, the one
the command line prints after ``error:`` (``unusable``). Any other error shows as the error it is.

The connection is opened on the first cache miss and shared by the misses of one script run until the page
starts drawing (``release``, called by ``layout.chart``) or the run ends, so it is held for the queries of
one render (a few hundred milliseconds on real sizes) and never while the page is drawn or sits idle: an
open reader blocks the compute stage's next write (which retries until it is gone). Pages therefore read
everything before they draw: a read after ``release`` that finds a writer got in starts the render over.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import duckdb
import streamlit as st

from analysis.text import md
from compute import store, storefile
from compute.errors import StoreError, StoreIOError
from dashboard import state

T = TypeVar("T")


def change_token(db: Path) -> tuple:
    """Changes whenever a writer commits: the stat of the store file and of its write-ahead log."""
    token = []
    for path in (db, Path(f"{db}.wal")):
        try:
            st_ = os.stat(path)
            token.append((st_.st_mtime_ns, st_.st_size))
        except FileNotFoundError:
            token.append(None)
    return tuple(token)


class _SnapshotMoved(Exception):
    """A writer committed after this script run's first read: the file no longer holds its snapshot."""


class _Reader:
    """A read-only connection opened on first use (most reruns hit the cache and never open one), at the
    snapshot ``token`` or not at all."""

    def __init__(self, db: Path, token: tuple) -> None:
        self.db = db
        self.token = token
        self._opened = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            opened = store.connect(self.db, read_only=True)
            self.con = opened.__enter__()  # StoreError: not a store this version reads, or damaged
            self._opened = opened
            # Holding the file now, nothing can commit until close: check the state it is in.
            if change_token(self.db) != self.token:
                self.close()
                raise _SnapshotMoved
        return self.con

    def close(self) -> None:
        if self._opened is not None:
            self._opened.__exit__(None, None, None)
        self._opened = self.con = None


@contextmanager
def render(db: Path) -> Iterator[state.ScriptRun]:
    """The scope of one script run reading ``db``: its reads share a snapshot and a connection, closed when
    the run ends. Yields the run (dashboard.state.ScriptRun)."""
    with state.script_run(db) as run:
        try:
            yield run
        finally:
            if run.reader is not None:
                run.reader.close()


def _run() -> state.ScriptRun:
    run = state.this_run()
    if run is None:
        raise RuntimeError("the store is read inside a script run of dashboard/app.py (reading.render)")
    return run


def snapshot() -> tuple:
    """The change token this script run reads at: pinned by its first read (or by this call)."""
    run = _run()
    if run.snapshot is None:
        run.snapshot = change_token(run.db)
    return run.snapshot


def store_path() -> Path:
    """The store this script run reads."""
    return _run().db


def release() -> None:
    """Close this script run's connection now (the page has read what it draws); a later cache miss opens
    another, at the same snapshot or not at all."""
    run = _run()
    if run.reader is not None:
        run.reader.close()


def _name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


# The function itself travels unhashed (leading underscore); its qualified name is the cache key.
@st.cache_data(show_spinner=False, max_entries=512)
def _cached_call(fn_name: str, db: str, token: tuple, args: tuple, _fn: Callable[..., Any], _reader: _Reader) -> Any:
    return _fn(_reader.get(), *args)


def load(fn: Callable[..., T], *args: Any) -> T:
    """``fn(con, *args)`` on a read-only connection to the app's store, at this script run's snapshot,
    cached until the store changes. ``fn`` is a module-level function of analysis.queries, tables or
    figures."""
    run = _run()
    token = snapshot()
    if run.reader is None:
        run.reader = _Reader(run.db, token)
    try:
        return _cached_call(_name(fn), str(run.db), token, args, fn, run.reader)
    except _SnapshotMoved:
        st.rerun()  # start the page over on the state the writer left
    except (StoreError, StoreIOError) as e:  # StoreIOError: busy past the lock timeout, an I/O failure
        unusable(e)
    except duckdb.Error as e:  # a query met a damaged block (the connection checks only what it opens)
        if (what := storefile.damage(run.db, e)) is None:
            raise
        unusable(StoreError(storefile.damaged_text(run.db, what)))


def unusable(e: StoreError | StoreIOError) -> NoReturn:
    """Stop the page with what is wrong with the store, in the command line's words (its ``error:`` line)."""
    st.error(md(str(e)))
    st.stop()
