"""``run --ray`` on a real local Ray (2 CPUs, one per module): the same store as a single-process run, a Ray
worker and actor killed mid-run (by PID) retried to the same result, a killed driver completed by a rerun.
(Bad input under ``--ray``, refused with the single-process run's one-line errors before Ray is even imported,
is tested with the other bad inputs in test_hardening.py.)

Select with ``pytest -m ray``. A local Ray takes 5-20 s to start here and each run starts a new actor (a
process that imports torch and loads the model), so the module shares one Ray and makes two tiny runs on
it: the clean comparison is the faulted run's (exact under faults is exact)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_process, sql, sql_each

from compute.config import load_experiment
from compute.runner import run
from tools.synthetic import make_coco, write_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXTRAS = ("mean:3,11", "zero:5-8", "identity:6/h0,h3", "knockout:9/patches>cls")
ATTRIBUTION = "[attribution]\nkinds = [\"identity\", \"mean\", \"knockout:patches>cls\"]\n"
CAPTIONS = "[captions]\nmax_new_tokens = 4\nnum_beams = 1\nbatch_size = 4\n[decomposition]\nenabled = true\n" + ATTRIBUTION
N_IMAGES, N_ABLATIONS = 30, 21 + len(EXTRAS)
QUIET = {"progress": False, "echo": lambda _: None, "workers": 0}  # the mean pass on a thread: no fork beside Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, as ``--ray`` starts it: 2 CPUs, no dashboard; its GCS address."""
    import ray

    from compute.distributed import start_local

    temp = start_local(2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tiny_clip, tiny_blip, tmp_path_factory):
    """A single-process run of the fixture experiment: 30 photo-like images of 320 x 240 (image 4 unreadable),
    the paper sweep plus mean, zero, head and knockout ablations, batches of 3, float32 embeddings, BLIP
    captions, decomposition, attribution of three kinds."""
    tmp = tmp_path_factory.mktemp("ray-reference")
    coco = make_coco(tmp / "coco", n=N_IMAGES, broken=(4,), size=(320, 240), photo=True)
    db = tmp / "ref.duckdb"
    exp = write_experiment(tmp / "ref.toml", tiny_clip, coco, db, extra=EXTRAS, batch_size=3, captioner=tiny_blip,
                           embeddings="float32", more=CAPTIONS)
    assert run(load_experiment(exp), **QUIET).complete
    return {"tmp": tmp, "coco": coco, "db": db}


def experiment(reference: dict, tiny_clip: Path, tiny_blip: Path, db: Path) -> Path:
    return write_experiment(db.with_suffix(".toml"), tiny_clip, reference["coco"], db, extra=EXTRAS, batch_size=3,
                            captioner=tiny_blip, embeddings="float32", more=CAPTIONS)


SCORES = "SELECT image_id, ablation, prompt, logit, prob FROM scores ORDER BY image_id, ablation, prompt"
SAME = {
    "errors": "SELECT image_id, stage, message FROM errors ORDER BY ALL",
    "images": "SELECT image_id, file_name, labels FROM images ORDER BY ALL",
    "runs": "SELECT run, model, status FROM runs",
    "stats": "SELECT name, layer, shape, data FROM stat_t ORDER BY ALL",
}
EMBEDDINGS = "SELECT image_id, ablation_id, embedding FROM embedding_t ORDER BY ALL"
DUPLICATES = "SELECT COUNT(*) FROM (SELECT image_id, ablation, prompt FROM scores GROUP BY ALL HAVING COUNT(*) > 1)"
DECOMPOSITION = {  # query: how many of its last columns are numbers
    "SELECT image_id, component, layer, head, prompt, logit FROM contributions ORDER BY ALL": 1,
    "SELECT image_id, ablation, prompt, total, direct, indirect FROM effects ORDER BY ALL": 3,
    "SELECT image_id, norm FROM decomposed_t ORDER BY ALL": 1,
    # the actors' attribution likewise: every estimate once, the prompts M compares and M
    "SELECT image_id, ablation, estimate FROM attributions ORDER BY ALL": 1,
    "SELECT image_id, spec, prompt_id, other_prompt_id, metric FROM attributed_t ORDER BY ALL": 1,
}
DESCRIBED = "SELECT layer, head, rank, text FROM head_descriptions ORDER BY ALL"
SELECTIONS = "SELECT * FROM selections ORDER BY ALL"
PICKS = "SELECT image_id, ablation_id, prompt_id, correct FROM selection_t ORDER BY ALL"
STATUS = "SELECT status FROM runs"


