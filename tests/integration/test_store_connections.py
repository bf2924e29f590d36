"""How a process opens stores (compute/storefile.py): one DuckDB instance per process, each store ATTACHed to it
while connections use it. Connections to one store share its attachment; the last to close checkpoints and
releases the file, so another process can write it; threads open stores at once; a forked child opens its
own instance and ends cleanly; one process cannot hold a store for reading and for writing at once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ROOT

from compute import store, storefile
from compute.errors import StoreError

# Another process's write: duckdb.connect takes the file's lock, or fails on it.
WRITE_ELSEWHERE = ("import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
                   "con.execute(\"INSERT INTO clip_attention_lab_t VALUES ('elsewhere', 'x')\"); con.close()")


def new_store(db: Path) -> Path:
    with store.connect(db):  # a write connection creates the file and its schema
        pass
    return db


def write_elsewhere(db: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITE_ELSEWHERE, str(db)], capture_output=True, text=True, timeout=60)


def marks(db: Path) -> dict[str, str]:
    with store.connect(db, read_only=True) as con:
        return dict(con.execute("SELECT key, value FROM clip_attention_lab_t").fetchall())


def test_connections_to_one_store_share_it_and_the_last_to_close_releases_the_file(tmp_path):
    db = new_store(tmp_path / "s.duckdb")
    with store.connect(db, read_only=True) as a, store.connect(db, read_only=True) as b:
        assert len(storefile._attached) == 1  # one attachment for both
        assert a.execute("SELECT COUNT(*) FROM runs").fetchone() == b.execute("SELECT COUNT(*) FROM runs").fetchone()
        held = write_elsewhere(db)
    assert held.returncode != 0 and "lock" in held.stderr.lower()  # held while either was open
    assert not storefile._attached
    assert write_elsewhere(db).returncode == 0  # released once both closed
    assert marks(db)["elsewhere"] == "x"


def test_the_last_write_connection_checkpoints_its_log_into_the_file(tmp_path):
    db = new_store(tmp_path / "s.duckdb")
    with store.connect(db) as con:
        con.execute("INSERT INTO clip_attention_lab_t VALUES ('here', 'y')")
        assert db.with_name("s.duckdb.wal").exists()  # the write is in the log while the store is open
    assert not db.with_name("s.duckdb.wal").exists()
    check = ("import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True)"
             ".execute(\"SELECT value FROM clip_attention_lab_t WHERE key = 'here'\").fetchone()[0])")
    seen = subprocess.run([sys.executable, "-c", check, str(db)], capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == "y", seen.stderr[-1000:]


def test_threads_open_stores_at_once(tmp_path):
    stores = [new_store(tmp_path / f"s{i}.duckdb") for i in range(2)]
    errors: list[BaseException] = []

    def reader(db: Path) -> None:
        try:
            for _ in range(15):
                with store.connect(db, read_only=True) as con:
                    assert con.execute("SELECT value FROM clip_attention_lab_t WHERE key = 'application'"
                                       ).fetchone() == (storefile.APPLICATION,)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(stores[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert not storefile._attached
    assert all(write_elsewhere(db).returncode == 0 for db in stores)


def test_one_process_cannot_read_and_write_a_store_at_once(tmp_path):
    db = new_store(tmp_path / "s.duckdb")
    with store.connect(db), pytest.raises(StoreError) as e, store.connect(db, read_only=True):
        pass
    assert str(e.value).startswith(f"cannot open store {db}") and "\n" not in str(e.value)
    assert not storefile._attached
    assert write_elsewhere(db).returncode == 0


# A child forked while its parent holds a store opens one of its own and ends as interpreters do (its globals
# freed): freeing the parent's instance there would crash it (the instance's threads did not survive the fork).
FORK = """
import os, sys
from compute import store
a, b = sys.argv[1], sys.argv[2]
with store.connect(a, read_only=True) as con:
    pid = os.fork()
    if pid == 0:
        with store.connect(b) as mine:
            mine.execute("INSERT INTO clip_attention_lab_t VALUES ('child', 'z')")
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print("child", status, con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
"""


def test_a_forked_child_opens_a_store_of_its_own_and_ends_cleanly(tmp_path):
    a, b = new_store(tmp_path / "a.duckdb"), new_store(tmp_path / "b.duckdb")
    proc = subprocess.run([sys.executable, "-c", FORK, str(a), str(b)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.split() == ["child", "0", "0"], proc.stdout + proc.stderr[-2000:]
    assert marks(b)["child"] == "z"
