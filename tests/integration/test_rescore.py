"""`rescore` scores new prompts from stored embeddings and equals a full run with those prompts."""

from __future__ import annotations

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
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 0
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


def test_rescore_errors(parent, tmp_path, capsys):
    _, _, db = parent
    prompts = tmp_path / "p.toml"
    prompts.write_text('[[prompts]]\ntext = "a photo of a cat"\nlabel = "cat"\n')
    cases = [
        (["--run", "nope"], "no run named 'nope'"),
        (["--run", "parent", "--as", "parent"], "already exists"),
    ]
    for extra, message in cases:
        args = ["rescore", "--prompts", str(prompts), "--as", "x", "--db", str(db), "--no-progress", *extra]
        assert main(args) == 2
        assert message in capsys.readouterr().err
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
    from compute.config import Prompt
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
