"""Helpers every test tier shares (fixtures are in conftest.py): the repo's paths, read-only SQL on a store,
the command line three ways, the dashboard in AppTest (open_page, chart_rows, select, shown), the browser tests' loud skip, the modules kept on one worker, and CI's rule
(the hooks conftest.py registers: with CLIP_LAB_CI=1, as .ci/run sets it, a skipped browser, Ray or
root-only test fails, and so does a test module skipped at import).

Test modules import these (``from helpers import cli, sql``), never each other or conftest.py. Nothing
outside ``tests/`` imports this module (tests/unit/test_layout.py checks both).

The command line, ``python -m compute ARGS``:
    cli           in this process (the same ``compute.__main__.main``), without the 4-5 s of imports a new
                  interpreter pays: wherever the process boundary is not what a test is about.
    start_cli     a real process forked from this one (Forked, Popen's interface; cli_forked: run to its
    cli_forked    end), still without those imports: runs that are killed, stopped, run two at once or
                  beside the test's own run lock.
    cli_process   a new interpreter: only where that is the subject (the whole stderr of a refused command,
                  with nothing a library prints at import; import costs; memory limits; capabilities).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"  # the browser tests' screenshots and server logs
DASH_ABLATIONS = 22  # the dashboard store's run "tiny": paper sweep of 12 layers (21) + zero:5-8
SIGLIP_EXTRAS = ("zero:2-3", "mean:4/h1", "knockout:5/patches>patches/h0,h2")  # the siglip_store fixture's
HEADS_EXTRAS = ("mean:2/h1", "knockout:3-4/patches>cls/h1", "zero:6/h0,h3")  # the heads_store fixture's
KILL_ENV = "CLIP_LAB_KILL_AT"  # compute.killpoints: read once at import, so only a new process obeys it
# Modules whose module-scoped fixtures are dear (a local Ray, a browser with its server and store, a reference
# run killed against, the demo's store): `make test` keeps each on one worker (conftest.py's scheduler).
ONE_WORKER = ("test_browser.py", "test_ray.py", "test_crashes.py", "test_export.py", "test_demo_regression.py",
              "test_demo_captioner.py", "test_figure_pack.py", "test_compare_and_lab.py", "test_decomposition_views.py")
CI_ENV = "CLIP_LAB_CI"  # set by .ci/run
MUST_RUN = ("browser", "ray", "root")  # markers whose tests CI must run, never skip


def sql(db: Path, query: str, params=()) -> list[tuple]:
    """Rows of ``query`` on a read-only connection to ``db``."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query, params).fetchall()


def sql_each(db: Path, queries: dict[str, str]) -> dict[str, list[tuple]]:
    """Rows of each query, by name, all on one read-only connection to ``db``: opening one costs about 25 ms
    of CPU here (DuckDB builds its whole function catalog), which a comparison of two stores query by query
    paid dozens of times."""
    with duckdb.connect(str(db), read_only=True) as con:
        return {name: con.execute(query).fetchall() for name, query in queries.items()}


def flip(db: Path, offset: int) -> None:
    """Change 4 bytes of ``db`` at ``offset`` in place (each XOR 0xA5): a damaged block or header."""
    with open(db, "r+b") as f:
        f.seek(offset)
        data = f.read(4)
        f.seek(offset)
        f.write(bytes(b ^ 0xA5 for b in data))


def data_block(db: Path) -> int:
    """The byte offset of the middle of a block holding selection_t's values."""
    with duckdb.connect(str(db), read_only=True) as con:
        block = con.execute("SELECT max(block_id) FROM pragma_storage_info('selection_t')").fetchone()[0]
        size, total = con.execute("SELECT block_size, total_blocks FROM pragma_database_size()").fetchone()
    headers = db.stat().st_size - total * size  # DuckDB's file headers come before the first block
    return headers + block * size + size // 2


def open_page(db: Path, monkeypatch, page: str, default_timeout: float = 120, **params: str):
    """The real app in AppTest on store ``db`` ($CLIP_LAB_DB), with URL ``params``, switched to ``page`` (a key of
    dashboard.pages); asserts that it ran without an exception. Streamlit is imported here, not with helpers."""
    from streamlit.testing.v1 import AppTest

    from compute.store import DB_ENV
    from dashboard.pages import page_info

    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(APP, default_timeout=default_timeout)
    at.query_params.update(params)
    at.run()
    at.switch_page(page_info(page).path).run()
    assert not at.exception, at.exception[0].value
    return at


