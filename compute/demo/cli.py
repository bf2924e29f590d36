"""``python -m compute demo``: the embedded demo, offline, in minutes.

Generates the synthetic shapes dataset if it is missing, runs (or resumes) the demo experiments with the
toy CLIP and captioner the project ships under data/demo/models, prints their summary tables, and starts
the dashboard on the store they wrote (the default store: data/results.duckdb, or $CLIP_LAB_DB).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compute.demo import DEMO_DATA, DEMO_MODELS, EXPERIMENTS, N_IMAGES, ROOT, SEED, SPLIT
from compute.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dashboard", action="store_true", help="stop after the runs; do not start the dashboard")
    parser.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from compute.config import load_experiment
    from compute.demo.data import write_coco
    from compute.runner import run

    for name in ("clip", "captioner"):
        if not (DEMO_MODELS / name / "config.json").is_file():
            raise InputError(f"the demo {name} is missing from {DEMO_MODELS / name}: "
                             f"retrain it with python -m compute.demo.train_{name} --out {DEMO_MODELS / name}")
    if write_coco(DEMO_DATA, SPLIT, N_IMAGES, SEED, progress=not args.no_progress):
        print(f"generated the demo dataset: {N_IMAGES} images in {DEMO_DATA / SPLIT}")
    dbs = []
    for path in EXPERIMENTS:
        exp = load_experiment(path)
        print(f"\n== {exp.name} ({path.relative_to(ROOT)}) ==")
        run(exp, progress=not args.no_progress)
        dbs.append(exp.store.db)
    if args.no_dashboard:
        return 0
    return start_dashboard(dbs[-1], args.port)


def start_dashboard(db: Path, port: int) -> int:
    """Replace this process with the Streamlit server on ``db``."""
    app = ROOT / "dashboard" / "app.py"
    if not app.is_file():
        print("(the dashboard is not installed in this checkout)")
        return 0
    print(f"\nstarting the dashboard on {db}: open http://localhost:{port} (Ctrl-C to stop)", flush=True)
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.port", str(port), "--browser.gatherUsageStats", "false", "--", "--db", str(db)]
    os.execv(sys.executable, argv)
    return 0  # not reached
