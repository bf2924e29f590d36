"""Images to batches of pixel values on the model's device, decoded and preprocessed in worker processes.

Workers are forked processes (``--workers N``; 0 for one thread of this process). Each turns a chunk of
files into the model's exact pixels (compute.pixels), writes them into a slot of shared memory and sends back
only which images decoded; a bad image becomes an ``errors`` row. Chunks are small so the first batch comes
quickly, every worker keeps two queued so none waits, and two batches' worth of slots bound the memory.
On a GPU the workers ship uint8 crops (a quarter of the bytes), the batch is copied from pinned memory
without blocking and the value table is applied on the device; on the CPU the workers apply it. A worker
that dies is an error (``WorkerDied``, one line naming the file it was decoding), never a wait. A run that
dies takes its workers with it (on Linux the kernel kills them when the thread that started them ends), so a
killed run leaves no orphan, not even one blocked in a read; workers read regular files only
(compute.dataset.decode).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np
import torch
from PIL import Image

from compute.dataset import ImageLoadError, ImageRecord
from compute.errors import RunError
from compute.pixels import Recipe, load, recipe

MAX_CHUNK = 32  # images per worker task: small enough that the first batch comes quickly
TASKS_PER_WORKER = 2  # queued per worker, so that none waits for the main process


class WorkerDied(RunError):
    """A decode worker process ended while the run still needed it."""


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# Workers.


def device_table(recipe: Recipe, device: torch.device | str) -> torch.Tensor:
    """The recipe's value table on ``device``, flat: (3 * 256,) float32, for table_values."""
    return torch.tensor(recipe.table, device=device).reshape(-1)