def shown(table) -> list[dict]:
    """An AppTest dataframe's rows as a browser shows them: the text a pandas Styler gave each cell, but "None"
    where the cell holds no value (Streamlit's grid shows a missing value so, whatever the Styler says)."""
    import pyarrow as pa

    values = table.proto.arrow_data.styler.display_values
    assert values, "this table has no pandas Styler: Streamlit shows its missing cells as None"
    text = pa.ipc.open_stream(values).read_all().to_pylist()
    gaps = table.value.isna().to_dict("records")
    return [{k: "None" if g[k] else v for k, v in t.items()} for t, g in zip(text, gaps, strict=True)]


def chart_rows(at) -> list[list[dict]]:
    """Per Vega-Lite chart on an AppTest page, the rows of all its datasets."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    return [[row for ds in el.proto.datasets for row in convert_arrow_bytes_to_pandas_df(ds.data.data).to_dict("records")]
            for el in at.get("vega_lite_chart")]


def select(at, param: str):
    """The AppTest select box that holds URL parameter ``param`` (dashboard.state's widget key)."""
    from dashboard.state import widget_key

    return next(w for w in at.selectbox if w.key == widget_key(param))


def cli_process(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m compute ARGS`` as a real process, from the repo root, offline."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "compute", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


class Forked:
    """A process forked from this one that runs ``target()`` and exits with what it returns: a real process
    (its own pid and memory, killed alone by a signal, its own file locks, an exit status) without the 4-5 s
    of imports a new interpreter pays. The interface is subprocess.Popen's, text mode: ``pid``, ``args``,
    ``returncode``, ``stdout`` / ``stderr`` (and ``stdin`` when asked for), ``poll``, ``wait``,
    ``communicate``, ``send_signal``, ``kill``.

    The child runs torch on one thread: OpenMP's thread pool does not survive a fork (a child that uses the
    parent's pool hangs). It never returns into pytest: it leaves with os._exit, as ``python -m compute``
    does. Not for what needs a fresh interpreter (what imports print, import costs, memory limits) or a
    process beside a running Ray (its threads do not survive a fork).
    """

    def __init__(self, target: Callable[[], int | None], args: list[str], stdin: bool = False) -> None:
        self.args, self.returncode = args, None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), None)
        pid = os.fork()
        if pid == 0:
            _child(target, in_r, out_w, err_w, [out_r, err_r, in_w])  # never returns
        self.pid = pid
        for fd in (out_w, err_w, in_r):
            os.close(fd)
        self.stdout = open(out_r, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by communicate)
        self.stderr = open(err_r, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.stdin = open(in_w, "w", encoding="utf-8") if in_w is not None else None  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """The rest of what the child writes to stdout and stderr until it ends (read together: a full pipe
        would stall it; what an earlier readline buffered included), then its exit status."""
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        got: dict[str, str] = {}
        readers = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f.read()), daemon=True)
                   for k, f in (("out", self.stdout), ("err", self.stderr))]
        for r in readers:
            r.start()
        for r in readers:
            r.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if r.is_alive():  # where it hangs: the child's threads' stacks, from faulthandler, in the error
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGUSR1)
                time.sleep(1)
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                for r in readers:
                    r.join(5)
                print(f"process {self.pid} timed out; its stderr ends (stacks last):\n{got.get('err', '')[-6000:]}",
                      file=sys.stderr)
                raise subprocess.TimeoutExpired(self.args, timeout, stderr=got.get("err", ""))
        self.stdout.close()
        self.stderr.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return got["out"], got["err"]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _child(target: Callable[[], int | None], stdin: int, stdout: int, stderr: int, parents: list[int | None]) -> None:
    code = 1
    try:
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in {stdin, stdout, stderr, *parents} - {None, 0, 1, 2}:  # the parent's ends: its stdin's write
            os.close(fd)  # end kept open here, the child would never read the end of its input
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115 (line-buffered)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
        _drop_inherited_flocks()
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # its stacks, when a test times out on it
        import torch

        torch.set_num_threads(1)
        code = target()
        code = 0 if code is None else code
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _drop_inherited_flocks() -> None:
    """Close the child's copies of files the parent holds an flock on (a run lock, compute.runlock): flock
    belongs to the open file, which fork shares, so the child would hold the parent's lock too and wait on
    itself."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                held = " FLOCK " in f.read()
        except OSError:  # the listing's own fd, gone
            continue
        if fd > 2 and held:
            os.close(fd)


def start_cli(*args: str, env: dict | None = None, stdin: bool = False,
              setup: Callable[[], None] | None = None) -> Forked:
    """``python -m compute ARGS`` started in a process forked from this one (see Forked), from the repo root,
    offline, with ``env`` added to its environment (a kill point in it is obeyed: compute.killpoints is read
    again in the child). ``setup()`` runs in the child before the command (a test's hook into the run)."""
    def target() -> int:
        os.environ.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        os.chdir(ROOT)
        import compute.killpoints
        from compute.__main__ import main

        importlib.reload(compute.killpoints)  # its callers read its globals, now from this environment
        if setup is not None:
            setup()
        return main(list(args))

    return Forked(target, ["python", "-m", "compute", *args], stdin=stdin)


def start_python(code: str, *argv: str, stdin: bool = False) -> Forked:
    """``python -c CODE ARGV`` started in a process forked from this one (see Forked), from the repo root."""
    def target() -> None:
        os.chdir(ROOT)
        sys.argv = ["-c", *argv]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})

    return Forked(target, ["python", "-c", code, *argv], stdin=stdin)


