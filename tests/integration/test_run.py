"""`python -m compute run` end to end on a tiny random CLIP and a tiny COCO dataset, into a real DuckDB."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import cli, cli_process, sql

from compute.__main__ import main
from tools.synthetic import make_coco, write_experiment

VIEW_COLUMNS = {
    "scores": ["run", "image_id", "ablation", "prompt", "label", "logit", "prob"],
    "selections": ["run", "image_id", "ablation", "prompt", "label", "correct", "score_baseline", "caption",
                   "caption_score"],
    "images": ["run", "image_id", "file_name", "labels"],
    "runs": ["run", "model", "created_at", "status", "config"],
    "errors": ["run", "image_id", "stage", "message"],
}
EXTRAS = ("zero:5-8", "uniform:2", "mean:3,11", "identity:1,5,9")



@pytest.fixture
def coco_with_bad_files(tmp_path):
    coco = make_coco(tmp_path / "coco", n=10, broken=(4,))
    (coco / "images" / f"{6:012d}.jpg").unlink()  # listed in the JSON, missing on disk
    return coco


def test_run_stores_every_pair_once_in_the_public_views(tiny_clip, coco_with_bad_files, tmp_path):
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco_with_bad_files, db, extra=EXTRAS)
    result = cli("run", str(exp), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "identity:1-12" in result.stdout and "accuracy" in result.stdout  # the summary table

    for view, columns in VIEW_COLUMNS.items():
        got = [r[0] for r in sql(db, f"SELECT column_name FROM (DESCRIBE {view})")]
        assert got == columns, view
    n_ok, n_ablations, n_prompts = 8, 21 + len(EXTRAS), 4
    assert sql(db, "SELECT COUNT(*) FROM images")[0][0] == 10
    assert sql(db, "SELECT COUNT(*) FROM selections")[0][0] == n_ok * n_ablations
    assert sql(db, "SELECT COUNT(*) FROM scores")[0][0] == n_ok * n_ablations * n_prompts
    assert sql(db, "SELECT COUNT(*) FROM (SELECT DISTINCT image_id, ablation FROM selections)")[0][0] == n_ok * n_ablations
    assert sql(db, "SELECT status FROM runs")[0][0] == "complete"
    errors = sql(db, "SELECT image_id, stage, message FROM errors ORDER BY image_id")
    assert [(i, s) for i, s, _ in errors] == [(4, "load"), (6, "load")]
    assert "cannot decode" in errors[0][2] and "not found" in errors[1][2]

    # Definitions: prob is the softmax of the logits over the prompts; the selection is the argmax;
    # correct means its label is among the image's labels; captions stay NULL without a captioner.
    rows = sql(db, """
        SELECT s.image_id, s.ablation, s.label, s.correct, list(sc.logit ORDER BY sc.prompt),
               list(sc.prob ORDER BY sc.prompt), list(sc.prompt ORDER BY sc.prompt), any_value(s.prompt),
               any_value(i.labels), s.caption
        FROM selections s JOIN scores sc USING (run, image_id, ablation) JOIN images i USING (run, image_id)
        GROUP BY ALL""")
    assert len(rows) == n_ok * n_ablations
    for _, _, label, correct, logits, probs, prompts, prompt, labels, caption in rows:
        logits = np.array(logits)
        soft = np.exp(logits - logits.max())
        np.testing.assert_allclose(probs, soft / soft.sum(), atol=1e-5)
        assert prompts[int(np.argmax(logits))] == prompt
        assert correct == (label in labels)
        assert caption is None
    # Image labels are the category names of its annotations (image 7 also has a bird; 10 has both).
    labels = dict(sql(db, "SELECT image_id, labels FROM images"))
    assert labels[7] == ["bird", "cat"] and labels[10] == ["cat", "dog"] and labels[2] == ["dog"]

    # Running it again resumes: nothing recomputed, nothing duplicated, the same values.
    before = sql(db, "SELECT * FROM scores ORDER BY ALL")
    again = cli("run", str(exp), "--no-progress")
    assert again.returncode == 0 and "resuming" in again.stdout
    assert sql(db, "SELECT * FROM scores ORDER BY ALL") == before

    listing = cli("list", "--db", str(db))
    assert listing.returncode == 0 and "complete" in listing.stdout and "100%" in listing.stdout


def test_engine_and_plain_method_store_the_same_results(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=7)
    dbs = {}
    for method in ("engine", "plain"):
        dbs[method] = tmp_path / f"{method}.duckdb"
        exp = write_experiment(tmp_path / f"{method}.toml", tiny_clip, coco, dbs[method], extra=EXTRAS, batch_size=3)
        assert main(["run", str(exp), "--method", method, "--no-progress"]) == 0
    query = "SELECT image_id, ablation, prompt, logit, prob FROM scores ORDER BY image_id, ablation, prompt"
    fast, plain = sql(dbs["engine"], query), sql(dbs["plain"], query)
    assert len(fast) == len(plain) == 7 * (21 + len(EXTRAS)) * 4
    assert [r[:3] for r in fast] == [r[:3] for r in plain]
    assert max(abs(a[3] - b[3]) for a, b in zip(fast, plain, strict=True)) < 1e-4
    sel = "SELECT image_id, ablation, prompt, correct FROM selections ORDER BY ALL"
    assert sql(dbs["engine"], sel) == sql(dbs["plain"], sel)


def test_a_changed_configuration_is_refused_with_a_way_forward(tiny_clip, tiny_coco, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, tiny_coco, db, sweep="none")
    assert main(["run", str(exp), "--no-progress"]) == 0
    write_experiment(exp, tiny_clip, tiny_coco, db, sweep="singles")
    capsys.readouterr()
    assert main(["run", str(exp), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run 't' already exists") and "ablations" in err and "compute delete t" in err
    assert main(["delete", "t", "--db", str(db)]) == 0
    assert main(["run", str(exp), "--no-progress"]) == 0
    assert sql(db, "SELECT COUNT(DISTINCT ablation) FROM selections")[0][0] == 13


def _bad(tmp_path, tiny_clip, tiny_coco, case):
    """Write the experiment for one bad-input case; return (path, expected message)."""
    model, coco, kw = tiny_clip, tiny_coco, {}
    more = ""
    if case == "missing model dir":
        model = tmp_path / "no-such-model"
    elif case == "non-CLIP model":
        from transformers import BertConfig
        model = tmp_path / "bert"
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(model)
    elif case == "malformed ablation":
        kw["extra"] = ("identity:1-",)
    elif case == "out-of-range ablation":
        kw["extra"] = ("identity:10-13",)
    elif case == "unknown kind":
        kw["extra"] = ("shuffle:3",)
    elif case == "missing images dir":
        coco = tmp_path / "elsewhere"
        (coco / "annotations").mkdir(parents=True)
        shutil.copy(tiny_coco / "annotations" / "instances.json", coco / "annotations")
    elif case == "missing annotations":
        coco = tmp_path / "elsewhere"
        (coco / "images").mkdir(parents=True)
    elif case == "no prompts":
        kw["prompts"] = []
    elif case == "duplicate prompts":
        kw["prompts"] = [("a photo of a cat", "cat"), ("a photo of a cat", "dog")]
    elif case == "unknown key":
        more = "[captions]\nbeams = 3\n"
    elif case == "unknown category":
        kw["categories"] = ("cat", "zebra")
    elif case == "malformed annotations":
        coco = tmp_path / "bad"
        shutil.copytree(tiny_coco, coco)
        (coco / "annotations" / "instances.json").write_text("{not json")
    path = write_experiment(tmp_path / "bad.toml", model, coco, tmp_path / "bad.duckdb", more=more, **kw)
    return path


BAD = {
    "missing model dir": "model directory not found",
    "non-CLIP model": "is not a supported model (its config says model_type = 'bert'); supported families: clip ",
    "malformed ablation": "malformed layers '1-'",
    "out-of-range ablation": "ablation 'identity:10-13' is out of range: layer 13 does not exist",
    "unknown kind": "unknown ablation kind 'shuffle'",
    "missing images dir": "images directory not found",
    "missing annotations": "annotations file not found",
    "no prompts": "no prompts",
    "duplicate prompts": "duplicate prompt 'a photo of a cat'",
    "unknown key": r"unknown key 'beams' in [captions]",
    "unknown category": "unknown category 'zebra'",
    "malformed annotations": "is not valid JSON",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(tiny_clip, tiny_coco, tmp_path, capsys, case):
    path = _bad(tmp_path, tiny_clip, tiny_coco, case)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert BAD[case] in lines[0]
    assert not (tmp_path / "bad.duckdb").exists()


def test_bad_input_as_a_real_process_has_no_traceback(tiny_clip, tiny_coco, tmp_path):
    path = _bad(tmp_path, tiny_clip, tiny_coco, "out-of-range ablation")
    result = cli_process("run", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ablation 'identity:10-13' is out of range")
    assert not (tmp_path / "bad.duckdb").exists()


VERBS = ["run", "list", "delete", "rescore", "export", "screen", "fetch", "demo"]


def test_the_help_test_covers_every_verb():
    from compute.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    assert sorted(sub.choices) == sorted(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m compute {verb}") and len(out.splitlines()) > 4


def test_cli_overrides_and_stored_config(tiny_clip, tiny_coco, tmp_path):
    db = tmp_path / "other.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, tiny_coco, tmp_path / "unused.duckdb", sweep="none")
    assert main(["run", str(exp), "--db", str(db), "--limit", "3", "--batch-size", "2", "--no-progress"]) == 0
    assert not (tmp_path / "unused.duckdb").exists()
    assert sql(db, "SELECT COUNT(*) FROM images")[0][0] == 3
    config = json.loads(sql(db, "SELECT config FROM runs")[0][0])
    assert config["dataset"]["limit"] == 3 and config["vision"]["layers"] == 12
