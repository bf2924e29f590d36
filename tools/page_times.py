"""``python -m tools.page_times --db STORE --run NAME``: each dashboard page's load time in real headless Chromium.

Starts the dashboard on ``STORE`` (tools.screenshots.serve), loads the first page once to warm the server up,
then opens every page of the registry in a new tab at each width and times it until its script has finished,
Vega has drawn every chart and every image has loaded (tools.screenshots.finished). docs/performance.md
holds the figures measured with it. Timings on a shared machine are noisy: compare two runs made one after
the other.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from compute.errors import InputError, StoreError
from compute.store import DEFAULT_DB_TEXT, default_db
from tools import screenshots as shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.page_times", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=default_db(), help=f"store to show (default: {DEFAULT_DB_TEXT})")
    parser.add_argument("--run", required=True, help="the run every page shows")
    parser.add_argument("--widths", default="1440,800",
                        help=f"comma list of browser widths in pixels, each {shots.MIN_WIDTH}-{shots.MAX_WIDTH} "
                        "(default: 1440,800)")
    args = parser.parse_args(argv)
    try:
        widths = _checked(args)
    except (InputError, StoreError) as e:  # one line, before a server or a browser starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    with shots.serve(args.db, Path("/tmp") / "page_times_streamlit.log") as url, shots.chromium() as browser:
        for width in widths:
            context = browser.new_context(viewport={"width": width, "height": 900})
            warm = context.new_page()
            warm.goto(shots.page_url(url, shots.PAGES[0], {"run": args.run}))
            shots.finished(warm)
            for page in shots.PAGES:
                tab = context.new_page()
                start = time.perf_counter()
                tab.goto(shots.page_url(url, page, {"run": args.run}))
                shots.finished(tab)
                print(f"{width:>5} px  {page:<14} {time.perf_counter() - start:6.2f} s", flush=True)
                tab.close()
            context.close()
    return 0


def _checked(args: argparse.Namespace) -> list[int]:
    """The widths asked for; InputError (or StoreError) for a width, store or run that cannot be timed."""
    texts = [w.strip() for w in args.widths.split(",") if w.strip()]
    bad = next((w for w in texts if not w.isdigit() or not shots.MIN_WIDTH <= int(w) <= shots.MAX_WIDTH), None)
    if bad is not None or not texts:
        raise InputError(f"--widths {args.widths!r}: give widths in pixels, each {shots.MIN_WIDTH}-{shots.MAX_WIDTH}, "
                         "separated by commas")
    shots.check_store_and_browser(args.db, args.run)
    return [int(w) for w in texts]


if __name__ == "__main__":
    raise SystemExit(main())
