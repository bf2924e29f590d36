"""``python -m tools.page_times --db STORE --run NAME``: each dashboard page's load time in real headless Chromium.

Starts the dashboard on ``STORE`` (tools.screenshots.serve), loads the first page once to warm the server up,
then opens every page of the registry in a new tab at each width and times it until its script has finished,
Vega has drawn every chart and every image has loaded (tools.screenshots.finished). docs/performance.md
holds the figures measured with it. Timings on a shared machine are noisy: compare two runs made one after
the other.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compute.store import DEFAULT_DB_TEXT, default_db
from tools import screenshots as shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.page_times", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=default_db(), help=f"store to show (default: {DEFAULT_DB_TEXT})")
    parser.add_argument("--run", required=True, help="the run every page shows")
    parser.add_argument("--widths", default="1440,800", help="comma list of browser widths in pixels")
    args = parser.parse_args(argv)
    if not args.db.is_file():
        parser.error(f"no store at {args.db}")
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
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


if __name__ == "__main__":
    raise SystemExit(main())
