"""Concurrent use and I/O failures of the store, with real processes: two runs of one experiment at once,
a delete while the run is being written, a full disk (a small tmpfs) and a file-size limit. Each ends in
one clear line, never a traceback; the store stays valid; the result is the uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from helpers import Forked, cli, sql, sql_each, start_cli

from compute import store
from compute.__main__ import main
from compute.config import load_experiment
from compute.runlock import run_lock
from compute.runner import run
from tools.synthetic import make_coco, write_experiment

N_PAPER = 8  # images of the `paper` fixture's experiment: four batches of two
N_LIVE = 12  # images of the runs that must still be going when the test acts: batches of one
RESULTS = "SELECT image_id, ablation, prompt, logit, prob FROM scores ORDER BY image_id, ablation, prompt"
SELECTED = "SELECT image_id, ablation, prompt, correct FROM selections ORDER BY ALL"


def assert_same_results(got: Path, want: Path) -> None:
    queries = {"results": RESULTS, "selected": SELECTED}
    mine, theirs = sql_each(got, {**queries, "status": "SELECT status FROM runs"}), sql_each(want, queries)
    a, b = mine["results"], theirs["results"]
    assert [r[:3] for r in a] == [r[:3] for r in b]  # every row once, none missing
    assert max(abs(x[3] - y[3]) for x, y in zip(a, b, strict=True)) < 1e-4
    assert mine["selected"] == theirs["selected"]
    assert mine["status"] == [("complete",)]


def done_so_far(db: Path) -> int:
    """Selections committed so far, read as the dashboard does (retrying while the writer holds the file)."""
    if not db.exists():
        return 0
    with store.connect(db, read_only=True) as con:
        return con.execute("SELECT COUNT(*) FROM selection_t").fetchone()[0]


def start(exp: Path) -> Forked:
    return start_cli("run", str(exp), "--no-progress")  # a real process, forked: no new interpreter's imports


def line_with(proc: Forked, text: str) -> str:
    """The first line of ``proc``'s output holding ``text`` (lines before it, such as warnings, are skipped);
    "" if the output ends first."""
    while line := proc.stdout.readline():
        if text in line:
            return line
    return ""


@pytest.fixture
def paper(tiny_clip, tmp_path):
    """(experiment on a fresh store, the store of the same experiment run uninterrupted in-process)."""
    coco = make_coco(tmp_path / "coco", n=N_PAPER)
    ref_db = tmp_path / "ref.duckdb"
    ref = write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, batch_size=2)
    run(load_experiment(ref), progress=False, echo=lambda _: None)
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, tmp_path / "store" / "s.duckdb", batch_size=2)
    return exp, ref_db


@pytest.mark.slow
def test_two_runs_of_one_experiment_at_once_take_turns_and_agree(paper):
    exp, ref_db = paper
    db = exp.parent / "store" / "s.duckdb"
    # The test holds the run until both processes wait for it, then lets go: they contend for it at the same
    # moment whatever the machine's load (started together, the first could finish before the second's
    # imports are done).
    with run_lock(db, "t", echo=lambda _: None):
        procs = [start(exp), start(exp)]
        first = [line_with(p, "is being written by") for p in procs]  # each says it waits, in one line
    for line in first:
        assert f"is being written by process {os.getpid()}" in line and "waiting for it to finish" in line, first
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "Exception" not in err
    text = [out for out, _ in outs]
    assert all("the other process is done; continuing" in t for t in text), text
    # One made the run while the other waited on it, then found the work done.
    assert sum("new run 't'" in t for t in text) == 1 and sum("resuming run 't'" in t for t in text) == 1, text
    assert_same_results(db, ref_db)
    assert [p.name for p in db.parent.iterdir()] == ["s.duckdb"]  # the lock file went with its holder


@pytest.mark.slow
def test_delete_while_the_run_is_being_written_is_refused_in_one_line(tiny_clip, tmp_path, capsys):
    coco = make_coco(tmp_path / "coco", n=N_LIVE)
    db = tmp_path / "s.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, batch_size=1)
    writer = held_between_sessions(exp)  # part way through, whatever the machine's load
    try:
        assert store_free(db), f"the held run keeps the store open: {open_under(tmp_path)}"
        assert 0 < done_so_far(db) < N_LIVE * 21
        capsys.readouterr()
        assert main(["delete", "t", "--db", str(db)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: run 't' is being written by process {writer.pid} on {db}; wait for it to finish "
                       "(or stop it), then try again")
        writer.send_signal(signal.SIGCONT)  # it goes on to its end
        out, err = writer.communicate(timeout=600)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err[-2000:]
    assert sql(db, "SELECT status FROM runs") == [("complete",)]
    assert sql(db, "SELECT COUNT(*) FROM selections")[0][0] == N_LIVE * 21
    assert main(["delete", "t", "--db", str(db)]) == 0  # and once it is done, delete works


def _failed_part_way(result: subprocess.CompletedProcess, db: Path, cause: str, total: int) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: store {db}: {cause}. What was committed is kept and the store is valid; fix the cause (free "
        f"space) and run the same command again to resume"], result.stderr[-2000:]
    done = sql(db, "SELECT COUNT(*) FROM selection_t")[0][0]  # the store opens and reads: it is valid
    assert 0 < done < total, f"the failure did not land part way ({done} of {total})"
    assert sql(db, "SELECT COUNT(*) FROM score_t")[0][0] == done * 4  # whole batches only
    assert sql(db, "SELECT COUNT(*) FROM embedding_t")[0][0] == done


@pytest.fixture
def live_on_tmpfs(tiny_clip, tmp_path):
    """(experiment of N_LIVE images in batches of one writing to a store on its own 64 MB tmpfs, the same
    experiment's store run uninterrupted in-process). Needs root, for mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    coco = make_coco(tmp_path / "coco", n=N_LIVE)
    ref_db = tmp_path / "ref.duckdb"
    run(load_experiment(write_experiment(tmp_path / "ref.toml", tiny_clip, coco, ref_db, batch_size=1)),
        progress=False, echo=lambda _: None)
    mnt = tmp_path / "store"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield write_experiment(tmp_path / "e.toml", tiny_clip, coco, mnt / "s.duckdb", batch_size=1), ref_db
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


HELD: list[Forked] = []  # the stopped runs of this module's tests: killed after each test, whatever it did


@pytest.fixture(autouse=True)
def _no_stopped_run_outlives_its_test():
    yield
    while HELD:
        writer = HELD.pop()
        if writer.poll() is None:  # a test that failed before letting it go on: a stopped orphan otherwise
            writer.kill()
            writer.wait()


def held_between_sessions(exp: Path) -> Forked:
    """A run as a real process (forked), returned stopped (SIGSTOP) where its store writer is about to open the
    store a second time: a session's batches committed (at most 4 of N_LIVE: BatchWriter.per_open), and no
    connection to the store open in any thread (the writer waits for the main thread's to close, then stops
    the process from its own thread; later sessions go on). The test acts on it (a delete, a full disk, a
    read-only mount), then lets it go on (SIGCONT): the act lands part way whatever the machine's load."""
    def target() -> int:
        import contextlib
        import threading

        from compute import store
        from compute.__main__ import main

        opens, connect, live, lock = [], store.connect, [0], threading.Lock()

        @contextlib.contextmanager
        def counted(db, read_only, *args, **kwargs):
            with lock:
                live[0] += 1
            try:
                with connect(db, read_only, *args, **kwargs) as con:
                    yield con
            finally:
                with lock:
                    live[0] -= 1

        def held_connect(db, read_only=False, *args, **kwargs):
            if not read_only and threading.current_thread() is not threading.main_thread():  # the writer's
                opens.append(db)
                if len(opens) == 2:
                    deadline = time.monotonic() + 60
                    while True:
                        with lock:  # no connection opens or closes while it stops
                            if live[0] == 0 or time.monotonic() > deadline:
                                # To this thread, not the process: a process-directed SIGSTOP wakes the main
                                # thread to start the stop, and this one ran on meanwhile and opened the store
                                # (under load the test then found it held at the boundary). A thread-directed
                                # one stops this thread before kill returns; the group stops with it.
                                signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
                                break
                        time.sleep(0.002)
            return counted(db, read_only, *args, **kwargs)

        store.connect = held_connect
        return main(["run", str(exp), "--no-progress"])

    writer = Forked(target, ["python", "-m", "compute", "run", str(exp), "--no-progress"])
    HELD.append(writer)
    wait_stopped(writer)
    return writer


def store_free(db: Path) -> bool:
    """Whether no process holds ``db`` open for writing (DuckDB's lock)."""
    try:
        duckdb.connect(str(db), read_only=True).close()
    except duckdb.IOException:
        return False
    return True


def open_under(folder: Path) -> list[str]:
    """Every file descriptor of any process that points under ``folder``: "pid (command): path, flags"."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                pid = fd.parts[2]
                flags = (fd.parent.parent / "fdinfo" / fd.name).read_text().split()[3]
                command = (fd.parent.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
                found.append(f"{pid} ({command}): {target}, flags {flags}")
        except OSError:  # gone meanwhile
            continue
    return found


def wait_stopped(writer: Forked) -> None:
    """Until ``writer`` is stopped."""
    def state() -> str:
        return Path(f"/proc/{writer.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    deadline = time.monotonic() + 240
    while state() != "T":
        assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()[1][-2000:]
        time.sleep(0.01)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system; returns the file that holds them."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush when it is closed
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


@pytest.mark.slow
@pytest.mark.root
def test_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_completes(live_on_tmpfs):
    exp, ref_db = live_on_tmpfs
    db = exp.parent / "store" / "s.duckdb"
    writer = held_between_sessions(exp)
    filler = fill(db.parent)  # the disk fills up mid-run
    writer.send_signal(signal.SIGCONT)  # it goes on to its end
    out, err = writer.communicate(timeout=600)
    _failed_part_way(subprocess.CompletedProcess(writer.args, writer.returncode, out, err), db,
                     "no space left on device", N_LIVE * 21)
    filler.unlink()  # space freed
    again = cli("run", str(exp), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming run 't'" in again.stdout
    assert_same_results(db, ref_db)


@pytest.mark.slow
@pytest.mark.root
def test_a_file_system_turned_read_only_mid_run_is_one_line_and_a_rerun_completes(live_on_tmpfs):
    exp, ref_db = live_on_tmpfs
    mnt = exp.parent / "store"
    db = mnt / "s.duckdb"
    writer = held_between_sessions(exp)
    # The disk goes read-only mid-run (possible only while no file is open for writing: between sessions;
    # read-only is refused while a file there is open for writing, "mount point is busy").
    remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    assert remount.returncode == 0, f"{remount.stderr.strip()}; open under the mount: {open_under(mnt)}"
    writer.send_signal(signal.SIGCONT)  # it goes on to its end
    out, err = writer.communicate(timeout=600)
    _failed_part_way(subprocess.CompletedProcess(writer.args, writer.returncode, out, err), db,
                     "read-only file system", N_LIVE * 21)
    subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
    again = cli("run", str(exp), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_results(db, ref_db)
