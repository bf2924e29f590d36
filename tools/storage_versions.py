"""What writing a store that DuckDB 1.x can read costs: ``python -m tools.storage_versions SOURCE.duckdb``.

DuckDB 2.0 writes files only 2.0 reads unless a database is created with ``storage_compatibility_version``
(compute.storefile.STORAGE_VERSION). This tool replays the rows of an existing store (the demo's, say)
into fresh stores created at each compatibility version, the way a run writes them: the schema made by
``compute.storefile.ensure_schema``, then the results of each run in batches of ``--batch`` images, each
batch its own transaction, the file closed (checkpointed) every 4 batches as compute.writer does. It reports
per version the time to write, the file's size, the time of a typical read (accuracy per ablation of
every run, over the public views) and the header's storage version number, each the median of
``--repeats`` replays, interleaved so that a busy machine slows every version alike.

Run by hand (docs/store.md quotes its numbers); never imported by compute or dashboard.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from compute.errors import InputError, StoreError
from compute.storefile import connect

VERSIONS = ("v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0", "v1.5.0", "latest")
RESULT_TABLES = ("score_t", "selection_t", "embedding_t")  # written batch by batch during a run
READ = "SELECT run, ablation, AVG(correct::INT) FROM selections GROUP BY ALL ORDER BY ALL"


def header_version(path: Path) -> int:
    """The storage version number in a DuckDB file's main header (what 1.x readers check)."""
    with open(path, "rb") as f:
        head = f.read(20)
    return struct.unpack("<Q", head[12:20])[0]


def load_source(source: Path) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """(tables written once per run, result tables) of ``source`` as Arrow, read once."""
    from compute.storefile import MARKER

    with duckdb.connect(str(source), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_type = 'BASE TABLE'").fetchall()]
        once = {n: con.sql(f"SELECT * FROM {n}").to_arrow_table() for n in names
                if n not in RESULT_TABLES and n != MARKER}
        results = {n: con.sql(f"SELECT * FROM {n} ORDER BY run_id, image_id, ablation_id").to_arrow_table()
                   for n in RESULT_TABLES}
    return once, results


def replay(path: Path, version: str, once: dict[str, pa.Table], results: dict[str, pa.Table],
           batch: int = 64, per_open: int = 4) -> float:
    """Write the source's rows into a new store at ``path`` created at ``version``; seconds spent."""
    import pyarrow.compute as pc

    from compute.storefile import ensure_schema

    config = {"storage_compatibility_version": version}
    start = time.perf_counter()
    with duckdb.connect(str(path), config=config) as con:
        ensure_schema(con, path)
        for name, table in once.items():
            con.register("rows", table)
            con.execute(f"INSERT INTO {name} SELECT * FROM rows")
            con.unregister("rows")
    keys = results["selection_t"].select(["run_id", "image_id"]).group_by(["run_id", "image_id"]).aggregate([])
    batches = []
    for run_id in sorted(set(keys["run_id"].to_pylist())):
        ids = sorted(keys.filter(pc.equal(keys["run_id"], run_id))["image_id"].to_pylist())
        batches += [(run_id, ids[k:k + batch]) for k in range(0, len(ids), batch)]
    for first in range(0, len(batches), per_open):
        with duckdb.connect(str(path), config=config) as con:  # closing checkpoints, as the writer's sessions do
            for run_id, ids in batches[first:first + per_open]:
                con.execute("BEGIN TRANSACTION")
                for name, table in results.items():
                    mask = pc.and_(pc.equal(table["run_id"], run_id), pc.is_in(table["image_id"], pa.array(ids)))
                    con.register("rows", table.filter(mask))
                    con.execute(f"INSERT INTO {name} SELECT * FROM rows")
                    con.unregister("rows")
                con.execute("COMMIT")
    return time.perf_counter() - start


def read_time(path: Path) -> float:
    with duckdb.connect(str(path), read_only=True) as con:
        start = time.perf_counter()
        con.execute(READ).fetchall()
        return time.perf_counter() - start


def opens_in(python: str, path: Path) -> str:
    """What another Python's duckdb (a 1.x one) says on opening ``path``: its version, or its error."""
    code = ("import duckdb, sys\n"
            "try:\n"
            "    duckdb.connect(sys.argv[1], read_only=True).execute('SELECT COUNT(*) FROM selections').fetchall()\n"
            "    print('yes (' + duckdb.__version__ + ')')\n"
            "except Exception as e:\n"
            "    print('no (' + duckdb.__version__ + ')')\n")
    done = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    return (done.stdout.strip() or done.stderr.strip().splitlines()[-1])[:24]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.storage_versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a store whose rows are replayed (e.g. the demo's)")
    parser.add_argument("--repeats", type=int, default=3, help="replays per version, interleaved (default: 3)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default: 64, the demo's)")
    parser.add_argument("--versions", default=",".join(VERSIONS),
                        help=f"comma list among {', '.join(VERSIONS)} (default: all)")
    parser.add_argument("--reader", default="", help="a Python with DuckDB 1.x installed: does it open each file?")
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    try:
        if not versions or any(v not in VERSIONS for v in versions):
            raise InputError(f"--versions {args.versions!r}: choose among {', '.join(VERSIONS)}")
        for flag, value in (("--repeats", args.repeats), ("--batch", args.batch)):
            if value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value}")
        if not args.source.is_file():
            raise InputError(f"no store at {args.source}")
        with connect(args.source, read_only=True):  # a file that is no store (or a damaged one): one line
            pass
    except (InputError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    once, results = load_source(args.source)
    rows = sum(t.num_rows for t in results.values())
    print(f"{args.source}: {args.source.stat().st_size / 2**20:.1f} MiB, {rows:,} result rows "
          f"({', '.join(f'{n} {t.num_rows:,}' for n, t in results.items())}); duckdb {duckdb.__version__}")
    write, read, size, header = ({v: [] for v in versions} for _ in range(4))
    opens = dict.fromkeys(versions, "")
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for v in versions:
                path = Path(tmp) / f"{v}-{k}.duckdb"
                write[v].append(replay(path, v, once, results, args.batch))
                read[v].append(read_time(path))
                size[v].append(path.stat().st_size)
                header[v].append(header_version(path))
                if args.reader and k == 0:
                    opens[v] = opens_in(args.reader, path)
                path.unlink()
    ref = statistics.median(write["latest"]) if "latest" in versions else None
    ref_size = statistics.median(size["latest"]) if "latest" in versions else None
    print(f"{'version':<9} {'header':>6} {'size MiB':>9} {'vs latest':>9} {'write s':>8} {'vs latest':>9} "
          f"{'read ms':>8}  {'opens in 1.x' if args.reader else ''}")
    for v in versions:
        w, s = statistics.median(write[v]), statistics.median(size[v])
        print(f"{v:<9} {header[v][0]:>6} {s / 2**20:>9.2f} {s / ref_size if ref_size else float('nan'):>9.2f} "
              f"{w:>8.2f} {w / ref if ref else float('nan'):>9.2f} {statistics.median(read[v]) * 1000:>8.1f}  {opens[v]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
