"""The store knows itself: a marker with the application and schema version; a version-1 store, as main
wrote it before the marker, is read as is and migrated in one transaction when written; a crash inside
the migration leaves version 1 intact; a version-2 store (before selection_t.verified and the
decomposition) migrates to version 3: its rows gain the column, NULL for what it held, and its run resumes,
decomposing the images it had done when decomposition is newly enabled."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import duckdb
import pytest
from helpers import cli, cli_forked, sql, sql_each

from compute import store
from compute.__main__ import main
from compute.config import load_experiment
from compute.runner import run
from compute.storefile import STORE_TABLES
from tools.synthetic import make_coco, write_experiment

V1_SQL = (Path(__file__).parent / "reference" / "store_v1.sql").read_text()
V2_SQL = (Path(__file__).parent / "reference" / "store_v2.sql").read_text()
V1_TABLES = ["run_t", "image_t", "prompt_t", "ablation_t", "score_t", "selection_t", "embedding_t", "error_t",
             "stat_t", "caption_cache_t"]
PARTIAL = ("score_t", "selection_t", "embedding_t")  # cut to the first images: a run interrupted part way
RESULTS = "SELECT image_id, ablation, prompt, label, logit, prob FROM scores ORDER BY ALL"
SELECTED = "SELECT image_id, ablation, prompt, correct, score_baseline FROM selections ORDER BY ALL"


# Main also wrote version 1 for a while after head-level ablations gave ablation_t two more columns.
V1_HEADS_SQL = """
ALTER TABLE ablation_t ADD COLUMN IF NOT EXISTS heads INTEGER[] DEFAULT [];
ALTER TABLE ablation_t ADD COLUMN IF NOT EXISTS target VARCHAR;
"""


def build_v1_store(v1: Path, rows_from: Path, up_to_image: int, heads: bool = False) -> None:
    """A version-1 store exactly as main created it (its DDL, then meta_t = 1), holding the rows of a run
    that ``rows_from`` (written by this version for the same experiment) holds, copied column by column
    of the version-1 layout; results only for images up to ``up_to_image``."""
    with duckdb.connect(str(v1)) as con:
        con.execute("CREATE TABLE IF NOT EXISTS meta_t (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute(V1_SQL + (V1_HEADS_SQL if heads else ""))
        con.execute("INSERT OR REPLACE INTO meta_t VALUES ('schema_version', '1')")
        con.execute(f"ATTACH '{rows_from}' AS cur (READ_ONLY)")
        for table in V1_TABLES:
            cols = ", ".join(r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE main.{table})").fetchall())
            where = f" WHERE image_id <= {up_to_image}" if table in PARTIAL else ""
            con.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM cur.{table}{where}")
        con.execute("DETACH cur")
        con.execute("UPDATE run_t SET status = 'running'")  # as the interrupted run left it


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kind(db: Path) -> store.StoreKind:
    with duckdb.connect(str(db), read_only=True) as con:
        return store.identify(con)


@pytest.fixture(params=[False, True], ids=["v1", "v1 with heads"])
def v1_store(request, tiny_clip, tmp_path):
    """(experiment writing to a version-1 store of its run cut after 4 images, the complete reference store)."""
    coco = make_coco(tmp_path / "coco", n=10)
    ref_db, v1 = tmp_path / "ref.duckdb", tmp_path / "v1.duckdb"
    ref = write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, extra=("mean:3",), batch_size=4)
    run(load_experiment(ref), progress=False, echo=lambda _: None)
    build_v1_store(v1, ref_db, up_to_image=4, heads=request.param)
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, v1, extra=("mean:3",), batch_size=4)
    return exp, ref_db, v1


def test_a_new_store_carries_the_marker(tiny_clip, tiny_coco, tmp_path):
    db = tmp_path / "new.duckdb"
    with store.connect(db):
        pass
    marks = dict(sql(db, f"SELECT key, value FROM {store.MARKER}"))
    assert marks["application"] == "CLIP Attention Lab store"
    assert marks["schema_version"] == str(store.SCHEMA_VERSION) == "3"
    assert kind(db) == store.StoreKind("ours", 3, kind(db).tables)
    assert "meta_t" not in kind(db).tables


def test_a_version_1_store_is_read_as_is_and_migrated_when_written(v1_store, capsys):
    exp, ref_db, v1 = v1_store
    assert kind(v1).kind == "ours" and kind(v1).version == 1
    before = digest(v1)
    # Reading (list, the dashboard) needs no migration and changes nothing.
    assert main(["list", "--db", str(v1)]) == 0
    listed = capsys.readouterr().out
    assert " running " in listed and " 40% " in listed  # 4 of 10 images done
    assert digest(v1) == before

    # Writing migrates in one transaction, then the run resumes where version 1 left it.
    assert main(["run", str(exp), "--no-progress"]) == 0
    assert "resuming run 't'" in capsys.readouterr().out
    found = kind(v1)
    assert (found.kind, found.version) == ("ours", 3) and "meta_t" not in found.tables
    # every row once, the same values; the tables the migration leaves untouched as they were
    same = {"results": RESULTS, "selected": SELECTED,
            **{t: f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL" for t in ("stat_t", "image_t", "prompt_t", "ablation_t")}}
    mine = sql_each(v1, {**same, "marks": f"SELECT key, value FROM {store.MARKER}", "status": "SELECT status FROM runs"})
    marks = dict(mine.pop("marks"))
    assert marks["migrated_from_schema_version"] == "1" and marks["schema_version"] == "3"
    assert mine.pop("status") == [("complete",)]
    assert mine == sql_each(ref_db, same)


@pytest.mark.slow
@pytest.mark.parametrize("v1_store", [False], indirect=True, ids=["v1"])
def test_a_crash_inside_the_migration_leaves_version_1(v1_store):
    exp, ref_db, v1 = v1_store
    rows = sql(v1, RESULTS)
    killed = cli_forked("run", str(exp), "--no-progress", env={"CLIP_LAB_KILL_AT": "migrate"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    found = kind(v1)
    assert (found.kind, found.version) == ("ours", 1) and store.MARKER not in found.tables
    assert sql(v1, RESULTS) == rows
    again = cli("run", str(exp), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert kind(v1).version == 3
    assert sql(v1, RESULTS) == sql(ref_db, RESULTS)


V2_TABLES = V1_TABLES  # version 2 changed ablation_t's columns and the marker, not the list of tables
DECOMPOSE = "[decomposition]\nenabled = true\n"
CONTRIBUTIONS = "SELECT image_id, component, layer, head, prompt, logit FROM contributions ORDER BY ALL"
EFFECTS = "SELECT image_id, ablation, prompt, total, direct, indirect FROM effects ORDER BY ALL"


def build_v2_store(v2: Path, rows_from: Path, up_to_image: int) -> None:
    """A version-2 store as this project created it (its DDL, then the marker), holding the rows of the run in
    ``rows_from`` (written by this version) of the version-2 tables, results only for images up to
    ``up_to_image``."""
    with duckdb.connect(str(v2)) as con:
        con.execute(V2_SQL)
        con.execute(f"CREATE TABLE {store.MARKER} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
        con.execute(f"INSERT INTO {store.MARKER} VALUES ('application', 'CLIP Attention Lab store'), "
                    "('schema_version', '2')")
        con.execute(f"ATTACH '{rows_from}' AS cur (READ_ONLY)")
        for table in V2_TABLES:
            cols = ", ".join(r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE main.{table})").fetchall())
            where = f" WHERE image_id <= {up_to_image}" if table in PARTIAL else ""
            con.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM cur.{table}{where}")
        con.execute("DETACH cur")
        con.execute("UPDATE run_t SET status = 'running'")


def test_a_version_2_store_gains_the_verified_column_and_resumes(tiny_clip, tmp_path):
    """A version-2 store, as this project wrote it before selection_t.verified, holding a bfloat16 run cut
    after 4 images: writing migrates it (the column, NULL for the rows it held: computed in the run's dtype,
    unverified, as they were), and the run resumes with its later pairs verified."""
    coco = make_coco(tmp_path / "coco", n=10)
    ref_db, v2 = tmp_path / "ref.duckdb", tmp_path / "v2.duckdb"
    ref = write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, batch_size=4, dtype="bfloat16")
    run(load_experiment(ref), progress=False, echo=lambda _: None)
    build_v2_store(v2, ref_db, up_to_image=4)
    assert kind(v2).version == 2
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, v2, batch_size=4, dtype="bfloat16")
    assert run(load_experiment(exp), progress=False, echo=lambda _: None).complete
    assert kind(v2).version == 3
    got, want = sql(v2, SELECTED), sql(ref_db, SELECTED)
    assert [r[:4] for r in got] == [r[:4] for r in want]
    # the judge: float32's either way, from other float32 passes after the resume (the first images of an
    # invocation calibrate), so equal to float32's rounding
    assert max(abs(x[4] - y[4]) for x, y in zip(got, want, strict=True)) < 1e-6
    verified = "SELECT image_id > 4, COUNT(verified) FROM selection_t GROUP BY 1 ORDER BY 1"
    assert sql(v2, verified)[0] == (False, 0)  # what version 2 held: unverified, as it was computed
    assert sql(v2, verified)[1][1] >= 6  # the resumed images: each one's unablated pass at least


def test_a_version_2_store_migrates_and_its_run_resumes_with_decomposition(tiny_clip, tmp_path, capsys):
    coco = make_coco(tmp_path / "coco", n=10)
    ref_db, plain_db, v2 = tmp_path / "ref.duckdb", tmp_path / "plain.duckdb", tmp_path / "v2.duckdb"
    ref = write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, extra=("mean:3", "zero:11/h1"),
                           batch_size=4, more=DECOMPOSE)
    run(load_experiment(ref), progress=False, echo=lambda _: None)  # decomposed from the start
    plain = write_experiment(tmp_path / "plain.toml", tiny_clip, coco, plain_db, extra=("mean:3", "zero:11/h1"),
                             batch_size=4)
    run(load_experiment(plain), progress=False, echo=lambda _: None)  # what version 2 wrote: no decomposition
    build_v2_store(v2, plain_db, up_to_image=4)
    assert kind(v2).version == 2
    with duckdb.connect(str(v2), read_only=True) as con:  # the views a version-2 store lacks
        assert not {"contributions", "effects", "head_descriptions"} & {r[0] for r in con.execute(STORE_TABLES).fetchall()}

    # The run resumes with decomposition newly enabled: the 4 images done before are decomposed on their
    # unablated pass, the 6 left in the sweep.
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, v2, extra=("mean:3", "zero:11/h1"), batch_size=4,
                           more=DECOMPOSE)
    assert main(["run", str(exp), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming run 't'" in out and "decomposing 4 image(s) swept before decomposition was enabled" in out
    assert kind(v2).version == 3
    assert sql(v2, RESULTS) == sql(ref_db, RESULTS)
    for query, values in ((CONTRIBUTIONS, 1), (EFFECTS, 3)):  # the last columns are the numbers
        got, want = sql(v2, query), sql(ref_db, query)
        assert got and [r[:-values] for r in got] == [r[:-values] for r in want]
        assert max(abs(a - b) for x, y in zip(got, want, strict=True)
                   for a, b in zip(x[-values:], y[-values:], strict=True)) < 1e-5
    assert sql(v2, "SELECT layer, head, rank, text FROM head_descriptions ORDER BY ALL") == \
        sql(ref_db, "SELECT layer, head, rank, text FROM head_descriptions ORDER BY ALL")
    assert sql(v2, "SELECT status FROM runs") == [("complete",)]
