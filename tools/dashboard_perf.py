"""``make bench`` section "dashboard": page render times on a store of the size real runs reach.

The store: 5,000 images x 21 ablations (the paper sweep of a 12-layer tower) x 80 prompts = 8.4 M score
rows, written through the compute stage's own ``store.write_batch`` in batches of 250 images (so row
groups come in the order a real run writes them). Logits are synthetic: noise plus a signal on the image's
true labels that each ablation weakens by its own amount; images are small real JPEGs for the thumbnails.

Timings are AppTest runs of the real app: a page's first render with every data cache empty (the
interpreter already warm, as in a running server), then one filter change. Targets: first render under
1.5 s, filter change under 0.5 s.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from compute import scoring, store
from compute.ablations import sweep
from compute.dataset import ImageRecord
from compute.prompts import Prompt

RUN = "bench"
N_IMAGES, N_PROMPTS, N_LAYERS, BATCH = 5000, 80, 12, 250
FIRST_RENDER_S, FILTER_CHANGE_S = 1.5, 0.5
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def make_store(db: Path, images_dir: Path, n_images: int = N_IMAGES, n_prompts: int = N_PROMPTS,
               seed: int = 0) -> Path:
    """Write a complete synthetic run named RUN into ``db`` (made fresh)."""
    rng = np.random.default_rng(seed)
    db.unlink(missing_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    labels = [f"label{k:02d}" for k in range(n_prompts)]
    first = rng.integers(0, n_prompts, n_images)
    second = rng.integers(0, n_prompts, n_images)
    has_second = rng.random(n_images) < 0.3
    truth = np.zeros((n_images, n_prompts), bool)  # (images, prompts): the prompt's label is the image's
    truth[np.arange(n_images), first] = True
    truth[has_second, second[has_second]] = True
    colours = rng.integers(0, 256, (n_images, 3), dtype=np.uint8)
    records = []
    for i in range(n_images):
        path = images_dir / f"{i + 1:012d}.jpg"
        Image.new("RGB", (64, 48), tuple(int(c) for c in colours[i])).save(path, quality=80)
        records.append(ImageRecord(i + 1, path.name, path, tuple(labels[k] for k in np.flatnonzero(truth[i]))))
    ablations = sweep("paper", N_LAYERS)
    n_abl = len(ablations)
    # How much each ablation weakens the signal: none for baseline, some for single layers, more for blocks.
    weakening = np.array([0.0 if not a.layers else min(1.0, rng.uniform(0.0, 0.5) * len(a.layers) ** 0.5)
                          for a in ablations], np.float32)
    text = torch.nn.functional.normalize(torch.randn(n_prompts, 16), dim=-1)
    prompts = [Prompt(f"a photo of a {lab}", lab) for lab in labels]
    config = {"prompts": [p.to_dict() for p in prompts]}  # what the pages read of a run's config (Image: the texts)
    with store.connect(db) as con:
        run_id = store.create_run(con, store.NewRun(
            name=RUN, model="synthetic", config_json=json.dumps(config), config_hash="bench", n_layers=N_LAYERS,
            embedding_dtype="none", images=records, prompts=prompts, ablations=ablations))
        for start in range(0, n_images, BATCH):
            ids = np.arange(start, min(start + BATCH, n_images))
            n = len(ids)
            signal = (1 - weakening)[None, :, None] * 5.0 * truth[ids][:, None, :]  # (n, A, P)
            logits = (20 + 2 * rng.standard_normal((n, n_abl, n_prompts), dtype=np.float32) + signal).astype(np.float32)
            judge = torch.nn.functional.normalize(torch.randn(n, 16), dim=-1)  # stand-ins for the embeddings
            sel = scoring.select(torch.from_numpy(logits), torch.from_numpy(truth[ids]), judge, text)
            store.write_batch(con, run_id, store.BatchResult(
                image_ids=ids + 1, ablation_ids=np.arange(n_abl, dtype=np.int16), selection=sel, embeddings=None,
                errors=[], attempted=[int(i) + 1 for i in ids]))
            # Every selection gets a generated caption, as with a captioner.
            pairs = np.unique(np.stack([np.repeat(ids + 1, n_abl), sel.prompt_id.reshape(-1)], axis=1), axis=0)
            store.fill_captions(con, run_id, pa.table({
                "image_id": pa.array(pairs[:, 0], pa.int64()), "prompt_id": pa.array(pairs[:, 1], pa.int16()),
                "caption": ["a photo of something"] * len(pairs),
                "caption_score": pa.array(rng.uniform(0.1, 0.4, len(pairs)).astype(np.float32))}))
        store.set_status(con, run_id, "complete")
    return db


# page (a key of dashboard/pages.py) -> (query param whose widget is changed, new value, what the change is)
FILTER_CHANGES = {
    "overview": ("label", "label07", "true label"),
    "layers": ("label", "label07", "true label"),
    "image": ("image", 4321, "image"),
    "failures": ("label", "label07", "true label"),
    "compare": ("b", "identity:1-12", "ablation B"),
    "export": ("sel_outcome", "flip", "outcome of the selections"),
}


def _clear_caches() -> None:
    import logging

    import streamlit as st

    from analysis import stats

    # Clearing from outside a script run logs two warnings each time; they would bury the table.
    loggers = [logging.getLogger(f"streamlit.runtime.{name}")
               for name in ("caching.cache_data_api", "scriptrunner_utils.script_run_context")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        st.cache_data.clear()
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    stats.resample_weights.cache_clear()


def _timed_run(at) -> float:
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the page raised: {at.exception[0].value}")
    return seconds


def time_pages(db: Path, changes: dict[str, tuple[str, object, str]] = FILTER_CHANGES) -> dict[str, float]:
    """``{page}_first_s`` and ``{page}_filter_s`` for each page of ``changes`` (FILTER_CHANGES' form) on the
    store's run RUN; raises if a page raises."""
    from streamlit.testing.v1 import AppTest

    from compute.store import DB_ENV
    from dashboard.pages import DEFAULT, page_info
    from dashboard.state import widget_key

    os.environ[DB_ENV] = str(db)
    # Imports and Altair's first use of each chart type are paid once per server process, not per page.
    warm = AppTest.from_file(str(APP), default_timeout=120)
    warm.query_params["run"] = RUN
    _timed_run(warm)
    for page in changes:
        warm.switch_page(page_info(page).path)
        _timed_run(warm)
    results = {}
    for page, (param, value, _) in changes.items():
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.query_params["run"] = RUN
        if page != DEFAULT:
            at.run()  # registers the pages, so switch_page can find them
            at.switch_page(page_info(page).path)
        _clear_caches()
        results[f"{page}_first_s"] = _timed_run(at)
        widget = next(w for w in at.selectbox if w.key == widget_key(param))
        widget.set_value(value)
        results[f"{page}_filter_s"] = _timed_run(at)
    return results


def bench_dashboard(tmp: Path) -> dict[str, float]:
    print(f"\n== dashboard: {N_IMAGES:,} images x 21 ablations x {N_PROMPTS} prompts "
          f"({N_IMAGES * 21 * N_PROMPTS / 1e6:.1f} M score rows), AppTest timings ==", flush=True)
    start = time.perf_counter()
    db = make_store(tmp / "dashboard.duckdb", tmp / "images")
    figures = {"generate_s": time.perf_counter() - start}
    print(f"  store generated in {figures['generate_s']:.1f} s ({db.stat().st_size / 1e6:.0f} MB)", flush=True)
    figures.update(time_pages(db))
    print(f"  {'page':<10} {'first render':>13} {'filter change':>14}  (changed)")
    for page, (_, value, what) in FILTER_CHANGES.items():
        first, change = figures[f"{page}_first_s"], figures[f"{page}_filter_s"]
        flag = "" if first < FIRST_RENDER_S and change < FILTER_CHANGE_S else "  OVER TARGET"
        print(f"  {page:<10} {first:>11.2f} s {change:>12.2f} s  ({what} -> {value}){flag}")
    print(f"  targets: first render < {FIRST_RENDER_S} s, filter change < {FILTER_CHANGE_S} s")
    return figures


if __name__ == "__main__":
    import argparse
    import tempfile

    argparse.ArgumentParser(prog="python -m tools.dashboard_perf", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory(prefix="clip-lab-bench-") as tmp:
        bench_dashboard(Path(tmp))
