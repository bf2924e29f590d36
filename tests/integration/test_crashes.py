"""Crashes that land in each stage: SIGKILL inside the run's creation, in the dataset-mean pass, inside a
sweep batch's transaction, inside the caption stage's transactions, inside rescore and inside delete's
transaction, at named points (``CLIP_LAB_KILL_AT``, compute.killpoints) and at random moments. After a
rerun: every row once, the values of an uninterrupted run; after a killed delete: the run whole, then gone
whole. The killed commands are real processes, forked from the test's (helpers.start_cli: no new interpreter's
imports), and so is the timed reference run; the other uninterrupted runs and the reruns run in this process
(helpers.cli)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Forked, cli, cli_forked, sql, sql_each, start_cli

from tools.synthetic import make_coco, write_experiment

KILLED = -signal.SIGKILL
N_IMAGES, BROKEN = 8, (4,)  # image 4 is unreadable: its error must survive the crashes too
N_ABLATIONS = 21 + 1  # the paper sweep of 12 layers, and mean:3,11
CAPTIONS = "[captions]\nmax_new_tokens = 4\nnum_beams = 1\nbatch_size = 2\n"
PROMPTS_FILE = ('[[prompts]]\ntext = "a photo of a black cat"\nlabel = "cat"\n'
                '[[prompts]]\ntext = "a photo of a small dog"\nlabel = "dog"\n')

# Everything a run stores, in a canonical order; floats compared to 1e-4 (a resumed run batches its pending
# images differently, and batched matrix products round differently), everything else exactly.
TABLES = {
    "scores": "SELECT run, image_id, ablation, prompt, label, logit, prob FROM scores ORDER BY ALL",
    "selections": "SELECT run, image_id, ablation, prompt, correct, score_baseline, caption, caption_score "
                  "FROM selections ORDER BY run, image_id, ablation",
    "errors": "SELECT * FROM errors ORDER BY ALL",
    "images": "SELECT * FROM images ORDER BY ALL",
    "runs": "SELECT run, model, status FROM runs ORDER BY ALL",
    "embeddings": "SELECT r.run, e.image_id, e.ablation_id, e.embedding FROM embedding_t e JOIN run_t r USING (run_id) "
                  "ORDER BY ALL",
    "stats": "SELECT name, layer, shape, data FROM stat_t ORDER BY ALL",
    "caption cache": "SELECT image, prefix, caption FROM caption_cache_t ORDER BY ALL",
}


DUPLICATES = "SELECT COUNT(*) FROM (SELECT run, image_id, ablation, prompt FROM scores GROUP BY ALL HAVING COUNT(*) > 1)"


def assert_same_store(got: Path, want: Path, skip: tuple[str, ...] = ()) -> None:
    queries = {name: query for name, query in TABLES.items() if name not in skip}
    mine, theirs = sql_each(got, {**queries, "duplicates": DUPLICATES}), sql_each(want, queries)
    assert mine.pop("duplicates") == [(0,)]
    for name in queries:
        a, b = mine[name], theirs[name]
        assert len(a) == len(b), f"{name}: {len(a)} rows, expected {len(b)}"
        for x, y in zip(a, b, strict=True):
            assert len(x) == len(y)
            for u, v in zip(x, y, strict=True):
                if isinstance(u, float) and isinstance(v, float):
                    assert abs(u - v) < 1e-4, (name, x, y)
                elif name in ("embeddings", "stats") and isinstance(u, bytes):
                    import numpy as np

                    assert np.allclose(np.frombuffer(u, np.float32), np.frombuffer(v, np.float32), atol=1e-5), name
                else:
                    assert u == v, (name, x, y)


def counts(db: Path) -> dict[str, int]:
    names = ["run_t", "image_t", "prompt_t", "ablation_t", "score_t", "selection_t", "embedding_t", "error_t",
             "stat_t", "caption_cache_t"]
    return {t: rows[0][0] for t, rows in sql_each(db, {t: f"SELECT COUNT(*) FROM {t}" for t in names}).items()}


def start(exp: Path) -> Forked:
    return start_cli("run", str(exp), "--no-progress")


def past_startup(proc: Forked, db: Path) -> bool:
    """Wait until ``proc`` holds the run's lock (models loaded, its pid in the lock file); False if it ended."""
    from compute.runlock import lock_path

    lock = lock_path(db, "t")
    while proc.poll() is None:
        if lock.exists() and lock.read_text() == str(proc.pid):
            return True
        time.sleep(0.005)
    return False


def kill_at(point: str, *args: str) -> subprocess.CompletedProcess:
    quiet = ("--no-progress",) if args[0] in ("run", "rescore") else ()
    result = cli_forked(*args, *quiet, env={"CLIP_LAB_KILL_AT": point})
    assert result.returncode == KILLED, f"{point} was never reached: {result.returncode}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def reference(tiny_clip, tiny_blip, tmp_path_factory):
    """An uninterrupted run (timed) with a captioner and a mean: ablation, rescored too."""
    tmp = tmp_path_factory.mktemp("crash-reference")
    coco = make_coco(tmp / "coco", n=N_IMAGES, broken=BROKEN)
    db = tmp / "ref.duckdb"
    exp = write_experiment(tmp / "ref.toml", tiny_clip, coco, db, extra=("mean:3,11",), batch_size=2,
                           captioner=tiny_blip, more=CAPTIONS)
    # Forked and timed from its startup on, as the random kills sample: timed in-process, the run's first
    # imports and loads in this worker counted too, and a kill at 41% of that came after a run's end (in CI).
    proc = start(exp)
    assert past_startup(proc, db), proc.communicate()[1][-2000:]
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=600)
    phase = time.monotonic() - t0  # the store phase: creation, the mean pass, the batches, the captions
    assert proc.returncode == 0, err[-2000:]
    complete = tmp / "complete.duckdb"
    shutil.copy(db, complete)  # the run alone, before the rescored run is added to `db`
    (tmp / "prompts.toml").write_text(PROMPTS_FILE)
    rescored = cli("rescore", "--run", "t", "--prompts", str(tmp / "prompts.toml"), "--as", "r", "--db", str(db),
                       "--no-progress")
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    return {"tmp": tmp, "coco": coco, "db": db, "complete": complete, "phase": phase}


