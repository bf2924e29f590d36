"""A store the tool writes opens in DuckDB 1.x, the version researchers' notebooks already have: every public
view reads the same rows there as here (compute.storefile.STORAGE_VERSION). A store in DuckDB 2.0's own
format is refused by 1.x with DuckDB's message, and the copy docs/store.md gives as the fix opens in 1.x.

DuckDB 1.x lives in a throwaway virtual environment (``python -m venv`` + ``pip install duckdb==1.x`` from
PyPI) for each of READERS, made once in ``$CLIP_LAB_CACHE`` (default ``~/.cache/clip-lab``) and reused. Without PyPI the test
skips, loudly, except in CI (``CLIP_LAB_CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from compute import store

# The oldest DuckDB that reads a store (STORAGE_VERSION) and the newest 1.x; CLIP_LAB_DUCKDB1=1.2.2,... for others.
READERS = os.environ.get("CLIP_LAB_DUCKDB1", "1.1.0,1.5.6").split(",")
CACHE = Path(os.environ.get("CLIP_LAB_CACHE") or Path.home() / ".cache" / "clip-lab")

# Every public view, every row, as text: what the 1.x reader prints and the 2.0 side computes alike.
DUMP = """
import duckdb, json, sys
con = duckdb.connect(sys.argv[1], read_only=True)
views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                    "AND schema_name = 'main' ORDER BY view_name").fetchall()]
out = {"version": duckdb.__version__, "views": {}}
for v in views:
    rows = con.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall()
    out["views"][v] = [[str(x) for x in row] for row in rows]
print(json.dumps(out))
"""
OPEN = """
import duckdb, sys
try:
    duckdb.connect(sys.argv[1], read_only=True)
    print("opened")
except Exception as e:
    print(str(e).splitlines()[0])
"""
# The fix docs/store.md gives for a store written in DuckDB 2.0's own format (before STORAGE_VERSION).
FIX = ("ATTACH '{old}' AS old (READ_ONLY); ATTACH '{new}' AS new (STORAGE_VERSION 'v1.1.0'); "
       "COPY FROM DATABASE old TO new;")


def _missing(reason: str) -> None:
    if os.environ.get("CLIP_LAB_CI"):
        pytest.fail(f"DUCKDB 1.x MISSING in CI: {reason}")
    print(f"\nDUCKDB 1.x MISSING: {reason}; the compatibility test did not run", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session", params=READERS)
def duckdb1(request) -> Path:
    """The python of a virtual environment holding duckdb==<a version of READERS> (made once, then reused)."""
    version = request.param
    venv = CACHE / f"duckdb-{version}"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import duckdb; print(duckdb.__version__)"]
    if python.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() == version:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=120)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               f"duckdb=={version}"], capture_output=True, text=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as e:
        _missing(f"could not make a virtual environment in {venv}: {e}")
    if done.returncode != 0:
        _missing(f"pip install duckdb=={version} failed: {done.stderr.strip().splitlines()[-1:]}")
    return python


def run_in(python: Path, code: str, db: Path) -> str:
    done = subprocess.run([str(python), "-c", code, str(db)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dump_here(db: Path) -> dict:
    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                            "AND schema_name = 'main' ORDER BY view_name").fetchall()]
        for v in views:
            out[v] = [[str(x) for x in row] for row in con.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall()]
    return out


def test_duckdb1_reads_every_public_view_of_a_store_the_tool_wrote(duckdb1, dash_store):
    # dash_store: created by the tool, written by two runs over many writer sessions (each closing checkpoints)
    here = dump_here(dash_store)
    assert {"runs", "images", "scores", "selections", "errors"} <= set(here)
    there = json.loads(run_in(duckdb1, DUMP, dash_store))
    assert there["version"].startswith("1.")
    assert there["views"] == here
    assert len(here["scores"]) > 1000 and len(here["runs"]) == 2


def test_a_store_in_duckdb2s_own_format_is_refused_by_1x_and_the_documented_copy_fixes_it(duckdb1, dash_store,
                                                                                       tmp_path):
    # A store as the tool wrote it before STORAGE_VERSION: DuckDB 2.0's default format.
    old, fixed = tmp_path / "old.duckdb", tmp_path / "fixed.duckdb"
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{dash_store}' AS src (READ_ONLY); ATTACH '{old}' AS dst; COPY FROM DATABASE src TO dst;")
    refused = run_in(duckdb1, OPEN, old)
    assert "Trying to read a database file with version number" in refused  # DuckDB's own words (docs/store.md)
    with duckdb.connect() as con:
        con.execute(FIX.format(old=old, new=fixed))
    assert run_in(duckdb1, OPEN, fixed).strip() == "opened"
    assert json.loads(run_in(duckdb1, DUMP, fixed))["views"] == dump_here(dash_store)
    with store.connect(fixed) as con:  # the tool still opens (and would migrate) the copy
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
