"""``make bench``'s dashboard section on a small store of its own making: every page it times renders and takes
its filter change. (Its generated run once lacked what the pages read of a real run's config, and the
section failed for as long as nobody ran it.)"""

from __future__ import annotations

from compute.store import DB_ENV


def test_the_dashboard_bench_renders_every_page_it_times(tmp_path, monkeypatch):
    from tools import dashboard_perf as bench

    monkeypatch.setenv(DB_ENV, "")  # time_pages points the app at its store; restored afterwards
    db = bench.make_store(tmp_path / "bench.duckdb", tmp_path / "images", n_images=30, n_prompts=8)
    changes = {**bench.FILTER_CHANGES, "image": ("image", 17, "image")}  # 30 images: no image 4321
    assert set(changes) == set(bench.FILTER_CHANGES)
    figures = bench.time_pages(db, changes)  # raises if a page raises
    assert sorted(figures) == sorted(f"{page}_{what}_s" for page in changes for what in ("first", "filter"))
    assert all(seconds > 0 for seconds in figures.values())