def cli_forked(*args: str, env: dict | None = None, timeout: float = 300,
               setup: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """start_cli(ARGS) run to its end: its exit status (negative: the signal that ended it), stdout, stderr."""
    proc = start_cli(*args, env=env, setup=setup)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class CliTimeout(Exception):
    """An in-process command ran past its timeout (what ``subprocess.run``'s timeout is to a process)."""


def cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m compute ARGS`` in this process: ``compute.__main__.main(ARGS)`` from the repo root, offline,
    with ``env`` added to the environment. Its stdout and stderr are captured (output of the decode worker
    processes is not); the exit code is ``main``'s return value or argparse's ``SystemExit``; an uncaught
    exception propagates (a process would print its traceback and exit 1), failing the test where it happened.

    The global state a command may change is put back afterwards: the environment, the working directory,
    torch's thread count, every Python signal handler, the root logger, transformers' verbosity and progress
    bars, the warning filters. ``timeout`` (main thread only) raises CliTimeout in the command, so a command
    that blocks fails the test instead of hanging the suite.
    """
    if env and KILL_ENV in env:
        raise ValueError(f"{KILL_ENV} is read when compute.killpoints is imported: use cli_process")
    import torch
    import transformers.utils.logging as hf_logging

    from compute.__main__ import main

    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    handlers = {s: h for s in signal.valid_signals() if (h := _handler(s)) is not None}
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:], root.disabled)
    hf_state = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    out, err = io.StringIO(), io.StringIO()
    alarm = timeout is not None and threading.current_thread() is threading.main_thread()
    try:
        os.environ.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        os.chdir(ROOT)
        if alarm:
            signal.signal(signal.SIGALRM, _timed_out(args, timeout))
            signal.setitimer(signal.ITIMER_REAL, timeout)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help (0) and usage errors (2)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in handlers.items():
            if _handler(s) != h:  # only what changed: a C-level handler (faulthandler's) stays
                signal.signal(s, h)
        os.chdir(saved_cwd)
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        root.setLevel(saved_root[0])
        root.handlers[:], root.disabled = saved_root[1], saved_root[2]
        hf_logging.set_verbosity(hf_state[0])
        (hf_logging.enable_progress_bar if hf_state[1] else hf_logging.disable_progress_bar)()
    return subprocess.CompletedProcess(["python", "-m", "compute", *args], code, out.getvalue(), err.getvalue())


def _handler(sig: signal.Signals):
    """The Python-level handler of ``sig`` (None where Python cannot read or set one)."""
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        return None
    try:
        return signal.getsignal(sig)
    except (OSError, ValueError):
        return None


def _timed_out(args: tuple[str, ...], timeout: float):
    def raise_timeout(signum, frame):
        raise CliTimeout(f"python -m compute {' '.join(args)} did not finish in {timeout} s")

    return raise_timeout


def run_probe(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A real pytest on the probe files in ``folder``, with this project's settings (pyproject.toml), no xdist
    nor cache, tests/ and the root importable; ``args`` go before the folder. What it printed, and its code."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(folder), *args, str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def skip_loudly(reason: str) -> None:
    """Skip with a banner on stderr: a browser test that did not run must not pass unnoticed (in CI, with
    CLIP_LAB_CI=1, conftest.py turns the skip of a browser, Ray or root test into a failure)."""
    banner = "!" * 78
    print(f"\n{banner}\n{reason}\n{banner}", file=sys.stderr)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------
# CI's rule: conftest.py registers these hooks.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a skipped browser, Ray or root-only test is a failure: a missing Chromium, playwright, Ray or
    root must not turn the tier green by not running it."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(CI_ENV) != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    marks = [m for m in MUST_RUN if item.get_closest_marker(m) is not None]
    if marks:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"a {'/'.join(marks)} test was skipped in CI ({CI_ENV}=1), where it must run: "
                           f"{reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In CI, a whole test module skipped at import (``pytest.importorskip`` at the top, a module-level skip)
    is a failure too: its markers are never seen, so no module may skip that way there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(CI_ENV) == "1" and report.skipped and isinstance(collector, pytest.Module):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"a test module was skipped in CI ({CI_ENV}=1), where every module must run: {reason}"


def foreign_duckdb(db: Path, tables: tuple[str, ...] = ("customers",)) -> None:
    """Another application's DuckDB file at ``db``: tables of its own, one row each."""
    with duckdb.connect(str(db)) as con:
        for t in tables:
            con.execute(f"CREATE TABLE {t} (id INTEGER, name VARCHAR)")
            con.execute(f"INSERT INTO {t} VALUES (1, 'x')")


def newer_schema(db: Path) -> None:
    """Mark the store ``db`` as written by a newer version of this tool (schema version 99)."""
    from compute import store

    with store.connect(db) as con:
        con.execute(f"UPDATE {store.MARKER} SET value = '99' WHERE key = 'schema_version'")


# Every way a store's file can be damaged or not be a store, with what its one line says: the command line's
# hardening tests (tests/integration/test_hardening.py) and the dashboard's (test_dashboard_hardening.py) share
# them.
DAMAGED = "is damaged (a block's checksum does not match its bytes at byte"
STORE_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "a changed block of data": (lambda db: flip(db, data_block(db)), DAMAGED),
    "a changed database header": (lambda db: flip(db, 4096 + 40), f"{DAMAGED} 4,096)"),
    "a changed main header": (lambda db: flip(db, 100), f"{DAMAGED} 0)"),
    "cut in half": (lambda db: os.truncate(db, db.stat().st_size // 2), "is damaged (cut short: it ends at byte"),
    "cut after its headers": (lambda db: os.truncate(db, 12388), "is damaged (cut short: it ends at byte 12,388,"),
    "random bytes after DuckDB's magic": (lambda db: db.write_bytes(
        np.random.default_rng(0).bytes(8) + b"DUCK" + np.random.default_rng(1).bytes(300_000)), f"{DAMAGED} 0)"),
    "an empty file": (lambda db: db.write_bytes(b""), "is not a DuckDB file (it is empty)"),
    "random bytes": (lambda db: db.write_bytes(np.random.default_rng(2).bytes(300_000)),
                     "is not a DuckDB file (unknown format)"),
    "another application's DuckDB file": (lambda db: db.unlink() or foreign_duckdb(db), "a DuckDB file of another application"),
}


# --------------------------------------------------------------------------------------------------
# LaTeX: the exported tables compile (the figure pack's tests and the decomposition's).


def pdflatex() -> str:
    """The pdflatex to compile with; skips loudly without one, except in CI (``CI_ENV`` set), where it fails."""
    found = shutil.which("pdflatex")
    if found is None:
        reason = "pdflatex not found (apt-get install texlive-latex-base texlive-latex-recommended)"
        if os.environ.get(CI_ENV):
            pytest.fail(f"PDFLATEX MISSING in CI: {reason}")
        print(f"\nPDFLATEX MISSING: {reason}; the LaTeX checks did not run", file=sys.stderr)
        pytest.skip(reason)
    return found


def compile_tex(pdflatex: str, folder: Path, name: str, preamble: str, body: str) -> str:
    """Compile a minimal document; its log."""
    (folder / f"{name}.tex").write_text("\\documentclass" + preamble + "\n\\begin{document}\n" + body +
                                        "\n\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", f"{name}.tex"],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    log = (folder / f"{name}.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    return log


def overfull(log: str) -> list[float]:
    """How far each overfull box of a LaTeX log runs past its line, in points."""
    return [float(x) for x in re.findall(r"Overfull \\hbox \(([0-9.]+)pt too wide\)", log)]
