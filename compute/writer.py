"""The store writer: commits batches from a thread while the run computes the next ones.

The run hands each batch over through a bounded queue (``put`` blocks when the writer is ``depth`` batches
behind, so memory stays bounded) and goes on computing. Each batch is still its own transaction, committed
whole or not at all, so a crash loses at most the batches not yet committed and a rerun resumes.

DuckDB lets one process write or several read, and closing a connection checkpoints what it wrote, which
costs more than the write itself when done per batch (see the README's Performance section). So the writer
keeps the file open while batches keep coming, for at most ``per_open`` batches or ``hold_s`` seconds, closes
it when none comes for ``linger_s`` seconds, and after a full session leaves the file closed for ``gap_s``
so that a dashboard reading the same store gets in between commits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from compute import store
from compute.errors import RunError, StoreIOError

_STOP = object()


class WriterFailed(RunError):
    """The writer thread could not commit a batch (the message says why)."""


@dataclass
class WriterStats:
    """What the writer did (the run's summary line and tools/pipeline_perf.py read them)."""

    batches: int = 0
    sessions: int = 0  # times the file was opened
    write_s: float = 0.0  # writing and committing the batches
    close_s: float = 0.0  # closing, which checkpoints
    wait_s: float = 0.0  # time the run spent blocked on a full queue: the store was the bottleneck


class BatchWriter:
    """``with BatchWriter(db, run_id) as w: w.put(result)``; on exit every batch put has been committed."""

    def __init__(self, db: Path, run_id: int, depth: int = 4, per_open: int = 4, hold_s: float = 1.0,
                 linger_s: float = 1.0, gap_s: float = 0.1,
                 on_commit: Callable[[store.BatchResult], None] | None = None) -> None:
        self.db, self.run_id = Path(db), run_id
        self.per_open, self.hold_s, self.linger_s, self.gap_s = per_open, hold_s, linger_s, gap_s
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="clip-lab-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        # Also after an error in the run: what was computed is committed before the error goes on.
        self._put(_STOP)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._failure()

    def put(self, result: store.BatchResult) -> None:
        """Queue one batch for commit; blocks while the queue is full. Raises if the writer has failed."""
        start = time.perf_counter()
        self._put(result)
        self.stats.wait_s += time.perf_counter() - start

    def _put(self, item: object) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                if item is _STOP:
                    return
                raise self._failure()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _failure(self) -> BaseException:
        # A store I/O failure already says, in one line, which store and why (a full disk ...): as is.
        if isinstance(self._error, StoreIOError):
            return self._error
        failed = WriterFailed(f"could not write to {self.db}: {self._error}")
        failed.__cause__ = self._error
        return failed

    def _loop(self) -> None:
        try:
            item = self._queue.get()
            while item is not _STOP:
                item = self._session(item)
        except BaseException as e:  # noqa: BLE001 - handed to the run's thread by put() and __exit__
            self._error = e

    def _session(self, item: object) -> object:
        """Open the store, commit ``item`` and whatever follows soon; return the next item to write."""
        stats = self.stats
        with ExitStack() as stack:
            con = stack.enter_context(store.connect(self.db))
            store.for_batch_writes(con)
            stats.sessions += 1
            opened = time.perf_counter()
            written = 0
            while True:
                start = time.perf_counter()
                store.write_batch(con, self.run_id, item)
                stats.write_s += time.perf_counter() - start
                stats.batches += 1
                written += 1
                if self.on_commit is not None:
                    self.on_commit(item)
                if written >= self.per_open or time.perf_counter() - opened >= self.hold_s:
                    item, held = None, True
                    break
                try:
                    item = self._queue.get(timeout=self.linger_s)
                except queue.Empty:
                    item, held = None, False
                    break
                if item is _STOP:
                    held = False
                    break
            closing = time.perf_counter()
        stats.close_s += time.perf_counter() - closing
        if held:
            time.sleep(self.gap_s)  # readers' turn
        return self._queue.get() if item is None else item
