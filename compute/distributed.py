"""``python -m compute run EXP.toml --ray [ADDRESS]``: a run's sweep on a Ray cluster, with the checks, store,
resume and results of a single-process run.

Everything but the sweep is the single-process run itself (``compute.runner.run`` with this module's
sweeper): the experiment, dataset, model and ablations are checked before Ray is even imported, the run's
rows are made or resumed, the dataset-mean pass and the caption stage run in this process. The sweep is a
Ray Data pipeline over the pending images:

    input_rows ─► decode (CPU tasks) ─► SweepActor pool (model + engine) ─► result batches ─► this process
                   ray_decode.decode     ray_workers.SweepActor                                to_result → BatchWriter

and this process alone writes the store, one transaction per result batch through compute.writer, under
the run's lock (compute.runlock), with the progress bar of a single-process run.

Where the Ray driver is: ``--ray`` (or ``--ray local``) starts a local Ray here and this process is its
driver; ``--ray auto`` or ``--ray HOST:PORT`` join a cluster this machine is a node of, again as its driver;
``--ray ray://HOST:PORT`` connects from anywhere as a Ray client. Ray Data wants its driver on the cluster,
so then the pipeline runs in a ``PipelineDriver`` actor there and this process pulls result batches from it
in order. Joining a cluster ships the ``compute`` package to it (a runtime env); the nodes need the
requirements installed.

Faults: Ray retries a failed decode task and restarts a dead actor (its batch is computed again). A batch can
then arrive twice: ``to_result`` keeps the image ids already written and drops them. A dead driver leaves
only whole batches in the store, which a rerun (with or without ``--ray``) keeps and completes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np

from compute import store
from compute.config import Experiment
from compute.decomposition import direct_ids
from compute.errors import InputError, RunError
from compute.loader import Loader, default_workers
from compute.pixels import recipe
from compute.ray_decode import decode
from compute.ray_workers import DECOMPOSITION_COLUMNS, SweepActor, SweepPlan, input_rows
from compute.runner import RunResult, SweepWork
from compute.runner import run as run_here
from compute.scoring import ATTRIBUTED, ATTRIBUTION_FIELDS, DECOMPOSED, check_finite
from compute.writer import BatchWriter

LOCAL = "local"
AUTO = "auto"
# ray://HOST[:PORT] (a Ray client) or HOST:PORT (the cluster's GCS); HOST a name, IPv4 or [IPv6]
ADDRESS = re.compile(r"^(ray://[\w.\-]+|ray://\[[0-9a-fA-F:]+\]|[\w.\-]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?$")
ACTOR_CPUS = 1.0  # an actor's CPU share (its torch threads): the model's work is on its GPU
DECODE_CPUS = 0.5  # a decode task's: unlike the actor's, so Ray Data never fuses decoding into the actors
CLIENT_PORT, GCS_PORT = 10001, 6379  # Ray's defaults for ray://HOST and HOST
PREFETCH = 2  # result batches a Ray client asks for ahead, so the pipeline never waits for the network
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT", "TOKENIZERS_PARALLELISM", "OMP_WAIT_POLICY")


class RayRunFailed(RunError):
    """Ray could not be reached, or the pipeline stopped for good (the message says why)."""


@dataclass(frozen=True)
class RayOptions:
    """``--ray [ADDRESS] [--ray-actors N] [--ray-gpus-per-actor F]``."""

    address: str = LOCAL  # local | auto | HOST:PORT | ray://HOST:PORT
    actors: int | None = None  # default: one per GPU of the cluster (gpus_per_actor each), else 1
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0


@dataclass(frozen=True)
class Layout:
    """How the pipeline is laid out on the cluster it found."""

    actors: int
    gpus_per_actor: float
    batch_size: int  # images per decode task and per actor call: the experiment's batch_size

    def describe(self) -> str:
        on = f"{self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else "CPU only"
        return f"on Ray: {self.actors} actor(s), {on}, batches of {self.batch_size}"


def check_address(text: str) -> str:
    """The --ray value, or InputError in one line (before anything starts)."""
    if text in (LOCAL, AUTO):
        return text
    if (found := ADDRESS.match(text)) is not None:
        port = found.group(2)
        if port is not None and not 1 <= int(port[1:]) <= 65535:
            raise InputError(f"--ray {text!r}: port {int(port[1:])} is not a TCP port (1 to 65535)")
        return text
    raise InputError(f"--ray {text!r} is not a Ray address: give none (a local Ray on this machine), 'auto' "
                     f"(the cluster of RAY_ADDRESS or the one this node belongs to), HOST:PORT or ray://HOST:PORT")


def run(exp: Experiment, options: RayOptions, **kwargs: object) -> RunResult:
    """``compute.runner.run`` with the sweep on Ray; the same keyword arguments (method must be engine)."""
    if kwargs.get("method", "engine") != "engine":
        raise InputError("--method plain runs in one process only: leave out --ray (or --method)")
    reach = None
    if options.address != LOCAL:  # a cluster that is not there: one line once the input is checked, no store
        reach = partial(check_reachable, os.environ.get("RAY_ADDRESS", "") if options.address == AUTO else options.address)
    return run_here(exp, sweeper=partial(ray_sweep, options=options), before_writing=reach, **kwargs)


# --------------------------------------------------------------------------------------------------
# The sweep.


def ray_sweep(work: SweepWork, loader: Loader, options: RayOptions) -> None:
    """runner's Sweeper on Ray: the pending images through the pipeline, each result batch committed here."""
    loader.close()  # the mean pass's decode workers (if it ran): Ray decodes from here on
    prep, stats = work.prep, work.stats
    exp = prep.exp
    plan = SweepPlan(exp.model.clip, exp.model.device, exp.model.dtype, prep.ablations, work.keep, work.means,
                     [p.texts for p in exp.prompts], exp.store.embeddings,
                     recipe(prep.clip.image_processor, ship_uint8=True), threads=int(ACTOR_CPUS),
                     decomposition=exp.decomposition.vectors if exp.decomposition.enabled else "",
                     attribution=tuple(s.label for s in work.specs), estimate_ids=tuple(work.estimate_ids))
    rows = input_rows(work.pending, [p.label for p in exp.prompts])
    bar = work.bar()
    try:
        with ray_connection(options.address) as client:
            layout = resolve_layout(options, exp.model.batch_size)
            stats.ray = layout.describe()
            start = time.perf_counter()
            batches = (remote_batches if client else pipeline_batches)(plan, rows, layout)
            written: set[int] = set()
            with BatchWriter(exp.store.db, work.run_id, on_commit=lambda r: bar.update(len(r.attempted))) as writer:
                for columns in _stopped_as_run_error(batches):
                    result = to_result(columns, work.keep, written, plan)
                    if result is not None:
                        check_finite(result, prep.ablations, exp.model.clip)  # as runner._sweep, before writing
                        writer.put(result)
                        stats.first_batch_s = stats.first_batch_s or time.perf_counter() - start
            stats.writer = writer.stats
            stats.images = len(work.pending)
            stats.sweep_s = time.perf_counter() - start
    finally:
        bar.close()


