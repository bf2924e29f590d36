"""The tools' command lines refuse what they would not do as asked, in one line (exit 2) before any work:
``python -m tools.bench`` before any section starts, ``tools.page_times`` and ``tools.storage_versions``
before a server, a browser or a replay, ``tools.figure_check`` for a path that is not there; the last one
reports an SVG it cannot read as a problem of that file. (``tools.screenshots``: test_dashboard_hardening.py.)"""

from __future__ import annotations

import pytest

from tools import bench, figure_check, page_times, pipeline_perf, storage_versions


@pytest.mark.parametrize(("argv", "said"), [
    (["--only", "sweep", "--smoke"], "--smoke: sweep has no smoke size (only gpu, precision, attribution)"),
    (["--only", "precision,heads,siglip", "--smoke"], "--smoke: heads, siglip have no smoke size"),
    (["--smoke"], "--smoke: sweep, heads, siglip, rescore, captions, dashboard, pipeline, busy, ray, store have no smoke"),
    (["--only", "sweep,nope"], "unknown section 'nope'"),
])
def test_a_smoke_size_a_section_lacks_or_an_unknown_section_is_refused(argv, said, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(bench, "SECTIONS", {name: (lambda *a, **kw: started.append(a)) for name in bench.SECTIONS})
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert started == []


def test_the_smoke_sections_run_at_their_smoke_size(monkeypatch):
    asked = {}
    monkeypatch.setattr(bench, "SECTIONS", {name: (lambda tmp, name=name, **kw: asked.setdefault(name, kw)) for name in bench.SECTIONS})
    assert bench.main(["--only", "precision,attribution", "--smoke"]) == 0
    assert asked == {"precision": {"smoke": True}, "attribution": {"smoke": True}}
    asked.clear()
    assert bench.main(["--only", "sweep,attribution"]) == 0
    assert asked == {"sweep": {}, "attribution": {"smoke": False}}


@pytest.fixture
def empty_store(tmp_path):
    from compute import store

    with store.connect(tmp_path / "empty.duckdb"):  # this tool's store, with no run
        pass
    (tmp_path / "notes.txt").write_text("not a store\n")
    return tmp_path / "empty.duckdb"


@pytest.mark.parametrize(("argv", "line"), [
    (["--run", "r", "--widths", "0"], "error: --widths '0': give widths in pixels, each 320-7680, separated by commas"),
    (["--run", "r", "--widths", "800,abc"], "error: --widths '800,abc': give widths in pixels"),
    (["--run", "r", "--widths", " , "], "error: --widths ' , ': give widths in pixels"),
    (["--run", "r"], "error: no run named 'r' in {db} (runs: none)"),
    (["--run", "r", "--db", "{notes}"], "error: store {notes} is not a DuckDB file"),
])
def test_page_times_refuses_before_a_server_starts(empty_store, argv, line, capsys, monkeypatch):
    monkeypatch.setattr(page_times.shots, "serve", lambda *a, **kw: pytest.fail("a server started"))
    fill = {"db": empty_store, "notes": empty_store.with_name("notes.txt")}
    assert page_times.main(["--db", str(empty_store), *[a.format(**fill) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line.format(**fill)) and err.count("\n") == 1, err


@pytest.mark.parametrize(("argv", "line"), [
    (["{missing}"], "error: no store at {missing}"),
    (["{notes}"], "error: store {notes} is not a DuckDB file"),
    (["{db}", "--versions", "v9"], "error: --versions 'v9': choose among v1.0.0,"),
    (["{db}", "--repeats", "0"], "error: --repeats must be a positive integer, got 0"),
    (["{db}", "--batch", "-4"], "error: --batch must be a positive integer, got -4"),
])
def test_storage_versions_refuses_before_a_replay(empty_store, argv, line, capsys, monkeypatch):
    monkeypatch.setattr(storage_versions, "load_source", lambda *a: pytest.fail("a replay started"))
    fill = {"db": empty_store, "notes": empty_store.with_name("notes.txt"), "missing": empty_store.with_name("no.duckdb")}
    assert storage_versions.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line.format(**fill)) and err.count("\n") == 1, err


def test_figure_check_names_a_missing_path_and_counts_an_unreadable_svg(tmp_path, capsys):
    assert figure_check.main([str(tmp_path / "none.svg")]) == 2
    assert capsys.readouterr().err == f"error: no SVG file or folder at {tmp_path / 'none.svg'}\n"
    (tmp_path / "broken.svg").write_text("<svg><text>unclosed</svg>")
    (tmp_path / "latin.svg").write_bytes(b"<svg>\xff</svg>")
    assert figure_check.main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": unreadable: ")[0] for line in lines[:2]] == [str(tmp_path / "broken.svg"),
                                                                        str(tmp_path / "latin.svg")]
    assert lines[2] == "2 SVG files, 2 problems"
    with pytest.raises(SystemExit) as exit_:
        figure_check.main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m tools.figure_check" in capsys.readouterr().out


def test_the_pipeline_bench_says_what_it_measures_and_refuses_an_unknown_section(capsys, monkeypatch):
    started = []
    monkeypatch.setattr(pipeline_perf, "bench_pipeline", lambda tmp: started.append("pipeline"))
    monkeypatch.setattr(pipeline_perf, "bench_busy", lambda tmp: started.append("busy"))
    with pytest.raises(SystemExit) as exit_:
        pipeline_perf.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: python -m tools.pipeline_perf" in out and "busy " in out
    with pytest.raises(SystemExit) as exit_:
        pipeline_perf.main(["--only", "sweep"])
    assert exit_.value.code == 2 and "invalid choice: 'sweep'" in capsys.readouterr().err
    assert started == []
    assert pipeline_perf.main(["--only", "busy"]) == 0 and started == ["busy"]
    assert pipeline_perf.main([]) == 0 and started == ["busy", "pipeline", "busy"]
