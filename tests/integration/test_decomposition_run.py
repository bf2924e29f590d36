"""Decomposition as part of a run: the tap leaves the sweep's numbers as they are, the plain method and the
engine store the same decomposition, a run killed inside a batch resumes to the uninterrupted store, a
rescored run gets its new prompts' shares and direct effects from the stored vectors alone, TextSpan gives the
same texts twice, and the experiment file's [decomposition] table."""

from __future__ import annotations

import re
import signal

import pytest
import torch
from helpers import cli_forked, sql

from compute.__main__ import main
from compute.ablations import mean_needs, parse_ablation, sweep
from compute.config import load_experiment
from compute.engine import SweepEngine, attention_means
from compute.errors import InputError
from compute.models import load_clip
from compute.runner import run
from compute.scoring import logit_scale, text_embeddings
from tools.synthetic import make_coco, write_experiment

QUIET = {"progress": False, "echo": lambda _: None}
DECOMPOSE = "[decomposition]\nenabled = true\ntextspan_layers = 3\ntextspan_texts = 4\n"
EXTRAS = ("zero:5-8", "mean:2", "identity:11/h1,h3", "knockout:9/patches>cls")
CONTRIBUTIONS = "SELECT image_id, ablation, component, layer, head, prompt, logit FROM contributions " \
                "WHERE run = ? ORDER BY ALL"
EFFECTS = "SELECT image_id, ablation, prompt, total, direct, indirect FROM effects WHERE run = ? ORDER BY ALL"
DESCRIPTIONS = "SELECT layer, head, rank, text, variance FROM head_descriptions WHERE run = ? ORDER BY ALL"
NEW = [("a photo of a black cat", "cat"), ("a photo of a small dog", "dog"), ("a photo of a red car", "car")]


def close(got: list[tuple], want: list[tuple], values: int, tol: float) -> None:
    """The same keys (all but the last ``values`` columns), the numbers within ``tol``."""
    assert got and [r[:-values] for r in got] == [r[:-values] for r in want]
    worst = max(abs(a - b) for x, y in zip(got, want, strict=True) for a, b in zip(x[-values:], y[-values:], strict=True))
    assert worst < tol, worst


def test_the_tap_changes_nothing_the_engine_computes(tiny_clip, tiny_siglip):
    from compute.decomposition import Decomposer

    for path in (tiny_clip, tiny_siglip):
        clip = load_clip(str(path), "cpu")
        n = len(clip.model.vision_model.encoder.layers)
        cls = clip.family == "clip"
        ablations = sweep("paper", n, cls=cls) + [parse_ablation("mean:2/h1", n), parse_ablation("uniform:3", n)]
        pixels = torch.randn(3, 3, 32, 32)
        means = attention_means(clip.model, [pixels], mean_needs(ablations))
        engine = SweepEngine(clip.model, ablations, means)
        plain = engine.embeddings(pixels)
        d = Decomposer(clip.model, ablations, means, text_embeddings(clip, ["a cat", "a dog"]), logit_scale(clip))
        tap = d.tap()
        tapped = engine.embeddings(pixels, tap)
        assert all(torch.equal(plain[a], tapped[a]) for a in ablations)
        assert set(tap.result) == {"norm", "vectors", "shares", "direct_vectors", "direct"}
        assert tap.result["direct"].shape == (3, len(ablations) - 1, 2)
        # on its own unablated pass (the plain method, images decomposed later): the same numbers
        alone = d.batch(pixels)
        for key, value in tap.result.items():
            assert torch.allclose(alone[key], value, atol=1e-6), key


@pytest.fixture
def decomposed(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=9, broken=(3,))
    db = tmp_path / "r.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, name="parent", extra=EXTRAS, more=DECOMPOSE)
    assert run(load_experiment(exp), **QUIET).complete
    return tiny_clip, coco, db


def test_the_plain_method_stores_the_engines_decomposition(decomposed, tmp_path):
    tiny_clip, coco, db = decomposed
    plain = write_experiment(tmp_path / "p.toml", tiny_clip, coco, db, name="plain", extra=EXTRAS, more=DECOMPOSE)
    assert run(load_experiment(plain), method="plain", **QUIET).complete
    close(sql(db, CONTRIBUTIONS, ["plain"]), sql(db, CONTRIBUTIONS, ["parent"]), 1, 1e-5)
    close(sql(db, EFFECTS, ["plain"]), sql(db, EFFECTS, ["parent"]), 3, 1e-4)  # totals: the plain method's logits
    assert sql(db, DESCRIPTIONS, ["plain"]) == sql(db, DESCRIPTIONS, ["parent"])  # the same texts, twice


