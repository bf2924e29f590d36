"""helpers.cli, the command line run in the test's own process, against the real process it stands in for
(helpers.cli_process): the same exit code, stdout and stderr; the global state a command changes put back;
a command that blocks fails instead of hanging; a kill point refused (only a new process reads it). And
helpers.cli_forked, a process forked from the test's: the same output, a kill point obeyed in the child
only. (test_concurrency.py's two-runs test shows a forked child does not hold the test's run lock.)"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time

import pytest
import torch
import transformers.utils.logging as hf_logging
from helpers import CliTimeout, cli, cli_forked, cli_process, sql, start_python

from tools.synthetic import make_coco, write_experiment


@pytest.fixture(scope="module")
def small_run(tiny_clip, tmp_path_factory):
    """(experiment file, its store after one complete run of 3 images, no sweep)."""
    tmp = tmp_path_factory.mktemp("cli")
    coco = make_coco(tmp / "coco", n=3)
    db = tmp / "r.duckdb"
    exp = write_experiment(tmp / "e.toml", tiny_clip, coco, db, sweep="none")
    assert cli("run", str(exp), "--no-progress").returncode == 0
    return exp, db


def test_in_process_and_real_process_give_the_same_code_stdout_and_stderr(small_run, tmp_path):
    exp, db = small_run
    bad = tmp_path / "bad.toml"
    bad.write_text(exp.read_text().replace('name = "t"', "name = 5", 1))
    cases = [  # a process each (about 5 s of imports): the three ways a command ends
        ("list", "--db", str(db)),  # a table on stdout, exit 0
        ("run", str(bad), "--no-progress"),  # bad input: one line on stderr, exit 2
        ("run", str(exp), "--limit", "x"),  # argparse's usage error, SystemExit(2)
    ]
    for args in cases:
        inside, outside = cli(*args), cli_process(*args)
        assert (inside.returncode, inside.stdout, inside.stderr) == \
            (outside.returncode, outside.stdout, outside.stderr), args
    assert [cli(*args).returncode for args in cases] == [0, 2, 2]
    assert "usage: python -m compute run" in cli(*cases[2]).stderr
    helped = cli("run", "--help")  # argparse's SystemExit(0)
    assert (helped.returncode, helped.stderr) == (0, "") and helped.stdout.startswith("usage: python -m compute run")


def test_a_command_leaves_the_global_state_as_it_found_it(small_run, monkeypatch):
    exp, _ = small_run
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # the command sets it when unset
    threads, cwd = torch.get_num_threads(), os.getcwd()
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    root = logging.getLogger()
    level, root_handlers = root.level, root.handlers[:]
    hf_logging.set_verbosity_info()  # not the command's choice (error), so a leak would show
    try:
        result = cli("run", str(exp), "--no-progress", "--threads", str(threads + 1), env={"CLIP_LAB_X": "1"})
        assert result.returncode == 0, result.stderr
        assert "resuming run 't'" in result.stdout
        assert hf_logging.get_verbosity() == logging.INFO and hf_logging.is_progress_bar_enabled() == bars
    finally:
        hf_logging.set_verbosity(verbosity)
    assert torch.get_num_threads() == threads
    assert os.getcwd() == cwd
    assert "CLIP_LAB_X" not in os.environ and "TOKENIZERS_PARALLELISM" not in os.environ
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert (root.level, root.handlers) == (level, root_handlers)


def test_a_command_that_blocks_fails_at_its_timeout(monkeypatch):
    from compute import __main__ as entry

    monkeypatch.setattr(entry, "cmd_list", lambda args: time.sleep(30) or 0)
    t0 = time.monotonic()
    with pytest.raises(CliTimeout, match="did not finish in 0.5 s"):
        cli("list", "--db", "x.duckdb", timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_kill_point_needs_a_real_process():
    with pytest.raises(ValueError, match="use cli_process"):
        cli("list", env={"CLIP_LAB_KILL_AT": "sweep:1"})


def test_a_forked_command_gives_the_same_output_and_obeys_a_kill_point_alone(small_run, tmp_path):
    from compute import killpoints

    exp, db = small_run
    for args in (("list", "--db", str(db)), ("run", str(exp), "--limit", "x")):
        forked, inside = cli_forked(*args), cli(*args)
        assert (forked.returncode, forked.stdout, forked.stderr) == (inside.returncode, inside.stdout, inside.stderr)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    killed = cli_forked("delete", "t", "--db", str(copy), env={"CLIP_LAB_KILL_AT": "delete:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sql(copy, "SELECT run FROM runs") == [("t",)]  # killed inside delete's transaction: nothing gone
    assert killpoints._STAGE == "" and "CLIP_LAB_KILL_AT" not in os.environ  # this process's are untouched


def test_a_forked_script_reads_its_input_to_the_end_and_exits_with_its_status():
    echo = start_python("import sys\nprint(sys.argv[1:], len(sys.stdin.read()))\nsys.exit(3)", "a", "b", stdin=True)
    echo.stdin.write("four")
    out, err = echo.communicate(timeout=60)  # closes its input: the child sees the end of it
    assert (echo.returncode, out, err) == (3, "['a', 'b'] 4\n", "")
    failing = start_python("raise ValueError('boom')")
    out, err = failing.communicate(timeout=60)
    assert failing.returncode == 1 and err.strip().endswith("ValueError: boom") and out == ""
