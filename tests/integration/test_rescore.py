"""`rescore` scores new prompts from stored embeddings and equals a full run with those prompts."""

from __future__ import annotations

import duckdb
import pytest
from helpers import cli, sql

from compute.__main__ import main
from tools.synthetic import make_coco, write_experiment

NEW = [("a photo of a black cat", "cat"), ("a photo of a small dog", "dog"), ("a photo of a red car", "car")]



@pytest.fixture
def parent(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=9, broken=(3,))
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, name="parent", extra=("zero:5-8", "mean:2"))
    assert main(["run", str(exp), "--no-progress"]) == 0
    return tiny_clip, coco, db


def test_rescore_equals_a_full_run_with_the_new_prompts(parent, tmp_path, capsys):
    tiny_clip, coco, db = parent
    prompts = tmp_path / "new.toml"
    prompts.write_text("".join(f'[[prompts]]\ntext = "{t}"\nlabel = "{label}"\n' for t, label in NEW))
    capsys.readouterr()
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    # It says which run it made (as `run` does), and at the end which run to open.
    assert f"new run 'child' in {db} (rescored from run 'parent'): 9 images x 23 ablations x 3 prompts" in out
    assert out[-1].startswith(f"rescored 'parent' into run 'child' in {db}: open it in the dashboard")
    assert f"python -m compute export --run child --db {db}" in out[-1]
    full = write_experiment(tmp_path / "full.toml", tiny_clip, coco, db, name="full", prompts=NEW,
                            extra=("zero:5-8", "mean:2"))
    assert main(["run", str(full), "--no-progress"]) == 0

    query = "SELECT image_id, ablation, prompt, logit, prob FROM scores WHERE run = ? ORDER BY image_id, ablation, prompt"
    child, reference = sql(db, query, ["child"]), sql(db, query, ["full"])
    assert len(child) == len(reference) == 8 * 23 * 3
    assert [r[:3] for r in child] == [r[:3] for r in reference]
    assert max(abs(a[3] - b[3]) for a, b in zip(child, reference, strict=True)) < 1e-4
    sel = "SELECT image_id, ablation, prompt, correct, round(score_baseline, 5) FROM selections WHERE run = ? ORDER BY ALL"
    assert sql(db, sel, ["child"]) == sql(db, sel, ["full"])
    # It is a run like any other: listed, complete, with its images and the parent's load error.
    assert sql(db, "SELECT status FROM runs WHERE run = 'child'") == [("complete",)]
    assert sql(db, "SELECT COUNT(*) FROM images WHERE run = 'child'") == [(9,)]
    assert sql(db, "SELECT image_id, stage FROM errors WHERE run = 'child'") == [(3, "load")]
    capsys.readouterr()
    assert main(["list", "--db", str(db)]) == 0
    assert "child (from parent)" in capsys.readouterr().out
    # The child reads the parent's embeddings rather than copying them.
    assert sql(db, "SELECT COUNT(*) FROM embedding_t e JOIN run_t r USING (run_id) WHERE r.run = 'child'") == [(0,)]

    # The parent cannot be deleted while the child reads its embeddings.
    assert main(["delete", "parent", "--db", str(db)]) == 2
    assert "rescored run(s) child read" in capsys.readouterr().err

    # Again: resumes, nothing duplicated.
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 0
    assert len(sql(db, query, ["child"])) == 8 * 23 * 3
    assert f"resuming run 'child' in {db}" in capsys.readouterr().out.splitlines()


def test_rescore_errors(parent, tmp_path, capsys):
    _, _, db = parent
    prompts = tmp_path / "p.toml"
    prompts.write_text('[[prompts]]\ntext = "a photo of a cat"\nlabel = "cat"\n')
    cases = [
        (["--run", "nope"], "no run named 'nope'"),
        (["--run", "parent", "--as", "parent"], "already exists in"),
    ]
    for extra, message in cases:
        args = ["rescore", "--prompts", str(prompts), "--as", "x", "--db", str(db), "--no-progress", *extra]
        assert main(args) == 2
        assert message in capsys.readouterr().err
    # A name taken by a run of another identity: the message `run` gives, naming what differs and both ways out.
    assert main(["rescore", "--prompts", str(prompts), "--db", str(db), "--run", "parent", "--as", "parent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: run 'parent' already exists in {db} with a different configuration (differs in: "
                          f"prompts)") and f"python -m compute delete parent --db {db}" in err
    prompts.write_text("[[prompts]]\ntext = 'a'\n")
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "y", "--db", str(db)]) == 2
    assert "missing key 'label'" in capsys.readouterr().err


