"""A run killed with SIGKILL at any moment, then run again, ends complete: every row once, same values."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import duckdb
import pytest
from helpers import ROOT

from tools.synthetic import make_coco, write_experiment

EXTRAS = ("zero:5-8", "mean:3,11")


def counts(db):
    if not db.exists():
        return None
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT (SELECT COUNT(*) FROM selection_t), (SELECT COUNT(*) FROM score_t)").fetchone()


def committed(db) -> int:
    """Selections committed so far, read while the run may hold the file (then: -1)."""
    try:
        state = counts(db)
    except duckdb.IOException:  # the run's writer holds the file
        return -1
    return -1 if state is None else state[0]


def start(exp):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "compute", "run", str(exp), "--no-progress"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_result(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=24)
    ref_db, db = tmp_path / "ref.duckdb", tmp_path / "killed.duckdb"
    ref = write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, extra=EXTRAS, batch_size=1)
    exp = write_experiment(tmp_path / "killed.toml", tiny_clip, coco, db, extra=EXTRAS, batch_size=1)
    t0 = time.monotonic()
    assert start(ref).wait(timeout=300) == 0
    whole = time.monotonic() - t0  # a whole run as a process: startup, means pass, sweep
    total = counts(ref_db)

    # Kill at random moments across a whole run's span: during startup, the means pass, a batch or a
    # commit. Each restart resumes, so later attempts may find the run already finished. On a busy
    # machine startup takes a larger share of the run (and with decode workers and the overlapped writer
    # the sweep a smaller one): a kill that found nothing committed yet moves the next one later, and
    # every other attempt kills at a random moment after the run has committed a batch, so some kill
    # lands mid-sweep whatever the load.
    rng = random.Random(7)
    partial_kills, late = 0, 0.0
    for attempt in range(4):  # each a process start; test_crashes lands kills at every named stage
        before = max(committed(db), 0)
        proc = start(exp)
        if attempt % 2 == 0:
            deadline = time.monotonic() + min(0.98, rng.uniform(0.15, 0.95) + late) * whole
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            deadline = time.monotonic() + 2 * whole
            while proc.poll() is None and time.monotonic() < deadline and committed(db) <= before:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = counts(db)
        if state is not None and 0 < state[0] < total[0]:
            partial_kills += 1
        elif not state or state[0] == 0:
            late += 0.2
    assert partial_kills >= 1, "no kill landed mid-sweep; the test proved nothing"

    final = subprocess.run([sys.executable, "-m", "compute", "run", str(exp), "--no-progress"], cwd=ROOT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert counts(db) == total

    sql = "SELECT image_id, ablation, prompt, logit, prob FROM scores ORDER BY image_id, ablation, prompt"
    with duckdb.connect(str(db), read_only=True) as a, duckdb.connect(str(ref_db), read_only=True) as b:
        got, want = a.execute(sql).fetchall(), b.execute(sql).fetchall()
        assert [r[:3] for r in got] == [r[:3] for r in want]  # every row once, none missing
        assert max(abs(x[3] - y[3]) for x, y in zip(got, want, strict=True)) < 1e-4
        sel = "SELECT image_id, ablation, prompt, correct FROM selections ORDER BY ALL"
        assert a.execute(sel).fetchall() == b.execute(sel).fetchall()
        assert a.execute("SELECT status FROM runs").fetchone()[0] == "complete"
        dup = "SELECT COUNT(*) FROM (SELECT image_id, ablation, prompt FROM scores GROUP BY ALL HAVING COUNT(*) > 1)"
        assert a.execute(dup).fetchone()[0] == 0
