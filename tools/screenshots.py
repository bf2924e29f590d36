"""Screenshots of every dashboard page from a real server and a real browser.

``python -m tools.screenshots --db data/results.duckdb --out docs/screenshots`` starts
``streamlit run dashboard/app.py`` on a free port of 127.0.0.1, opens each page in headless Chromium
(``CHROMIUM``: Debian's ``chromium-headless-shell``, else its ``chromium``, driven by the playwright
package; never ``playwright install``), waits until the script has finished, and saves one PNG per page;
it says when a page overflows the window sideways or cuts a label. tests/browser/ uses the same functions
(``chromium``, ``serve``, ``shoot``, ``finished``, ``overflow``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode

from compute import store
from compute.errors import InputError, StoreError
from compute.store import DEFAULT_DB_TEXT, default_db
from dashboard.pages import DEFAULT, KEYS

if TYPE_CHECKING:  # playwright is imported where a browser starts
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
# The browser: $CHROMIUM, else Debian's chromium-headless-shell (Chromium's headless mode alone, the build
# playwright itself runs headless: the browser tests took 13% less CPU than in the full chromium, every one
# passing in both), else Debian's full chromium. .ci/run installs the first.
BROWSERS = (Path("/usr/bin/chromium-headless-shell"), Path("/usr/bin/chromium"))
CHROMIUM = Path(os.environ.get("CHROMIUM") or next((b for b in BROWSERS if b.is_file()), BROWSERS[0]))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]
PAGES = KEYS  # every page of dashboard/pages.py, in menu order
RUNNING = '[data-testid="stStatusWidgetRunningIcon"]'
EXCEPTION = '[data-testid="stException"]'
CONTENT = '[data-testid="stMainBlockContainer"]'
FINISHED = """() => document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === "notRunning"
    && !document.querySelector('[data-testid="stSkeleton"], [data-testid="stSkeletonElement"]')"""
# Every Vega chart holds its drawn marks and every image has loaded (or failed): the page as a reader sees it.
# (An image marked lazy loads only when scrolled to: it is not waited for.)
DRAWN = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
    .every(c => c.querySelector('svg.marks, canvas'))
    && [...document.images].every(i => i.complete || i.loading === "lazy")"""
TWO_FRAMES = """() => new Promise(done => {
  setTimeout(done, 200);
  requestAnimationFrame(() => requestAnimationFrame(() => done()));
})"""
MAX_HEIGHT = 4000
MIN_WIDTH, MAX_WIDTH = 320, 7680  # a phone's width to an 8K screen's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    """Until the Streamlit server ``proc`` on 127.0.0.1:``port`` answers its health check; RuntimeError with the
    end of its ``log`` when it exits or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s; see {log}: {log.read_text()[-2000:]}")
        time.sleep(0.25)


