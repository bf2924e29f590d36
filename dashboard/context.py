"""The run a page shows and the sidebar that picks it: the run picker, the run's state (a running run's
progress, reloading as batches land), and the ``Context`` every page draws from (``context()``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import queries, tables
from analysis.text import md
from dashboard import reading, state

REFRESH_S = 2.0  # how often a page showing a running run checks the store for new batches
IDLE_REFRESH_S = 5.0  # how often any other page checks whether the run list changed (a new or finished run)
DEFAULT_RUN_HELP = ("Without a run in the URL a session opens the newest complete run (by start time) and keeps "
                    "it: a run that finishes later does not switch the page; pick it here.")
_CHECKED = "_runs_checked"  # session_state: the change token the idle watcher last looked at


@dataclass(frozen=True)
class Context:
    db: Path
    run: dict  # a row of queries.runs
    ablations: pd.DataFrame  # queries.ablations
    baseline_id: int

    @property
    def run_id(self) -> int:
        return int(self.run["run_id"])

    @property
    def name(self) -> str:
        return str(self.run["run"])

    @property
    def baseline_name(self) -> str:
        return tables.baseline_name(self.ablations)

    def ablation_names(self) -> list[str]:
        return list(self.ablations["ablation"])

    def ablation_id(self, name: str) -> int:
        return int(self.ablations.loc[self.ablations["ablation"] == name, "ablation_id"].iloc[0])

    def default_ablation(self) -> str | None:
        """The ablation a page highlights before one is chosen: the first after baseline (None when the run
        has baseline alone)."""
        names = self.ablation_names()
        return names[1] if len(names) > 1 else None


def context() -> Context:
    """The context app.py set up for this script run (``sidebar``)."""
    run = state.this_run()
    if run is None or run.context is None:
        raise RuntimeError("no run context: pages run inside dashboard/app.py")
    return run.context


def progress(run: dict) -> tuple[int, int]:
    """(pairs done, pairs expected): every ablation of every image that did not fail to load."""
    expected = (int(run["n_images"]) - int(run["n_failed"])) * int(run["n_ablations"])
    return int(run["n_done"]), max(expected, 0)


def default_run(runs: pd.DataFrame) -> str:
    """The run a session opens without one in the URL: the newest complete run (by start time; ``runs`` is
    newest first), else the newest. Chosen once per session: the run picker then remembers it (dashboard.state),
    so a run finishing later does not switch the page under the user (DEFAULT_RUN_HELP)."""
    complete = runs[runs["status"] == "complete"]
    return str((complete if len(complete) else runs)["run"].iloc[0])


def sidebar(db: Path) -> Context:
    """The run picker and the run's state, then this script run's context; stops the page with an
    explanation when there is nothing to show."""
    if not db.is_file():
        st.error(f"No store at {md(db)}.")
        st.markdown("Build one with `python -m compute run EXPERIMENT.toml` (or `make demo`), then start the "
                    "dashboard with `streamlit run dashboard/app.py -- --db PATH`. This page reloads by itself "
                    "when the store appears.")
        _watch(db, reading.change_token(db))
        st.stop()
    runs = reading.load(queries.runs)
    if runs.empty:
        st.info(f"The store {md(db)} has no runs yet. Start one with `python -m compute run EXPERIMENT.toml`.")
        _watch(db, reading.snapshot())
        st.stop()
    rows = {r["run"]: r for r in runs.to_dict("records")}
    with st.sidebar:
        name = state.param_select("Run", list(rows), "run", default=default_run(runs),
                                  format_func=lambda r: f"{r} ({rows[r]['status']})", noun="run",
                                  scope="in this store", help=DEFAULT_RUN_HELP)
        run = rows[name]
        st.caption(f"{md(run['model'])} · {md(tables.family_text(run.get('family')))}  \n{run['n_images']:,} images × "
                   f"{run['n_ablations']} ablations × {run['n_prompts']} prompts  \n{run['n_failed']:,} unreadable "
                   f"images · store {md(db.name)}")
        if run["status"] == "running":
            run_progress(run)
            _watch(db, reading.snapshot())
        else:
            _watch_runs(db, reading.snapshot(), run_list(runs))
    ablations = reading.load(queries.ablations, int(run["run_id"]))
    if ablations.empty:
        st.warning(f"Run {md(name)} has no ablations.")
        st.stop()
    ctx = Context(db, run, ablations, tables.baseline_id(ablations))
    state.this_run().context = ctx
    return ctx


def run_progress(run: dict) -> None:
    """The stage a running run is in, with its progress: the sweep, then (with a captioner) the captions."""
    done, expected = progress(run)
    if done < expected or expected == 0:
        st.progress(min(done / expected, 1.0) if expected else 0.0,
                    text=f"sweep: {done:,} of {expected:,} image × ablation pairs")
        return
    captions = reading.load(queries.caption_progress, int(run["run_id"]))
    if captions is None:
        st.progress(1.0, text=f"sweep done ({expected:,} pairs); finishing")
        return
    generated, needed = captions
    st.progress(generated / needed if needed else 1.0,
                text=f"captions: {generated:,} of {needed:,} generated (sweep done)" if needed
                else "captions: generated; scoring them")


@st.fragment(run_every=REFRESH_S)
def _watch(db: Path, token: tuple) -> None:
    """While a run writes to the store, rerun the page whenever a new batch lands (``token``: the state the
    page was drawn from)."""
    if reading.change_token(db) != token:
        st.rerun()


def run_list(runs: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """What the idle watcher compares: each run and its status (not its progress, which changes every batch)."""
    return tuple(zip(runs["run"].map(str), runs["status"].map(str), strict=True))


@st.fragment(run_every=IDLE_REFRESH_S)
def _watch_runs(db: Path, token: tuple, listed: tuple) -> None:
    """On a page that shows a finished run, rerun the page when the store's run list changes (a run appears,
    finishes or is deleted), so the run picker never lags. Cheap: a stat of the store every IDLE_REFRESH_S;
    the run list is read (one small query) only after a commit, once per commit."""
    if state.this_run() is not None:
        return  # drawn with the page, at ``token``
    now = reading.change_token(db)
    if now in (token, st.session_state.get(_CHECKED)):
        return
    st.session_state[_CHECKED] = now
    if not db.is_file():
        st.rerun()
    with reading.render(db):
        changed = run_list(reading.load(queries.runs)) != listed
    if changed:
        st.rerun()


def no_results(ctx: Context) -> bool:
    """True (after saying so) when the run has no computed pair yet."""
    if int(ctx.run["n_done"]) == 0:
        st.info(f"Run {md(ctx.name)} has no results yet; this page fills in as its first batch is stored.")
        return True
    return False