SELECTION_FIELDS = [f.name for f in fields(store.Selection)]


def to_result(columns: dict[str, np.ndarray], keep: list[int], written: set[int],
              plan: SweepPlan | None = None) -> store.BatchResult | None:
    """One result batch of the pipeline (scored by the actor's compute.scoring.score_batch, for the ablation
    ids ``keep``) -> what the writer commits: the rows not written yet (a batch Ray retried can arrive twice),
    the images that failed as errors rows, and (``plan`` with decomposition, attribution) the images'
    decomposition and attribution. None
    when every row was written already. ``written`` is updated."""
    ids = [int(i) for i in columns["image_id"]]
    fresh = [k for k, i in enumerate(ids) if i not in written]
    if not fresh:
        return None
    written.update(ids[k] for k in fresh)
    failed = columns["error"]
    errors = [(ids[k], "load", str(failed[k])) for k in fresh if failed[k]]
    ok = [k for k in fresh if not failed[k]]
    attempted = [ids[k] for k in fresh]
    if not ok:
        return store.BatchResult.failed(errors, attempted)
    selection = store.Selection(**{name: columns[name][ok] for name in SELECTION_FIELDS if name in columns})  # axis 1: keep
    embeddings = columns["embeddings"][ok] if "embeddings" in columns else None
    decomposition = None
    if plan is not None and plan.decomposition:
        arrays = {name: columns[DECOMPOSED + name][ok] for name in DECOMPOSITION_COLUMNS if DECOMPOSED + name in columns}
        decomposition = store.DecompositionRows(direct_ablation_ids=np.array(direct_ids(plan.ablations), np.int16),
                                                vector_dtype=plan.decomposition, **arrays)
    attribution = None
    if plan is not None and plan.attribution:
        a = {name: columns[ATTRIBUTED + name][ok] for name in ATTRIBUTION_FIELDS}
        attribution = store.AttributionRows(np.array(plan.estimate_ids, np.int16), list(plan.attribution),
                                            a["estimate"], a["metric"], a["pairs"])
    return store.BatchResult(np.array([ids[k] for k in ok], np.int64), np.array(keep, np.int16), selection,
                             embeddings, errors, attempted, decomposition, attribution)


def _stopped_as_run_error(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Ray's errors (a task that failed past its retries, a lost cluster) as one line and exit code 1."""
    try:
        yield from batches
    except (RunError, InputError):
        raise
    except Exception as e:
        raise RayRunFailed(f"the Ray pipeline stopped: {reason(e)}; what was committed is kept, run the same "
                           f"command again to resume") from e


def reason(error: BaseException) -> str:
    """The innermost cause of a Ray error, in one line (Ray wraps a worker's exception with its traceback)."""
    while True:
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException) or inner is error:
            break
        error = inner
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# --------------------------------------------------------------------------------------------------
# Ray: the connection, the layout, the pipeline.