@contextmanager
def serve(db: Path, log: Path, port: int | None = None, timeout: float = 60, app: Path = APP,
          script_args: list[str] | None = None) -> Iterator[str]:
    """Run the dashboard on ``db`` in a streamlit server on 127.0.0.1; yield its base URL; stop it afterwards.
    ``app`` and ``script_args`` (what follows "--", by default ``--db DB``) run another Streamlit script."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal", "--",
           *(script_args if script_args is not None else ["--db", str(db)])]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, port, log, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# What "overflows" means, measured in the page: the document or the main area scrolls sideways, a chart or
# column reaches past the main area's right edge, a chart is wider than its own box (clipped legend), or a
# metric, label or select box shows its text cut ("iden…", "ident"). Tables and code blocks may scroll
# inside themselves: that is their way of holding wide content.
OVERFLOW_JS = """() => {
  const out = [];
  const main = document.querySelector('[data-testid="stMain"]');
  const block = document.querySelector('[data-testid="stMainBlockContainer"]');
  const doc = document.scrollingElement;
  if (doc.scrollWidth > doc.clientWidth + 1) out.push(`the page scrolls sideways: ${doc.scrollWidth} > ${doc.clientWidth}`);
  if (main && main.scrollWidth > main.clientWidth + 1) out.push(`the main area scrolls sideways: ${main.scrollWidth} > ${main.clientWidth}`);
  if (!block) return out;
  const right = block.getBoundingClientRect().right;
  for (const chart of block.querySelectorAll('[data-testid="stVegaLiteChart"]')) {
    const drawn = chart.querySelector('svg.marks, canvas');
    if (!drawn) continue;
    const r = drawn.getBoundingClientRect(), box = chart.getBoundingClientRect();
    const name = (chart.querySelector('.role-title-text') || {}).textContent || 'a chart';
    if (r.right > right + 1) out.push(`chart "${name}" reaches past the page: ${Math.round(r.right)} > ${Math.round(right)}`);
    if (r.width > box.width + 1) out.push(`chart "${name}" is cut: ${Math.round(r.width)} > ${Math.round(box.width)}`);
  }
  for (const col of block.querySelectorAll('[data-testid="stColumn"]')) {
    const r = col.getBoundingClientRect();
    if (r.right > right + 1) out.push(`a column reaches past the page: ${Math.round(r.right)} > ${Math.round(right)}`);
  }
  const texts = block.querySelectorAll('[data-testid="stMetricValue"] p, [data-testid="stMetricLabel"] p, ' +
    '[data-testid="stMetricDelta"] p, [data-testid="stSelectbox"] input, [data-testid="stWidgetLabel"] p');
  for (const el of texts) {
    if (el.scrollWidth > el.clientWidth + 1) out.push(`text cut: "${el.value || el.textContent}" (${el.scrollWidth} > ${el.clientWidth})`);
  }
  return out;
}"""


def finished(tab, timeout_ms: int = 60_000, drawn_ms: int = 15_000) -> None:
    """Wait until the page's script has run (not merely not started), Vega has drawn its charts, every image has
    loaded and the layout that follows is computed. A chart Vega refuses stays empty: after ``drawn_ms`` this
    returns anyway, for the caller to count it (``undrawn`` in the browser tests)."""
    from playwright.sync_api import TimeoutError as Timeout

    script_finished(tab, timeout_ms)
    with suppress(Timeout):  # Vega draws its charts just after they arrive, the browser loads the images
        tab.wait_for_function(DRAWN, timeout=drawn_ms)
    settle(tab)


def script_finished(tab, timeout_ms: int = 60_000) -> None:
    """Wait until the page's script has run (not merely not started): its title is shown, Streamlit says it is
    not running, no skeleton and no running icon are left."""
    tab.wait_for_selector("h1", timeout=timeout_ms)
    tab.wait_for_function(FINISHED, timeout=timeout_ms)
    tab.wait_for_selector(RUNNING, state="detached", timeout=timeout_ms)


def settle(tab) -> None:
    """Until the browser has laid out and painted two frames: what a change of the DOM or the window size moved
    is in place (a page nobody shows gets no frames: 200 ms at most)."""
    tab.evaluate(TWO_FRAMES)


def reflowed(tab, timeout_ms: int = 5_000) -> list[str]:
    """``overflow`` after the window changed size: Vega redraws each chart at its new width a moment later, so
    wait until nothing overflows or ``timeout_ms`` passed, then measure (a real overflow costs the wait)."""
    from playwright.sync_api import TimeoutError as Timeout

    with suppress(Timeout):
        tab.wait_for_function(f"() => ({OVERFLOW_JS})().length === 0", timeout=timeout_ms)
    settle(tab)
    return overflow(tab)


def overflow(tab) -> list[str]:
    """What overflows sideways or is cut on the page as shown now (OVERFLOW_JS); empty when nothing."""
    return tab.evaluate(OVERFLOW_JS)


def page_url(url: str, name: str, params: dict[str, str] | None = None) -> str:
    path_part = "" if name == DEFAULT else name  # st.navigation serves the default page at the root URL
    return f"{url}/{path_part}" + (f"?{urlencode(params)}" if params else "")


@dataclass
class PageShot:
    page: str
    url: str
    screenshot: Path | None  # None: not kept (keep="failed" and the page passed)
    title: str  # the page's h1
    exceptions: list[str]
    overflow: list[str]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Chromium (``CHROMIUM``), headless, driven by the playwright package (never ``playwright
    install``); closed afterwards. Every tool and browser test launches it here."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shoot(url: str, pages: tuple[str, ...], out: Path, params: dict[str, str] | None = None,
          width: int = 1400, timeout_ms: int = 60_000, browser: Browser | None = None,
          keep: Literal["all", "failed"] = "all", tab: Page | None = None) -> list[PageShot]:
    """Open each page (with ``params`` as its query string), wait for the script to finish, screenshot it; in
    ``tab`` when given (left open), else in a new tab of ``browser`` (closed afterwards), else in a Chromium of
    its own. ``keep="failed"`` (the tests) saves the picture of a page only when it shows an exception or
    overflows: a PNG costs Chromium about half a CPU-second, a new tab two (a renderer process starts)."""
    if browser is None and tab is None:
        with chromium() as own:
            return shoot(url, pages, out, params, width, timeout_ms, own, keep)
    shots = []
    # A tall window from the start, cropped to the content: the page scrolls inside Streamlit's main container,
    # so a full-page screenshot would stop at the window, and resizing the window later redraws every chart.
    window = {"width": width, "height": MAX_HEIGHT}
    own_tab = tab is None
    if own_tab:
        tab = browser.new_page(viewport=window)
    else:
        tab.set_viewport_size(window)
    try:
        for name in pages:
            address = page_url(url, name, params)
            tab.goto(address, timeout=timeout_ms)
            finished(tab, timeout_ms)
            shot = PageShot(name, address, None, tab.locator("h1").first.inner_text(),
                            tab.locator(EXCEPTION).all_inner_texts(), overflow(tab))
            if keep == "all" or shot.exceptions or shot.overflow:
                height = int(tab.evaluate(f"document.querySelector({CONTENT!r}).getBoundingClientRect().bottom"))
                out.mkdir(parents=True, exist_ok=True)
                shot.screenshot = out / f"{name}.png"
                tab.screenshot(path=str(shot.screenshot), clip={"x": 0, "y": 0, "width": width,
                                                                "height": min(height + 40, MAX_HEIGHT)})
            shots.append(shot)
    finally:
        if own_tab:
            tab.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=default_db(), help=f"store to show (default: {DEFAULT_DB_TEXT})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNGs")
    parser.add_argument("--run", help="run to show (default: the dashboard's default, the newest)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a query param for every page, e.g. image=12 or ablation=identity:5-8 (repeatable)")
    parser.add_argument("--width", type=int, default=1400,
                        help=f"browser width in pixels, {MIN_WIDTH}-{MAX_WIDTH} (default: 1400)")
    parser.add_argument("--pages", default=",".join(PAGES), help=f"comma list of pages (default: all: {', '.join(PAGES)})")
    args = parser.parse_args(argv)
    try:
        pages, params = _checked(args)
    except (InputError, StoreError) as e:  # one line, nothing written, no browser started
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The server's log beside the PNGs only when something went wrong (docs/screenshots/ holds pictures).
    with tempfile.TemporaryDirectory(prefix="clip-lab-shots-") as tmp:
        log = Path(tmp) / "streamlit.log"
        failed = True  # until every page is shot without an exception
        try:
            with serve(args.db.resolve(), log) as url:
                shots = shoot(url, pages, args.out, params or None, args.width)
            failed = any(s.exceptions for s in shots)
        finally:
            if failed:
                _keep(log, args.out)
    for shot in shots:
        status = "ok" if not shot.exceptions else f"EXCEPTION: {shot.exceptions[0][:200]}"
        if shot.overflow:
            status += f"; OVERFLOW: {shot.overflow[0]}"
        print(f"{shot.screenshot}  {shot.title}  {status}")
    return 1 if any(s.exceptions for s in shots) else 0


def _checked(args: argparse.Namespace) -> tuple[tuple[str, ...], dict[str, str]]:
    """The pages and query params asked for; InputError (or StoreError) for what cannot be shot."""
    if not MIN_WIDTH <= args.width <= MAX_WIDTH:
        raise InputError(f"--width must be between {MIN_WIDTH} and {MAX_WIDTH} pixels, got {args.width}")
    pages = tuple(p.strip() for p in args.pages.split(",") if p.strip())
    if not pages:
        raise InputError(f"--pages names no page: choose from {', '.join(PAGES)}")
    unknown = [p for p in pages if p not in PAGES]
    if unknown:
        raise InputError(f"unknown page {unknown[0]!r}: choose from {', '.join(PAGES)}")
    bad = next((p for p in args.param if "=" not in p or not p.split("=", 1)[0].strip()), None)
    if bad is not None:
        raise InputError(f"--param {bad!r} is not KEY=VALUE (e.g. image=12 or ablation=identity:5-8)")
    params = dict(p.split("=", 1) for p in args.param)
    check_store_and_browser(args.db, args.run)
    if args.run:
        params["run"] = args.run
    return pages, params


def check_store_and_browser(db: Path, run: str | None) -> None:
    """InputError (or StoreError) unless ``db`` is a store holding ``run`` (when given) and Chromium is there:
    what a command that serves the dashboard to a browser checks before it starts either."""
    if not db.is_file():
        raise InputError(f"no store at {db}")
    with store.connect(db, read_only=True) as con:  # also refuses a file that is not a store, in one line
        if run:
            store.require_run(con, run)
    if not CHROMIUM.is_file():
        raise InputError(f"no Chromium at {CHROMIUM} (apt-get install chromium-headless-shell, or set CHROMIUM)")


def _keep(log: Path, out: Path) -> None:
    if log.is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, out / "streamlit.log")
        print(f"the server's log: {out / 'streamlit.log'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