def test_a_run_without_embeddings_cannot_be_rescored(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=3)
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, name="lean", sweep="none", embeddings="none")
    assert main(["run", str(exp), "--no-progress"]) == 0
    assert sql(db, "SELECT COUNT(*) FROM embedding_t") == [(0,)]
    prompts = tmp_path / "p.toml"
    prompts.write_text('[[prompts]]\ntext = "a photo of a cat"\nlabel = "cat"\n')
    result = cli("rescore", "--run", "lean", "--prompts", str(prompts), "--as", "x", "--db", str(db))
    assert result.returncode == 2 and "kept no image embeddings" in result.stderr


def test_rescore_of_a_captioned_float16_run_reuses_the_caption_cache(tiny_clip, tiny_ved, tmp_path):
    """float16 embeddings rescore close to a full run; the rescored run gets captions, from the cache
    where the new prompts' selections match ones already captioned."""
    from compute.prompts import Prompt
    from compute.rescore import rescore

    coco = make_coco(tmp_path / "coco", n=5)
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, name="half", sweep="singles",
                           captioner=tiny_ved, embeddings="float16")
    assert main(["run", str(exp), "--no-progress"]) == 0
    same = [Prompt(t, label) for t, label in (("a photo of a dog", "dog"), ("a photo of a cat", "cat"),
                                               ("a photo of a bird", "bird"), ("a photo of a car", "car"))]
    result = rescore(db, "half", same, "again", progress=False, echo=lambda _: None)
    # the same prompts select the same prefixes: every caption from the cache
    assert result.captions.keys > 0 and result.captions.generated == 0 and result.complete
    q = "SELECT image_id, ablation, logit FROM scores WHERE run = ? ORDER BY image_id, ablation, prompt"
    full, half = sql(db, q, ["half"]), sql(db, q, ["again"])
    worst = max(abs(a[2] - b[2]) for a, b in zip(full, half, strict=True))
    assert worst < 0.05  # float16 storage: about 1e-3 relative on the cosine, x logit_scale
    assert sql(db, "SELECT COUNT(*) FROM selections WHERE run = 'again' AND caption IS NULL") == [(0,)]
    assert sql(db, "SELECT status FROM runs WHERE run = 'again'") == [("complete",)]


TABLES = ("run_t", "image_t", "prompt_t", "ablation_t", "score_t", "selection_t", "embedding_t", "error_t")


def test_a_run_that_is_not_complete_is_not_rescored(parent, tmp_path, capsys):
    """Still computing or stopped part way, a run has only some of its embeddings: a rescore of it would be a
    partial run marked complete. It is refused in one line, with exit 2 and nothing written."""
    _, _, db = parent
    with duckdb.connect(str(db)) as con:  # as a run stopped after its first images leaves the store
        for table in ("score_t", "selection_t", "embedding_t"):
            con.execute(f"DELETE FROM {table} WHERE image_id > 4")
        con.execute("UPDATE run_t SET status = 'running'")
    before = {t: sql(db, f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}
    prompts = tmp_path / "p.toml"
    prompts.write_text("".join(f'[[prompts]]\ntext = "{t}"\nlabel = "{label}"\n' for t, label in NEW))
    capsys.readouterr()
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: run 'parent' in {db} is not complete (status 'running'")
    assert "run it to completion first" in err[0] and captured.out == ""
    assert {t: sql(db, f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES} == before

    # Run to completion (the same command resumes it), the rescore goes through and is whole.
    exp = tmp_path / "e.toml"
    assert main(["run", str(exp), "--no-progress"]) == 0
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 0
    assert sql(db, "SELECT COUNT(*) FROM selections WHERE run = 'child'") == [(8 * 23,)]
    assert sql(db, "SELECT status FROM runs WHERE run = 'child'") == [("complete",)]
