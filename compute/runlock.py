"""One writer per run: two processes that run (or rescore into, or delete) the same run of one store take
turns instead of colliding.

The lock is an exclusive ``flock`` on a small file beside the store, one per run name
(``.STORE.run-HASH.lock``), which the operating system releases when its holder exits, however it exits
(a SIGKILL included), so a crashed run never blocks the next. A second ``run`` of the same experiment
says in one line that it waits, then resumes once the first is done: it finds every pair committed and
completes with the same rows. ``delete`` does not wait: it refuses while the run is being written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from compute.errors import StoreError, StoreIOError


def lock_path(db: Path, run: str) -> Path:
    digest = hashlib.sha256(run.encode()).hexdigest()[:16]
    return db.parent / f".{db.name}.run-{digest}.lock"


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def run_lock(db: Path, run: str, echo: Callable[[str], None] = print, wait: bool = True) -> Iterator[None]:
    """Hold run ``run`` of store ``db`` for writing. When another process holds it: with ``wait``, say so
    in one line and wait for it; else StoreError. The lock file is removed on release."""
    db = Path(db)
    path = lock_path(db, run)
    if not db.parent.is_dir():
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreIOError(f"store {db}: cannot create its folder ({e.strerror})") from None
    waited = False
    while True:
        try:
            # Read-only: the holder keeps no file open for writing (a file system can still go read-only).
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreIOError(f"store {db}: cannot create the lock file {path.name} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                os.close(fd)
                raise StoreError(f"run {run!r} is being written by {holder} on {db}; wait for it to finish "
                                 f"(or stop it), then try again") from None
            if not waited:
                echo(f"run {run!r} is being written by {holder} on {db}: waiting for it to finish "
                     f"(Ctrl-C to stop waiting)")
                waited = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        # The holder before us may have removed the file while we waited on it: lock the one at `path`.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with suppress(OSError), open(path, "w") as f:  # the pid is only for a waiting process's message
        f.write(str(os.getpid()))
    if waited:
        echo(f"run {run!r}: the other process is done; continuing")
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)  # while still holding the lock, so no one else locks a file about to vanish
        os.close(fd)
