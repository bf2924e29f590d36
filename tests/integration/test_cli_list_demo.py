"""The command line around the demo: ``list`` right after the demo lists its runs (one default store for
every verb, the demo and the dashboard), ``list`` stays aligned with rescored runs, every ``--help`` is
plain text, and ``logit_scale`` stays float32 whatever the model's dtype."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import cli

from compute.__main__ import main
from compute.store import DB_ENV, default_db

VERBS = ["run", "list", "delete", "rescore", "export", "fetch", "demo"]


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "70000"], ["--port", "70000", "--no-dashboard"],
                                  ["--port", "taken"]])
def test_the_demo_refuses_a_port_before_any_work(argv, tmp_path, monkeypatch, capsys):
    """A port out of range (even with --no-dashboard) or in use: one line, exit 2, no data generated."""
    import socket

    from compute.demo import cli as demo

    monkeypatch.setattr(demo, "DEMO_DATA", tmp_path / "shapes")
    monkeypatch.setenv(DB_ENV, str(tmp_path / "results.duckdb"))  # were it to run, not into the repo's store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [str(port) if a == "taken" else a for a in argv]
        assert main(["demo", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err in (f"error: --port must be between 1 and 65535, got {argv[1]}\n",
                   f"error: port {port} on 127.0.0.1 is in use: choose another with --port (make demo PORT=...)\n")
    assert ("in use" in err) == (argv[1] == str(port))
    assert not (tmp_path / "shapes").exists()


@pytest.mark.parametrize("argv", [["--address", "999.1.1.1"], ["--address", "192.0.2.1"],
                                  ["--address", "192.0.2.1", "--no-dashboard"], ["--address", ""]])
def test_the_demo_refuses_an_address_it_cannot_listen_on_before_any_work(argv, tmp_path, monkeypatch, capsys):
    """Not an address, or one of no interface here (192.0.2.1: TEST-NET-1), even with --no-dashboard: one line
    naming it, exit 2, no data generated (every port of it looked taken, after the runs)."""
    from compute.demo import cli as demo

    monkeypatch.setattr(demo, "DEMO_DATA", tmp_path / "shapes")
    monkeypatch.setenv(DB_ENV, str(tmp_path / "results.duckdb"))
    assert main(["demo", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    why = "cannot be listened on here (cannot assign requested address)" if argv[1] == "192.0.2.1" else \
        "is neither an IP address nor a name this machine can resolve"
    assert err.startswith(f"error: --address {argv[1] if argv[1] == '192.0.2.1' else repr(argv[1])} {why}: use "
                          "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") and err.count("\n") == 1
    assert not (tmp_path / "shapes").exists()


def test_list_right_after_the_demo_lists_the_demo_runs(tmp_path, monkeypatch, capsys):
    """The demo verb itself, on a small slice of its data, then ``list`` with no --db (both in this process,
    $CLIP_LAB_DB read at each call): both use the default store. The demo prints each warning once (its runs
    share prompts) and its summary tables aligned, with the significance mark's column."""
    from compute import runner
    from compute.config import load_experiment
    from compute.demo import EXPERIMENTS, SPLIT
    from compute.demo import cli as demo

    db = tmp_path / "results.duckdb"
    monkeypatch.setenv(DB_ENV, str(db))
    for path in EXPERIMENTS:  # no store in the demo's files: the default one
        assert load_experiment(path).store.db == default_db() == db
    data = tmp_path / "shapes"
    monkeypatch.setattr(demo, "DEMO_DATA", data)
    monkeypatch.setattr(demo, "N_IMAGES", 12)
    full_run = runner.run

    def small_run(exp, **kwargs):  # the demo's experiments (captions included) on 3 of its images
        exp.dataset.images = data / SPLIT
        exp.dataset.annotations = data / "annotations" / exp.dataset.annotations.name
        exp.dataset.limit = 3
        return full_run(exp, **kwargs)

    monkeypatch.setattr(runner, "run", small_run)
    assert main(["demo", "--no-dashboard", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    warnings = [line for line in out if line.startswith("warning:")]
    assert warnings and len(warnings) == len(set(warnings))
    heads = [k for k, line in enumerate(out) if line.startswith("ablation ")]
    assert len(heads) == len(EXPERIMENTS)
    for k in heads:  # every row of a table as wide as its header: the columns line up past long labels
        rows = out[k + 2:out.index("", k) if "" in out[k:] else None]
        rows = [r for r in rows if not r.startswith("*")]
        assert out[k].split()[:5] == ["ablation", "images", "accuracy", "change", "sig"]
        assert rows and all(re.match(r"\S+\s+\S+", r).end() == out[k].index("images") + len("images")
                            for r in rows)
    result = cli("list", env={DB_ENV: str(db)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "images"]
    assert [line.split()[0] for line in lines[2:]] == [load_experiment(path).name for path in EXPERIMENTS]
    assert all(line.split()[1] == "complete" for line in lines[2:])


def test_the_printed_summary_marks_what_the_dashboard_marks(dash_store):
    from analysis import tables
    from compute import store
    from compute.lifecycle import SIG_MARK, format_summary

    with store.connect(dash_store, read_only=True) as con:
        text = format_summary(store.summary(con, 1))
        summary = tables.summary(con, 1)
    lines = text.splitlines()
    header, body = lines[0], lines[2:2 + len(summary)]
    sig = header.index("sig")
    assert [line.split()[0] for line in body] == list(summary["ablation"])
    assert [line[sig:sig + 3].strip() == SIG_MARK for line in body] == list(summary["sig_accuracy"] != 0)
    p_holm = header.index("p (Holm)")
    for line, row in zip(body[1:], summary.iloc[1:].itertuples(), strict=True):
        shown = line[p_holm:p_holm + 8].strip()
        assert shown == ("<0.001" if row.p_holm_accuracy < 0.001 else f"{row.p_holm_accuracy:.3f}")
    assert len({len(line) for line in [header, *body] if line.split()[-1] != "-"}) <= 2  # aligned, right edges


def test_list_columns_stay_aligned_with_a_rescored_run(dash_store, tmp_path):
    from compute.prompts import Prompt
    from compute.rescore import rescore

    db = tmp_path / "copy.duckdb"
    shutil.copy(dash_store, db)
    rescore(db, "tiny-singles", [Prompt("a photo of a cat", "cat"), Prompt("a photo of a dog", "dog")],
            "a-rather-long-rescored-name", progress=False, echo=lambda _: None)  # no captioner: one text pass
    result = cli("list", "--db", str(db))
    assert result.returncode == 0, result.stderr
    head, rule, *rows = result.stdout.splitlines()
    assert any("a-rather-long-rescored-name (from tiny-singles)" in row for row in rows)
    for row in rows:
        for column in ("status", "created"):  # left-aligned: each cell starts under its heading
            start = head.index(column)
            assert row[start - 2:start] == "  " and row[start] != " ", (column, row)
        for column in ("images", "errors"):  # right-aligned: each cell ends under its heading
            end = head.index(column) + len(column)
            assert row[end - 1] != " " and row[end:end + 2] == "  ", (column, row)


@pytest.mark.parametrize("verb", VERBS)
def test_every_help_is_plain_text(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out, out


def test_a_bfloat16_run_reads_the_float32_logit_scale(tiny_clip):
    import torch

    from compute.models import load_clip
    from compute.scoring import logit_scale

    full = load_clip(str(tiny_clip), "cpu", "float32")
    low = load_clip(str(tiny_clip), "cpu", "bfloat16")
    assert low.model.vision_model.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert low.model.logit_scale.dtype == torch.float32
    assert logit_scale(low) == logit_scale(full)
    # what bfloat16 would have made of it: not the same number (so the test can fail)
    assert float(full.model.logit_scale.detach().to(torch.bfloat16).float().exp()) != logit_scale(full)