def assert_same_results(got: Path, want: Path) -> None:
    """The same rows, every one once; logits and probabilities within 1e-5; the same selections (prompt,
    correctness), captions, errors, images, means and status; embeddings within 1e-5; the decomposition's
    shares, effects and norms within 1e-5 and the same TextSpan texts; the attribution's estimates and margins
    within 1e-5. (Each store is read on one connection: opening one costs about 25 ms.)"""
    queries = {"scores": SCORES, "selections": SELECTIONS, "picks": PICKS, **SAME, "embeddings": EMBEDDINGS,
               "described": DESCRIBED, **{query: query for query in DECOMPOSITION}}
    mine = sql_each(got, {**queries, "duplicates": DUPLICATES, "status": STATUS})
    theirs = sql_each(want, queries)
    a, b = mine["scores"], theirs["scores"]
    assert [r[:3] for r in a] == [r[:3] for r in b]
    assert max(abs(x[3] - y[3]) for x, y in zip(a, b, strict=True)) < 1e-5
    assert max(abs(x[4] - y[4]) for x, y in zip(a, b, strict=True)) < 1e-5
    a, b = mine["selections"], theirs["selections"]
    assert [(r[1], r[2], r[3], r[5], r[7]) for r in a] == [(r[1], r[2], r[3], r[5], r[7]) for r in b]
    for k in (6, 8):  # score_baseline, caption_score
        assert max(abs((x[k] or 0) - (y[k] or 0)) for x, y in zip(a, b, strict=True)) < 1e-5
    assert mine["picks"] == theirs["picks"]
    for name in SAME:
        assert mine[name] == theirs[name], name
    a, b = mine["embeddings"], theirs["embeddings"]
    assert [r[:2] for r in a] == [r[:2] for r in b]
    assert all(np.allclose(np.frombuffer(x[2], np.float32), np.frombuffer(y[2], np.float32), atol=1e-5)
               for x, y in zip(a, b, strict=True))
    assert mine["duplicates"] == [(0,)]
    assert mine["status"] == [("complete",)]
    for query, values in DECOMPOSITION.items():  # the actors' decomposition, every row once
        a, b = mine[query], theirs[query]
        assert a and [r[:-values] for r in a] == [r[:-values] for r in b], query
        assert max(abs(x - y) for r, t in zip(a, b, strict=True) for x, y in zip(r[-values:], t[-values:], strict=True)) \
            < 1e-5, query
    assert mine["described"] == theirs["described"]


# --------------------------------------------------------------------------------------------------
# Faults.


class ProcessTree:
    """The processes below one PID (a local Ray's workers are its raylet's children), kept up to date by
    ``below()``: a listing of /proc each time, but the parent of each process read once, when it first appears
    (walking every /proc/N/stat ten times a second cost the test's process some 5 CPU-seconds a run)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.parent: dict[int, int | None] = {}

    def below(self) -> list[int]:
        alive = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        self.parent = {pid: up for pid, up in self.parent.items() if pid in alive}  # a reused PID is read again
        for pid in alive - self.parent.keys():
            try:
                self.parent[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                self.parent[pid] = None
        children: dict[int, list[int]] = {}
        for pid, up in self.parent.items():
            children.setdefault(up, []).append(pid)
        out, todo = [], [self.root]
        while todo:
            below = children.get(todo.pop(), [])
            out += below
            todo += below
        return out


def command_line(pid: int) -> str | None:
    """A process's command line as ``ps`` shows it (a Ray worker's shows the task it runs); None once gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None


