"""Command line of the compute stage: ``python -m compute VERB ...`` (``--help`` on every verb).

Bad input (and an unusable store path) ends with one line ``error: ...`` on stderr and exit code 2;
nothing is written. A run that stops part way for another reason (a decode worker died, the store could
not be written: a full disk, a file system gone read-only) ends with one line ``error: ...`` naming the
cause, and exit code 1; what was committed is kept and the same command resumes. Ctrl-C and SIGTERM (a
``kill``, a job scheduler's stop) end the same way: one line, exit code 130, the committed work kept and
the decode workers stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from compute.errors import InputError, RunError
from compute.store import DEFAULT_DB_TEXT, resolve_db
from compute.validation import (
    MAX_ACTORS,
    MAX_BATCH,
    MAX_IMAGES,
    MAX_THREADS,
    MAX_WORKERS,
    check_count,
    check_gpus,
    check_run_name,
    printable,
)

if TYPE_CHECKING:
    from compute.distributed import RayOptions

EXIT_INPUT = 2
EXIT_RUN = 1


def add_db_argument(parser: argparse.ArgumentParser, help: str = f"DuckDB store (default: {DEFAULT_DB_TEXT})") -> None:
    """--db for every verb that opens a store; None means the default store (compute.store.default_db)."""
    parser.add_argument("--db", type=Path, default=None, help=help)


def chosen_db(args: argparse.Namespace) -> Path:
    return resolve_db(args.db)


def quiet_libraries() -> None:
    # transformers and the tokenizers fork warning would bury the one line that matters.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from compute.models import quiet_transformers

    quiet_transformers()


# --------------------------------------------------------------------------------------------------
# Verbs.


def cmd_run(args: argparse.Namespace) -> int:
    from compute.config import load_experiment

    exp = load_experiment(args.experiment)  # no torch yet: a refused experiment answers before its second of import
    if args.db is not None:
        exp.store.db = chosen_db(args)
    if args.limit is not None:
        exp.dataset.limit = check_count(args.limit, "--limit", MAX_IMAGES, "images in one run")
    if args.batch_size is not None:
        exp.model.batch_size = check_count(args.batch_size, "--batch-size", MAX_BATCH, "images per batch")
    if args.device:
        exp.model.device = args.device
    if args.dtype:
        exp.model.dtype = args.dtype
    if args.threads is not None:
        check_count(args.threads, "--threads", MAX_THREADS, "CPU threads")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    if args.workers:
        check_count(args.workers, "--workers", MAX_WORKERS, "decode processes")
    options = ray_options(args)
    # The store path and the dataset are checked as the run checks them (the same calls, in the same order),
    # but before torch and transformers are imported: bad data is refused in 0.2 s rather than 1.5 s here.
    from compute.dataset import load_dataset
    from compute.store import check_store

    check_store(exp.store.db, write=True)
    images = load_dataset(exp.dataset, [p.label for p in exp.prompts])
    quiet_libraries()
    kwargs = dict(method=args.method, progress=not args.no_progress, threads=args.threads, workers=args.workers,
                  images=images)
    if options is None:
        from compute.runner import run

        run(exp, **kwargs)
    else:  # ray itself is imported only once the experiment has passed every check
        from compute import distributed

        distributed.run(exp, options, **kwargs)
    return 0


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """--ray and its options, checked (None: a single-process run)."""
    if args.ray is None:
        for name in ("ray_actors", "ray_gpus_per_actor"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name.replace('_', '-')} needs --ray")
        return None
    from compute.distributed import RayOptions, check_address

    actors = args.ray_actors
    if actors is not None:
        check_count(actors, "--ray-actors", MAX_ACTORS, "Ray actors, each holding a model")
    gpus = None if args.ray_gpus_per_actor is None else check_gpus(args.ray_gpus_per_actor, "--ray-gpus-per-actor")
    return RayOptions(check_address(args.ray.strip()), actors, gpus)


def format_columns(head: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A plain-text table whose columns are as wide as their widest cell (the last one is left ragged)."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        parts = [str(c).rjust(w) if k in right else str(c).ljust(w)
                 for k, (c, w) in enumerate(zip(cells, widths, strict=True))]
        parts[-1] = str(cells[-1])
        return "  ".join(parts).rstrip()

    first = line(head)
    return "\n".join([first, "-" * len(first), *(line(r) for r in rows)])


def cmd_list(args: argparse.Namespace) -> int:
    from compute import store

    db = chosen_db(args)
    if not db.exists():
        raise InputError(f"no store at {db} (run an experiment first, or pass --db)")
    store.check_store(db, write=False)  # a damaged store is one line, whichever block list would read
    with store.connect(db, read_only=True) as con:
        rows = store.list_runs(con)[::-1]  # oldest first, as they were made
    if not rows:
        print(f"no runs in {db}")
        return 0
    table = []
    for r in rows:
        total = (r["n_images"] - r["n_failed"]) * r["n_ablations"]  # images that failed to load are not pending
        name = r["run"] if not r["parent_run"] else f"{r['run']} (from {r['parent_run']})"
        table.append([  # names of stores made before names were checked may hold control characters
            printable(name), r["status"],
            f"{r['n_images']:,}", f"{r['n_ablations']}", f"{r['n_prompts']}",
            f"{100 * r['n_done'] / total:.0f}%" if total else "-", f"{r['n_failed']:,}",
            dtype_cell(r["dtype"], r["dtype_asked"]), f"{r['created_at']:%Y-%m-%d %H:%M:%S}", printable(str(r["model"])),
        ])
    print(format_columns(["run", "status", "images", "abl.", "prompts", "done", "errors", "dtype", "created",
                          "model"], table, right={2, 3, 4, 5, 6}))
    return 0


def dtype_cell(used: str, asked: str | None) -> str:
    """A run's dtype in `list`: what it computes in, "(auto)" when it was picked, "verified" below float32 (its
    selections verified in float32, compute.precision)."""
    return used + (" verified" if used != "float32" else "") + (" (auto)" if asked == "auto" else "")


def cmd_delete(args: argparse.Namespace) -> int:
    from compute import store
    from compute.runlock import run_lock

    db = chosen_db(args)
    if not db.exists():
        raise InputError(f"no store at {db}")
    store.check_store(db, write=True)
    with run_lock(db, args.run, wait=False), store.connect(db) as con:  # not while a process writes the run
        row = store.require_run(con, args.run)
        users = store.embedding_users(con, row.run_id)
        if users:
            raise InputError(f"run {args.run!r} holds the image embeddings that rescored run(s) "
                             f"{', '.join(users)} read; delete those first")
        store.delete_run(con, row.run_id)
    print(f"deleted run {args.run!r} from {db}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from compute.prompts import load_prompts

    prompts = load_prompts(args.prompts)  # as for run: a refused prompts file answers before torch is imported
    new_name = check_run_name(args.new_name, "--as")
    quiet_libraries()
    from compute.rescore import rescore

    rescore(chosen_db(args), args.run, prompts, new_name, progress=not args.no_progress,
            truncate_prompts=args.truncate_prompts)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from compute.demo import cli

    quiet_libraries()
    return cli.main(args)


def cmd_fetch(args: argparse.Namespace) -> int:
    from compute import fetch

    return fetch.main(args)


# --------------------------------------------------------------------------------------------------
# Parser.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compute",
        description="CLIP Attention Lab compute stage: run attention-ablation sweeps of CLIP's vision tower "
        "over a COCO-format dataset and store logits, selections and embeddings in DuckDB.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("run", help="run (or resume) an experiment file into its DuckDB store",
                       description="Run every ablation of EXPERIMENT over its dataset and store the results. "
                       "Running the same experiment again resumes it: finished (image, ablation) pairs are "
                       "not recomputed. Exit 0 when the run is complete.")
    p.add_argument("experiment", help="experiment TOML file (see experiments/)")
    add_db_argument(p, f"DuckDB store to write (default: [store] db of the experiment, else {DEFAULT_DB_TEXT})")
    p.add_argument("--limit", type=int, help="only the first N images (by id); part of the run's identity")
    p.add_argument("--batch-size", type=int, help="images per batch (default: [model] batch_size, 16)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="override [model] device")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="override [model] dtype; part of the run's identity. float32: exact. bfloat16, float16: "
                   "the sweep in low precision, every selection the rounding could change computed again in "
                   "float32. auto: bfloat16 on a CPU with AMX-BF16 or AVX512-BF16 or a GPU that has it, float16 "
                   "on other GPUs, else float32 (docs/precision.md)")
    p.add_argument("--method", choices=["engine", "plain"], default="engine",
                   help="engine: the shared-prefix sweep (default); plain: patch the modules and rerun the "
                   "whole model per ablation (the reference, and the bench's baseline)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, all cores; 1 can be "
                   "faster when other jobs share the cores)")
    p.add_argument("--workers", type=int, help="processes that decode and preprocess images (default: as many as "
                   "the cores this process may use; 0: one thread of the main process)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the sweep on Ray (Ray Data: CPU tasks decode, actors hold the model): alone, a local "
                   "Ray on this machine; 'auto', the cluster of RAY_ADDRESS or of this node; HOST:PORT or "
                   "ray://HOST:PORT, that cluster. Only this process writes the store; same rows as without")
    p.add_argument("--ray-actors", type=int, metavar="N",
                   help="with --ray: actors holding the model (default: one per GPU of the cluster, else 1)")
    p.add_argument("--ray-gpus-per-actor", type=float, metavar="F",
                   help="with --ray: GPUs per actor, 0 for CPU actors, a fraction to share one (default: 1 "
                   "when the cluster has GPUs, else 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list the runs in a store", description="List the runs in a DuckDB store "
                       "with their status and progress.")
    add_db_argument(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("delete", help="delete a run and all its rows from a store",
                       description="Delete a run (scores, selections, embeddings, errors) from a store.")
    p.add_argument("run", help="run name")
    add_db_argument(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("rescore", help="score new prompts on a stored run, from its stored embeddings",
                       description="Make a new run with the same images, model and ablations as RUN and the prompts "
                       "of PROMPTS.toml ([[prompts]] text/label entries, [[templates]]), computed from RUN's stored image "
                       "embeddings: one text pass, no vision tower. Captions are generated if RUN has a "
                       "captioner (reusing the caption cache). Running it again resumes.")
    p.add_argument("--run", required=True, help="the stored run to rescore")
    p.add_argument("--prompts", required=True, help="TOML file of [[prompts]] entries (text, label) and "
                   "[[templates]] (text or ensemble holding {label}, labels)")
    p.add_argument("--as", dest="new_name", required=True, help="name of the new run")
    p.add_argument("--truncate-prompts", action="store_true",
                   help="cut prompts longer than the text tower's positions (77 tokens for CLIP) instead of "
                   "refusing them (as [model] truncate_prompts = true in an experiment file)")
    add_db_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rescore)

    from compute import fetch
    from compute.demo import cli as demo

    p = sub.add_parser("demo", help="the offline demo: generate data, run the demo experiments, open the dashboard",
                       description=demo.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fetch", help="download a dataset (COCO val2017 images and annotations)",
                       description="Download COCO annotations once, then only the images a selection "
                       "needs, in parallel, with checks and resume.")
    fetch.add_arguments(p)
    p.set_defaults(func=cmd_fetch)

    from compute import screen

    p = sub.add_parser("screen", help="the heads a run's attribution estimates most harmful, as an experiment's extras",
                       description=screen.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    screen.add_arguments(p)
    p.set_defaults(func=screen.main)

    from compute import export

    p = sub.add_parser("export", help="write a run's figures (PNG, SVG, PDF) and tables (Markdown, LaTeX, CSV, Parquet)",
                       description=export.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_arguments(p)
    p.set_defaults(func=export.main)
    return parser


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's way out: the same cleanup, message and exit code


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (elsewhere: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_ctrl_c():
            return args.func(args)
    except InputError as e:  # user text in a message (a name, a prompt) is never printed raw
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return EXIT_INPUT
    except RunError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return EXIT_RUN
    except KeyboardInterrupt:
        print("interrupted: what was committed is kept; run the same command again to resume", file=sys.stderr)
        return 130


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: after torch and transformers it takes one to three seconds
    and does nothing a finished command needs (every store connection, thread and worker is closed by
    then). Output is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