def test_rescore_gives_the_new_prompts_shares_from_the_stored_vectors(decomposed, tmp_path, capsys):
    tiny_clip, coco, db = decomposed
    prompts = tmp_path / "new.toml"
    prompts.write_text("".join(f'[[prompts]]\ntext = "{t}"\nlabel = "{label}"\n' for t, label in NEW))
    assert main(["rescore", "--run", "parent", "--prompts", str(prompts), "--as", "child", "--db", str(db),
                 "--no-progress"]) == 0
    full = write_experiment(tmp_path / "full.toml", tiny_clip, coco, db, name="full", prompts=NEW, extra=EXTRAS,
                            more=DECOMPOSE)
    assert run(load_experiment(full), **QUIET).complete
    assert len(sql(db, CONTRIBUTIONS, ["child"])) == 8 * (1 + 12 * 6 + 1) * 3
    close(sql(db, CONTRIBUTIONS, ["child"]), sql(db, CONTRIBUTIONS, ["full"]), 1, 1e-5)
    close(sql(db, EFFECTS, ["child"]), sql(db, EFFECTS, ["full"]), 3, 1e-4)
    # its shares sum to its own (rescored) logits
    sums = sql(db, "SELECT c.s, s.logit FROM (SELECT image_id, prompt, SUM(logit) s FROM contributions WHERE run = "
                   "'child' GROUP BY ALL) c JOIN scores s ON s.run = 'child' AND s.image_id = c.image_id AND "
                   "s.prompt = c.prompt AND s.ablation = 'baseline'")
    assert len(sums) == 8 * 3 and max(abs(a - b) for a, b in sums) < 1e-4
    # the vectors stay the parent's; TextSpan ran on them with the child's prompts in its pool
    assert sql(db, "SELECT COUNT(*) FROM component_vector_t v JOIN run_t r USING (run_id) WHERE r.run = 'child'") \
        == [(0,)]
    assert len(sql(db, DESCRIPTIONS, ["child"])) == 3 * 4 * 4
    assert sql(db, "SELECT status FROM runs WHERE run = 'child'") == [("complete",)]


@pytest.mark.slow
def test_a_run_killed_inside_a_batch_resumes_to_the_uninterrupted_decomposition(decomposed, tmp_path):
    tiny_clip, coco, ref_db = decomposed
    db = tmp_path / "killed.duckdb"
    exp = write_experiment(tmp_path / "k.toml", tiny_clip, coco, db, name="parent", extra=EXTRAS, more=DECOMPOSE,
                           batch_size=2)
    killed = cli_forked("run", str(exp), "--no-progress", env={"CLIP_LAB_KILL_AT": "sweep:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # two whole batches (images 1-4, 3 unreadable), no part of the third
    assert sql(db, "SELECT image_id FROM decomposed_t ORDER BY 1") == [(1,), (2,), (4,)]
    assert sql(db, "SELECT DISTINCT image_id FROM selection_t ORDER BY 1") == [(1,), (2,), (4,)]
    assert run(load_experiment(exp), **QUIET).complete
    close(sql(db, CONTRIBUTIONS, ["parent"]), sql(ref_db, CONTRIBUTIONS, ["parent"]), 1, 1e-5)
    close(sql(db, EFFECTS, ["parent"]), sql(ref_db, EFFECTS, ["parent"]), 3, 1e-5)
    for table in ("contribution_t", "direct_t", "component_vector_t", "direct_vector_t"):
        assert sql(db, f"SELECT COUNT(*) FROM {table}") == sql(ref_db, f"SELECT COUNT(*) FROM {table}"), table


def test_the_experiment_files_decomposition_table(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=2)
    base = write_experiment(tmp_path / "a.toml", tiny_clip, coco, tmp_path / "x.duckdb")
    plain = load_experiment(base)
    assert not plain.decomposition.enabled and plain.decomposition.vectors == "float32"
    on = write_experiment(tmp_path / "b.toml", tiny_clip, coco, tmp_path / "x.duckdb", more=DECOMPOSE)
    # decomposition adds rows beside the results: not part of the run's identity (a run may resume with it)
    assert load_experiment(on).identity_hash() == plain.identity_hash()
    bad = {
        "[decomposition]\nenable = true\n": "unknown key 'enable' in [decomposition]",
        "[decomposition]\nenabled = \"yes\"\n": "decomposition.enabled must be true or false",
        "[decomposition]\nvectors = \"float64\"\n": "decomposition.vectors = 'float64' is not one of",
        "[decomposition]\ntextspan_layers = -1\n": "decomposition.textspan_layers must be between 0 and",
    }
    for text, message in bad.items():
        path = write_experiment(tmp_path / "bad.toml", tiny_clip, coco, tmp_path / "x.duckdb", more=text)
        with pytest.raises(InputError, match=re.escape(message)):
            load_experiment(path)


def test_a_run_that_keeps_no_vectors_is_complete_without_descriptions_and_rescores_without_shares(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=3)
    db = tmp_path / "n.duckdb"
    exp = write_experiment(tmp_path / "n.toml", tiny_clip, coco, db, name="parent", sweep="none", extra=("zero:12",),
                           more=DECOMPOSE + 'vectors = "none"\n')
    said = []
    assert run(load_experiment(exp), progress=False, echo=said.append).complete
    assert any("heads not described" in line for line in said)
    assert sql(db, "SELECT COUNT(*) FROM contributions") == [(3 * (1 + 12 * 6 + 1) * 4,)]
    assert sql(db, "SELECT COUNT(*) FROM effects") == [(3 * 4,)]
    for table in ("component_vector_t", "direct_vector_t", "head_description_t"):
        assert sql(db, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    from compute.config import Prompt
    from compute.rescore import rescore

    assert rescore(db, "parent", [Prompt(t, label) for t, label in NEW], "child", progress=False,
                   echo=lambda _: None).complete
    assert sql(db, "SELECT COUNT(*) FROM contributions WHERE run = 'child'") == [(0,)]