class Killer(threading.Thread):
    """Watches this process's Ray workers and SIGKILLs, by PID, the first decode task's worker and the first
    actor it finds computing a batch; records every actor process it sees."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: dict[str, int] = {}
        self.actors: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        listed = 0.0
        tree = ProcessTree(os.getpid())
        while not self.stop.is_set():
            # The process tree every 0.1 s (a listing of /proc, new processes' parents); the command lines of the
            # workers in it every 5 ms while a kill is to come (a decode task lasts a moment; Ray's workers
            # are pooled, so a task's worker is listed before it starts), then every 0.1 s, when only new
            # actors are counted (they live until the run ends).
            if time.monotonic() - listed >= 0.1:
                pids, listed = tree.below(), time.monotonic()
            for pid in pids:
                cmd = command_line(pid)
                if cmd is None:
                    continue
                if "(SweepActor)" in cmd:
                    self.actors.add(pid)
                for what, title in (("decode", "ray::MapBatches(decode)"), ("actor", "(SweepActor)).submit")):
                    if what not in self.killed and title in cmd:
                        os.kill(pid, signal.SIGKILL)
                        self.killed[what] = pid
            time.sleep(0.005 if len(self.killed) < 2 else 0.1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's workers in Linux /proc")
def test_a_ray_run_with_a_worker_and_an_actor_killed_mid_run_gives_the_single_process_store(
        local_ray, reference, tiny_clip, tiny_blip, tmp_path):
    """The fixture experiment with --ray on the local Ray, while a decode task's worker and the actor are
    SIGKILLed by PID in the middle of a batch: Ray retries the task and restarts the actor, and the store
    equals the single-process run's, every row once."""
    from compute.distributed import RayOptions
    from compute.distributed import run as run_on_ray

    db = tmp_path / "ray.duckdb"
    killer = Killer()
    killer.start()
    try:
        result = run_on_ray(load_experiment(experiment(reference, tiny_clip, tiny_blip, db)), RayOptions(), **QUIET)
    finally:
        killer.stop.set()
        killer.join()
    assert set(killer.killed) == {"decode", "actor"}, f"killed only {killer.killed}: the run ended first"
    assert len(killer.actors) >= 2, "Ray did not start a new actor after the kill"
    assert result.complete and result.stats.ray.startswith("on Ray: 1 actor(s), CPU only")
    assert result.stats.images == N_IMAGES
    assert_same_results(db, reference["db"])


def test_a_driver_killed_mid_run_leaves_a_store_a_rerun_completes(local_ray, reference, tiny_clip, tiny_blip,
                                                                  tmp_path):
    db = tmp_path / "killed.duckdb"
    exp = experiment(reference, tiny_clip, tiny_blip, db)
    # A second driver joins the module's Ray and is SIGKILLed inside its second batch's transaction. Its mean pass
    # (stored, then resumed) runs on this process's torch threads: the means' last bits follow the thread count.
    killed = cli_process("run", str(exp), "--ray", local_ray, "--no-progress", "--threads", str(torch.get_num_threads()),
                         env={"CLIP_LAB_KILL_AT": "sweep:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sql(db, "SELECT COUNT(*) FROM selection_t") == [(3 * N_ABLATIONS,)]  # the first batch of 3 images
    assert sql(db, "SELECT status FROM runs") == [("running",)]
    said = []
    again = run(load_experiment(exp), **{**QUIET, "echo": said.append})  # without --ray: the same store, resumed
    assert again.complete and any(line.startswith("resuming run 't'") for line in said)
    assert_same_results(db, reference["db"])


def test_a_bfloat16_ray_run_is_verified_by_its_actor(local_ray, reference, tiny_clip, tmp_path):
    """dtype bfloat16 on Ray: the actor verifies its own batches in float32, so the picks are the float32
    single-process run's, every unablated pass and the actor's first images hold float32 values, and the
    mean statistics are the driver's float32 pass."""
    from compute.distributed import RayOptions
    from compute.distributed import run as run_on_ray

    db = tmp_path / "bf16.duckdb"
    exp = write_experiment(tmp_path / "bf16.toml", tiny_clip, reference["coco"], db, extra=EXTRAS, batch_size=3,
                           dtype="bfloat16", more=ATTRIBUTION)
    assert run_on_ray(load_experiment(exp), RayOptions(), **QUIET).complete
    assert sql(db, PICKS) == sql(reference["db"], PICKS)
    assert sql(db, SAME["stats"]) == sql(reference["db"], SAME["stats"])
    estimates = "SELECT image_id, ablation, estimate FROM attributions ORDER BY ALL"  # on the actor's float32 model
    a, b = sql(db, estimates), sql(reference["db"], estimates)
    assert a and [r[:2] for r in a] == [r[:2] for r in b]
    assert max(abs(x[2] - y[2]) for x, y in zip(a, b, strict=True)) < 1e-5
    counts = dict(sql(db, "SELECT verified, COUNT(*) FROM selection_t GROUP BY 1"))
    assert counts["baseline"] == N_IMAGES - 1  # image 4 is unreadable
    # the actor's first two images (one of them may be image 4, whose rows are dropped; an actor Ray restarts
    # calibrates again)
    assert counts["sample"] > 0 and counts["sample"] % (N_ABLATIONS - 1) == 0 and counts[None] > 0
