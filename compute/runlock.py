"""One writer per run: two processes that run (or rescore into, or delete) the same run of one store take
turns instead of colliding.

The lock is an exclusive ``flock`` on a small file beside the store, one per run name
(``.STORE.run-HASH.lock``), which the operating system releases when its holder exits, however it exits
(a SIGKILL included), so a crashed run never blocks the next. A second ``run`` of the same experiment
says in one line that it waits, then resumes once the first is done: it finds every pair committed and
completes with the same rows. ``delete`` does not wait: it refuses while the run is being written.

The lock file is never followed: it is opened with O_NOFOLLOW and without blocking, and anything at its
path but a regular file (a symbolic link planted there, a FIFO, a folder) is refused in one line, untouched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
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


def _not_a_lock_file(db: Path, path: Path, what: str) -> StoreError:
    return StoreError(f"store {db}: the run's lock file {path} is {what}, not a regular file; it was left as "
                      f"it is: remove it and try again")


def _open_lock(db: Path, path: Path) -> int:
    """A read-only descriptor of the lock file at ``path``, created if needed; never through a link."""
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        # Read-only: the holder keeps no file open for writing (a file system can still go read-only).
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise _not_a_lock_file(db, path, "a symbolic link") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a socket; a folder opened with O_CREAT
            raise _not_a_lock_file(db, path, "a socket" if e.errno == errno.ENXIO else "a folder") from None
        raise StoreIOError(f"store {db}: cannot create the lock file {path.name} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_a_lock_file(db, path, "a folder" if stat.S_ISDIR(mode) else "a FIFO or a device")
    return fd


def _write_pid(path: Path, fd: int) -> None:
    """The holder's pid into the lock file it holds (only for a waiting process's message): opened without
    following a link, and written only when it is the very file locked through ``fd``."""
    try:
        out = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        a, b = os.fstat(out), os.fstat(fd)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            os.ftruncate(out, 0)
            os.write(out, str(os.getpid()).encode())
    except OSError:
        pass
    finally:
        os.close(out)


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
        fd = _open_lock(db, path)
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
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _write_pid(path, fd)
    if waited:
        echo(f"run {run!r}: the other process is done; continuing")
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)  # while still holding the lock, so no one else locks a file about to vanish
        os.close(fd)
