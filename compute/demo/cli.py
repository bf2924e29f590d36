"""``python -m compute demo``: the embedded demo, offline, in minutes (DESCRIPTION is its --help)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from compute.demo import DEMO_DATA, DEMO_MODELS, EXPERIMENTS, N_IMAGES, ROOT, SEED, SPLIT
from compute.errors import InputError

DESCRIPTION = """\
The embedded demo, offline, in minutes: generates the synthetic shapes dataset if it is missing, runs (or
resumes) the demo experiments with the toy CLIP and captioner shipped under data/demo/models, prints
their summary tables, and serves the dashboard on the store they wrote (the default store: $CLIP_LAB_DB,
else data/results.duckdb).

The dashboard listens on 127.0.0.1 only (this machine); --address 0.0.0.0 exposes it to the network, and
anyone who can reach the port can then read the store."""

DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dashboard", action="store_true", help="stop after the runs; do not start the dashboard")
    parser.add_argument("--port", type=int, default=None,
                        help=f"dashboard port (default {DEFAULT_PORT}, or the next free one if it is taken)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"address the dashboard listens on (default {DEFAULT_ADDRESS}: this machine only; "
                        "0.0.0.0: every interface, which exposes the store to the network)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_port(port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")


def check_address(address: str) -> None:
    """An address this machine can listen on: one of its interfaces' (or 0.0.0.0, ::), or a name of one.
    Otherwise every port would look taken ("no free port"), after minutes of runs."""
    try:
        found = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):  # not an address, an unknown name, a NUL in it
        raise InputError(f"--address {address!r} is neither an IP address nor a name this machine can resolve: "
                         f"use {DEFAULT_ADDRESS} (this machine only) or 0.0.0.0 (every interface)") from None
    error = None
    for family, *_, where in found:  # a name may have an IPv6 and an IPv4 address: one that binds will do
        with socket.socket(family) as s:
            try:
                s.bind((where[0], 0))
                return
            except OSError as e:
                error = e
    raise InputError(f"--address {address} cannot be listened on here ({(error.strerror or str(error)).lower()}): "
                     f"use {DEFAULT_ADDRESS} (this machine only) or 0.0.0.0 (every interface)")


def choose_port(address: str, port: int | None) -> int:
    """``port`` as asked (an InputError if it is taken), else DEFAULT_PORT or the next free port above it."""
    if port is not None:
        check_port(port)
        if not _free(address, port):
            raise InputError(f"port {port} on {address} is in use: choose another with --port (make demo PORT=...)")
        return port
    for candidate in range(DEFAULT_PORT, DEFAULT_PORT + 100):
        if _free(address, candidate):
            return candidate
    raise InputError(f"no free port in {DEFAULT_PORT}-{DEFAULT_PORT + 99} on {address}: choose one with --port")


def _free(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def main(args: argparse.Namespace) -> int:
    from compute.config import load_experiment
    from compute.demo.data import write_coco
    from compute.runner import run

    check_port(args.port)  # bad input, even where it would not be used: before any work
    check_address(args.address)
    port = None if args.no_dashboard else choose_port(args.address, args.port)
    for name in ("clip", "captioner"):
        if not (DEMO_MODELS / name / "config.json").is_file():
            raise InputError(f"the demo {name} is missing from {DEMO_MODELS / name}: "
                             f"retrain it with python -m compute.demo.train_{name} --out {DEMO_MODELS / name}")
    if write_coco(DEMO_DATA, SPLIT, N_IMAGES, SEED, progress=not args.no_progress):
        print(f"generated the demo dataset: {N_IMAGES} images in {DEMO_DATA / SPLIT}")
    dbs = []
    echo = once(print)
    for path in EXPERIMENTS:
        exp = load_experiment(path)
        print(f"\n== {exp.name} ({path.relative_to(ROOT)}) ==")
        run(exp, progress=not args.no_progress, echo=echo)
        dbs.append(exp.store.db)
    if args.no_dashboard:
        return 0
    if not _free(args.address, port):  # taken while the runs ran
        port = choose_port(args.address, None)
    return start_dashboard(dbs[-1], port, args.address)


def once(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` that prints each warning once: the demo's runs share prompts, so they share warnings."""
    seen: set[str] = set()

    def echo_once(line: str) -> None:
        if line.startswith("warning:"):
            if line in seen:
                return
            seen.add(line)
        echo(line)

    return echo_once


def start_dashboard(db: Path, port: int, address: str = DEFAULT_ADDRESS) -> int:
    """Replace this process with the Streamlit server on ``db``, listening on ``address``:``port``."""
    app = ROOT / "dashboard" / "app.py"
    if not app.is_file():
        print("(the dashboard is not installed in this checkout)")
        return 0
    host = "localhost" if address in ("127.0.0.1", "localhost") else address
    exposed = "" if address in ("127.0.0.1", "localhost") else " (exposed: anyone who reaches this port reads the store)"
    print(f"\nstarting the dashboard on {db}: open http://{host}:{port}{exposed} (Ctrl-C to stop)", flush=True)
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.address", address, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal", "--", "--db", str(db)]  # minimal: no "Deploy" button
    os.execv(sys.executable, argv)
    return 0  # not reached