def experiment(reference: dict, tiny_clip: Path, tiny_blip: Path, db: Path) -> Path:
    return write_experiment(db.with_suffix(".toml"), tiny_clip, reference["coco"], db, extra=("mean:3,11",),
                            batch_size=2, captioner=tiny_blip, more=CAPTIONS)


@pytest.mark.slow
def test_kills_in_creation_the_mean_pass_the_sweep_and_the_caption_stage_then_resume(reference, tiny_clip, tiny_blip, tmp_path):
    db = tmp_path / "killed.duckdb"
    exp = str(experiment(reference, tiny_clip, tiny_blip, db))

    kill_at("create", "run", exp)  # inside the transaction that creates the run (the store itself exists)
    assert counts(db)["run_t"] == 0 and counts(db)["image_t"] == 0

    kill_at("mean:2", "run", exp)  # the dataset-mean pass, at its second batch
    state = counts(db)
    assert state["run_t"] == 1 and state["stat_t"] == 0 and state["selection_t"] == 0

    kill_at("sweep:2", "run", exp)  # inside the second batch's transaction, before COMMIT
    state = counts(db)
    assert state["stat_t"] == 2  # the means were computed again and saved
    assert state["selection_t"] == 2 * N_ABLATIONS  # the first batch (2 images) only
    assert state["score_t"] == 2 * N_ABLATIONS * 4 and state["embedding_t"] == 2 * N_ABLATIONS

    kill_at("caption:2", "run", exp)  # inside the caption cache's second chunk
    state = counts(db)
    assert state["selection_t"] == (N_IMAGES - len(BROKEN)) * N_ABLATIONS  # the sweep finished
    assert 0 < state["caption_cache_t"] <= 2  # one chunk of two captions committed, the second not
    assert sql(db, "SELECT COUNT(*) FROM selection_t WHERE caption IS NOT NULL") == [(0,)]

    kill_at("caption-fill", "run", exp)  # every caption cached, the selections not yet filled
    assert sql(db, "SELECT COUNT(*) FROM selection_t WHERE caption IS NOT NULL") == [(0,)]
    assert counts(db)["caption_cache_t"] == counts(reference["complete"])["caption_cache_t"]

    final = cli("run", exp, "--no-progress")
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same_store(db, reference["complete"])


@pytest.mark.slow
def test_kills_inside_rescore_then_resume(reference, tmp_path):
    db = tmp_path / "rescore.duckdb"
    shutil.copy(reference["complete"], db)
    args = ("rescore", "--run", "t", "--prompts", str(reference["tmp"] / "prompts.toml"), "--as", "r", "--db", str(db))
    kill_at("rescore", *args)  # inside its batch's transaction
    assert sql(db, "SELECT COUNT(*) FROM selection_t JOIN run_t USING (run_id) WHERE run = 'r'") == [(0,)]
    kill_at("caption:1", *args)  # the rescored run's own captions (new prompts, new prefixes)
    assert sql(db, "SELECT COUNT(*) FROM selections WHERE run = 'r'") == [((N_IMAGES - len(BROKEN)) * N_ABLATIONS,)]
    final = cli(*args, "--no-progress")
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same_store(db, reference["db"])


@pytest.mark.slow
def test_a_kill_inside_delete_leaves_the_run_whole_and_a_rerun_removes_it_whole(reference, tmp_path):
    db = tmp_path / "delete.duckdb"
    shutil.copy(reference["db"], db)  # runs t and r; r reads t's embeddings, so delete r
    before = sql_each(db, TABLES)
    kill_at("delete:5", "delete", "r", "--db", str(db))  # after 5 of delete's 9 statements, before COMMIT
    assert sql_each(db, TABLES) == before
    done = cli("delete", "r", "--db", str(db))
    assert done.returncode == 0, done.stderr[-2000:]
    tables = ("run_t", "image_t", "prompt_t", "ablation_t", "score_t", "selection_t", "embedding_t", "error_t", "stat_t")
    left = sql_each(db, {t: f"SELECT COUNT(*) FROM {t} WHERE run_id NOT IN (SELECT run_id FROM run_t WHERE run = 't')"
                         for t in tables})
    assert left == {t: [(0,)] for t in tables}
    assert_same_store(db, reference["complete"], skip=("caption cache",))  # run t exactly as it was
    cache = TABLES["caption cache"]
    assert sql(db, cache) == sql(reference["db"], cache)  # captions outlive runs: a cache shared by runs


@pytest.mark.slow
def test_kills_at_random_moments_of_a_captioned_run_then_resume(reference, tiny_clip, tiny_blip, tmp_path):
    db = tmp_path / "random.duckdb"
    exp = experiment(reference, tiny_clip, tiny_blip, db)
    rng = random.Random(11)
    landed = 0
    for _ in range(3):
        # Past startup (whose length varies most with the machine's load), then a random moment of the
        # store phase: creation, the mean pass, a batch, a commit, the caption stage.
        proc = start(exp)
        past_startup(proc, db)
        deadline = time.monotonic() + rng.uniform(0.0, 0.9) * reference["phase"]
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += 1
    assert landed >= 1, "every run finished before its kill; the test proved nothing"
    final = cli("run", str(exp), "--no-progress")
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same_store(db, reference["complete"])