def table_values(table: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops (n, 3, h, w) on the table's device -> (n, 3, h, w) float32, the processor's values: the
    lookup a worker makes on the host, made on the device (exactly the same floats)."""
    offsets = torch.arange(3, device=crops.device).view(1, 3, 1, 1) * 256
    return table[crops.long() + offsets]


def _work(recipe: Recipe, shared: np.ndarray, tasks: Connection, results: Connection, parent: int | None) -> None:
    """A worker's loop: (chunk, slot, [ImageRecord]) in, (chunk, decoded positions, errors) out."""
    while True:
        if not tasks.poll(0.5):
            if parent is not None and os.getppid() != parent:  # the run is gone: do not linger
                return
            continue
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        chunk, slot, items = task
        ok, errors = [], []
        try:
            for k, record in enumerate(items):
                try:
                    shared[slot, len(ok)] = load(recipe, record)
                except ImageLoadError as e:
                    errors.append((record.image_id, "load", str(e)))
                    continue
                ok.append(k)
        except Exception as e:  # a bug, not a bad image: the run stops with this message
            results.send((chunk, None, f"{type(e).__name__}: {e}"))
            return
        results.send((chunk, ok, errors))


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the process that forked it dies, even while it is blocked in
    a read (its own check of the parent runs only between tasks)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _worker_main(recipe: Recipe, shared: np.ndarray, tasks: Connection, results: Connection, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    # A process forked after its parent started torch's OpenMP threads waits forever in its first parallel op
    # (GNU OpenMP is not fork-safe); a processor that computes with torch (transformers' torchvision backend, a
    # user's own) would hang the run. One thread: the workers are one per core anyway.
    torch.set_num_threads(1)
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and SIGTERM are the main process's to handle
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError, EOFError, KeyboardInterrupt):  # the main process is gone
        _work(recipe, shared, tasks, results, parent)


@dataclass
class Batch:
    records: list[ImageRecord]  # the ones that decoded
    pixel_values: torch.Tensor | None  # (n, 3, height, width) in the model's dtype, on its device
    errors: list[tuple[int, str, str]]  # (image_id, "load", message)
    attempted: list[int]


@dataclass
class _Worker:
    tasks: Connection  # main -> worker
    results: Connection  # worker -> main
    process: mp.process.BaseProcess | None  # None: a thread of this process
    queued: int = 0


class Loader:
    """Batches of pixel values on ``device``, decoded by ``workers`` processes (0: one thread).

    Use as a context manager; ``batches(records)`` may be called several times (the means pass, the sweep):
    the workers start once, at the first call, and stop on exit.
    """

    def __init__(self, processor: object, device: torch.device | str, dtype: torch.dtype, batch_size: int,
                 workers: int, ship_uint8: bool | None = None) -> None:
        """ship_uint8: workers ship uint8 crops and the table is applied on the device (default: on CUDA)."""
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.n_workers = max(0, workers)
        self.recipe = recipe(processor, self.device.type == "cuda" if ship_uint8 is None else ship_uint8)
        self.chunk = max(1, min(MAX_CHUNK, math.ceil(batch_size / max(1, self.n_workers))))
        # Enough slots for two batches in flight plus the workers' queues: the device never waits for a
        # batch while the workers keep up, and memory stays bounded by the batch size.
        self.n_slots = 2 * math.ceil(batch_size / self.chunk) + TASKS_PER_WORKER * max(1, self.n_workers)
        self._workers: list[_Worker] = []
        self._shared: np.ndarray | None = None
        self._staging: list[tuple[torch.Tensor, torch.cuda.Event]] = []
        self._n_staged = 0
        self._table: torch.Tensor | None = None

    # --- life cycle

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers (once). Called by ``batches``; call it early to fork before other threads start."""
        if self._workers:
            return
        h, w = self.recipe.size
        shape = (self.n_slots, self.chunk, 3, h, w)
        nbytes = int(np.prod(shape)) * self.recipe.ship_dtype.itemsize
        # Anonymous shared memory: forked workers write into it, no copy through a pipe, and it is not
        # bounded by the size of /dev/shm (often 64 MB in containers).
        self._shared = np.frombuffer(mmap.mmap(-1, nbytes), self.recipe.ship_dtype).reshape(shape)
        fork = sys.platform.startswith("linux") and self.n_workers > 0
        ctx = mp.get_context("fork") if fork else None
        Image.init()  # every image plugin imported before the fork: a child never needs the import lock
        for _ in range(self.n_workers if fork else 1):
            task_r, task_w = mp.Pipe(duplex=False)
            res_r, res_w = mp.Pipe(duplex=False)
            if fork:
                proc = ctx.Process(target=_worker_main, args=(self.recipe, self._shared, task_r, res_w, os.getpid()),
                                   daemon=True, name="clip-lab-decode")
                proc.start()
                task_r.close()
                res_w.close()
            else:  # one decode thread, as when no worker processes are wanted
                proc = None
                threading.Thread(target=_work, args=(self.recipe, self._shared, task_r, res_w, None), daemon=True,
                                 name="clip-lab-decode").start()
            self._workers.append(_Worker(task_w, res_r, proc))

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):  # already gone
                worker.tasks.send(None)
        for worker in self._workers:
            if worker.process is not None:
                worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            worker.tasks.close()
            worker.results.close()
        self._workers = []

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    # --- batches

    def batches(self, records: list[ImageRecord]) -> Iterator[Batch]:
        """Batches of ``records`` in order; each image decoded once."""
        self.start()
        groups = [records[i : i + self.batch_size] for i in range(0, len(records), self.batch_size)]
        chunks: list[list[ImageRecord]] = []
        bounds = []  # (first chunk, end chunk) of each batch
        for group in groups:
            first = len(chunks)
            chunks += [group[i : i + self.chunk] for i in range(0, len(group), self.chunk)]
            bounds.append((first, len(chunks)))
        free = list(range(self.n_slots))
        slot_of: dict[int, int] = {}
        done: dict[int, tuple[list[int], list]] = {}
        owner: dict[int, _Worker] = {}  # chunks sent and not yet returned -> their worker
        sent = 0
        for group, (first, end) in zip(groups, bounds, strict=True):
            while any(c not in done for c in range(first, end)):
                while sent < len(chunks) and free:  # keep every worker's queue full, in order
                    worker = min(self._workers, key=lambda w: w.queued)
                    if worker.queued >= TASKS_PER_WORKER:
                        break
                    slot_of[sent] = free.pop()
                    owner[sent] = worker
                    try:
                        worker.tasks.send((sent, slot_of[sent], chunks[sent]))
                    except OSError:  # its end of the pipe is closed: it has died
                        self._died(worker, owner, chunks)
                    worker.queued += 1
                    sent += 1
                self._receive(done, owner, chunks)
            parts, ok, errors = [], [], []
            for c in range(first, end):
                positions, errs = done.pop(c)
                parts.append((slot_of[c], len(positions)))
                ok += [chunks[c][k] for k in positions]
                errors += errs
            pixels = self._to_device(parts, len(ok)) if ok else None
            free += [slot_of.pop(c) for c in range(first, end)]
            yield Batch(ok, pixels, errors, [r.image_id for r in group])

    def _receive(self, done: dict, owner: dict, chunks: list) -> None:
        """Wait for at least one result; a worker that has died is an error."""
        conns = {w.results: w for w in self._workers}
        sentinels = {w.process.sentinel: w for w in self._workers if w.process is not None}
        for ready in wait([*conns, *sentinels], timeout=None):
            if ready in conns:
                try:
                    chunk, positions, errors = ready.recv()
                except (EOFError, OSError):
                    self._died(conns[ready], owner, chunks)
                if positions is None:
                    raise WorkerDied(f"decode worker failed on a chunk starting with {chunks[chunk][0].file_name}: "
                                     f"{errors}")
                done[chunk] = (positions, errors)
                owner.pop(chunk)
                conns[ready].queued -= 1
            else:
                worker = sentinels[ready]
                if worker.results.poll():  # its last results came before it ended: read them first
                    continue
                self._died(worker, owner, chunks)

    def _died(self, worker: _Worker, owner: dict, chunks: list) -> None:
        proc = worker.process
        if proc is None:
            raise WorkerDied("the decode thread stopped unexpectedly")
        proc.join(timeout=1)
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        files = [r.file_name for c, w in owner.items() if w is worker for r in chunks[c]]  # sent, not returned
        at = f" while decoding {files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else "") if files else ""
        raise WorkerDied(f"decode worker (pid {proc.pid}) died ({how}){at}; what was committed is kept, "
                         f"run the same command again to resume")

    def _to_device(self, parts: list[tuple[int, int]], n: int) -> torch.Tensor:
        """Copy the decoded images out of their slots into one batch on the device. -> (n, 3, h, w)."""
        h, w = self.recipe.size
        cuda = self.device.type == "cuda"
        ship = torch.uint8 if self.recipe.ship_uint8 else torch.float32
        if cuda:
            if not self._staging:  # two pinned buffers: one is copied to the device while the next fills
                self._staging = [(torch.empty((self.batch_size, 3, h, w), dtype=ship, pin_memory=True),
                                  torch.cuda.Event()) for _ in range(2)]
            host, copied = self._staging[self._n_staged % 2]
            self._n_staged += 1
            copied.synchronize()  # its previous batch has reached the device
        else:
            host = torch.empty((n, 3, h, w), dtype=ship)
        pos = 0
        for slot, m in parts:
            host[pos : pos + m].copy_(torch.from_numpy(self._shared[slot, :m]))
            pos += m
        x = host[:n].to(self.device, non_blocking=cuda)
        if cuda:
            copied.record()
        if self.recipe.ship_uint8:
            if self._table is None:
                self._table = device_table(self.recipe, self.device)
            x = table_values(self._table, x)
        return x.to(self.dtype)