@contextmanager
def ray_connection(address: str) -> Iterator[bool]:
    """Ray, ready for this process; yields whether this process is a Ray client (ray://). A Ray this process
    has already started or joined (a test's local Ray) is used as it is and left running."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no prompt, nothing reported
    import ray

    if ray.is_initialized():
        yield ray.util.client.ray.is_connected()
        return
    temp = None
    try:
        if address == LOCAL:
            temp = start_local(default_workers())
        else:
            check_reachable(os.environ.get("RAY_ADDRESS", "") if address == AUTO else address)
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            runtime_env = {"py_modules": [str(Path(__file__).parent)], "excludes": ["__pycache__"], "env_vars": env}
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    except RayRunFailed:
        raise
    except Exception as e:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise RayRunFailed(f"cannot {'start a local Ray' if address == LOCAL else f'reach Ray at {address}'}: "
                           f"{reason(e)}") from e
    try:
        yield address.startswith("ray://")
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Connect to the address's port once, so that a cluster that is not there is one line now instead of
    minutes of Ray's retries. "" (auto without RAY_ADDRESS: Ray looks for this node's cluster) passes."""
    if not ADDRESS.match(address):
        return
    client = address.startswith("ray://")
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or host.endswith(":") or "]" in port:  # no port given: Ray's default
        host, port = address.removeprefix("ray://"), str(CLIENT_PORT if client else GCS_PORT)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayRunFailed(f"cannot reach Ray at {address}: {e.strerror or e} (start a cluster with `ray start "
                           f"--head`; see the README's \"Running on a cluster\")") from None


def start_local(num_cpus: int) -> str:
    """Start a local Ray of ``num_cpus`` CPUs (no dashboard) for this process; returns its temp folder, to
    remove after ray.shutdown(). The folder's path is short: Ray's unix sockets live under it (at most
    about 107 bytes in all)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token for a Ray only this machine reaches
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp, logging_level=logging.WARNING)
    return temp


def resolve_layout(options: RayOptions, batch_size: int) -> Layout:
    """Actors and GPUs per actor for the cluster Ray reached: by default one actor per GPU, else one."""
    import ray

    gpus_total = float(ray.cluster_resources().get("GPU", 0))
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus_total else 0.0)
    if gpus > gpus_total:
        raise RayRunFailed(f"--ray-gpus-per-actor {gpus:g}: the Ray cluster has {gpus_total:g} GPU(s); give 0 for "
                           f"CPU actors")
    actors = options.actors or (max(1, int(gpus_total // gpus)) if gpus else 1)
    return Layout(actors, gpus, batch_size)


def pipeline(plan: SweepPlan, rows: list[dict[str, object]], layout: Layout) -> object:
    """The Ray Data dataset: rows -> decode (CPU tasks) -> SweepActor pool -> result batches."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on each execution would bury the bar
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver's bar is the run's
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # result batches in image order, as in a single-process run
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(decode, fn_kwargs={"recipe": plan.recipe.without_processor()}, batch_size=layout.batch_size,
                        batch_format="numpy", num_cpus=DECODE_CPUS)
    return ds.map_batches(SweepActor, fn_constructor_kwargs={"plan": plan}, batch_size=layout.batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=layout.actors),
                          num_cpus=ACTOR_CPUS, num_gpus=layout.gpus_per_actor or None)


def pipeline_batches(plan: SweepPlan, rows: list[dict[str, object]], layout: Layout) -> Iterator[dict[str, np.ndarray]]:
    """Result batches of the pipeline, run by this process as the Ray driver."""
    yield from pipeline(plan, rows, layout).iter_batches(batch_size=None, batch_format="numpy")


class PipelineDriver:
    """The pipeline's driver on the cluster, for a Ray client: an actor that runs it and hands out its
    result batches in order."""

    def __init__(self, plan: SweepPlan, rows: list[dict[str, object]], layout: Layout) -> None:
        self.batches = pipeline_batches(plan, rows, layout)

    def next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def remote_batches(plan: SweepPlan, rows: list[dict[str, object]], layout: Layout) -> Iterator[dict[str, np.ndarray]]:
    """Result batches of the pipeline run by a PipelineDriver on the cluster (this process is a Ray client)."""
    import ray

    driver = ray.remote(num_cpus=0, max_restarts=0)(PipelineDriver).remote(plan, rows, layout)
    ahead = deque(driver.next.remote() for _ in range(PREFETCH))  # an actor answers its calls in order
    try:
        while (columns := ray.get(ahead.popleft())) is not None:
            ahead.append(driver.next.remote())
            yield columns
    finally:
        ray.kill(driver)
