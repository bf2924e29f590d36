"""Attribution as part of a run: a run killed inside a batch, a run resumed with attribution newly enabled and one
with a kind added store the estimates of one uninterrupted run; a bfloat16 run attributes on its float32 model;
the summary's quality figures equal scipy's on the stored rows; ``screen`` lists the heads the estimates rank
most harmful."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from helpers import cli, cli_forked, sql

from compute.attribution_quality import TOP_K
from compute.config import load_experiment
from compute.runner import run
from tools.synthetic import make_coco, write_experiment

QUIET = {"progress": False, "echo": lambda _: None}
KINDS = ("identity", "zero", "knockout:patches>cls")
EXTRAS = ("identity:2/h1", "zero:12/h3", "knockout:5/patches>cls/h0")  # exact effects of three estimated heads
ESTIMATES = "SELECT image_id, ablation, estimate FROM attributions ORDER BY image_id, ablation"
PAIRS = "SELECT image_id, spec, prompt_id, other_prompt_id, metric FROM attributed_t ORDER BY ALL"


def table(kinds: tuple[str, ...]) -> str:
    return "[attribution]\nkinds = [" + ", ".join(f'"{k}"' for k in kinds) + "]\n"


def close(got: list[tuple], want: list[tuple], tol: float) -> None:
    """The same keys (all but the last column), the numbers within ``tol`` of the largest."""
    assert got and [r[:-1] for r in got] == [r[:-1] for r in want]
    a, b = np.array([r[-1] for r in got]), np.array([r[-1] for r in want])
    assert np.abs(a - b).max() <= tol * np.abs(b).max(), np.abs(a - b).max()


@pytest.fixture(scope="module")
def reference(tiny_clip, tmp_path_factory):
    """An uninterrupted run: 9 images (image 3 unreadable) in batches of 2, three extras, three kinds attributed."""
    tmp = tmp_path_factory.mktemp("attr-ref")
    coco = make_coco(tmp / "coco", n=9, broken=(3,))
    db = tmp / "ref.duckdb"
    exp = write_experiment(tmp / "ref.toml", tiny_clip, coco, db, sweep="none", extra=EXTRAS, batch_size=2,
                           more=table(KINDS))
    said = []
    assert run(load_experiment(exp), progress=False, echo=said.append).complete
    return {"coco": coco, "db": db, "said": said}


def test_the_reference_run_is_complete_and_says_how_good_its_estimates_are(reference):
    db = reference["db"]
    assert len(sql(db, ESTIMATES)) == 8 * len(KINDS) * 12 * 4
    assert len(sql(db, PAIRS)) == 8 * len(KINDS)
    lines = [line for line in reference["said"] if line.startswith("attribution of")]
    assert len(lines) == len(KINDS) and all("too few to rank" in line for line in lines)  # one exact head each
    config = json.loads(sql(db, "SELECT config FROM runs")[0][0])["attribution"]
    assert config["kinds"] == list(KINDS) and config["metric"].startswith("logit of the baseline's selected prompt")


@pytest.mark.slow
def test_a_run_killed_inside_a_batch_resumes_to_the_uninterrupted_estimates(reference, tiny_clip, tmp_path):
    db = tmp_path / "killed.duckdb"
    exp = write_experiment(tmp_path / "k.toml", tiny_clip, reference["coco"], db, sweep="none", extra=EXTRAS,
                           batch_size=2, more=table(KINDS))
    killed = cli_forked("run", str(exp), "--no-progress", env={"CLIP_LAB_KILL_AT": "sweep:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # two whole batches (images 1-4, 3 unreadable), no part of the third
    assert sql(db, "SELECT DISTINCT image_id FROM attributed_t ORDER BY 1") == [(1,), (2,), (4,)]
    assert sql(db, "SELECT DISTINCT image_id FROM selection_t ORDER BY 1") == [(1,), (2,), (4,)]
    assert run(load_experiment(exp), **QUIET).complete
    close(sql(db, ESTIMATES), sql(reference["db"], ESTIMATES), 1e-6)
    close(sql(db, PAIRS), sql(reference["db"], PAIRS), 1e-6)


def test_attribution_enabled_on_resume_catches_up_and_a_kind_added_later_only_that_kind(reference, tiny_clip,
                                                                                       tmp_path):
    db = tmp_path / "later.duckdb"
    coco = reference["coco"]
    plain = write_experiment(tmp_path / "p.toml", tiny_clip, coco, db, sweep="none", extra=EXTRAS, batch_size=2)
    assert run(load_experiment(plain), **QUIET).complete
    one = write_experiment(tmp_path / "p.toml", tiny_clip, coco, db, sweep="none", extra=EXTRAS, batch_size=2,
                           more=table(KINDS[:1]))
    said = []
    assert run(load_experiment(one), progress=False, echo=said.append).complete  # the same run: resumed
    assert "attributing 8 image(s) swept before attribution of identity was asked for" in said
    assert any(line.startswith("resuming run") for line in said)
    first = sql(db, ESTIMATES)
    assert len(first) == 8 * 48
    every = write_experiment(tmp_path / "p.toml", tiny_clip, coco, db, sweep="none", extra=EXTRAS, batch_size=2,
                             more=table(KINDS))
    said = []
    assert run(load_experiment(every), progress=False, echo=said.append).complete
    assert "attributing 8 image(s) swept before attribution of zero, knockout:patches>cls was asked for" in said
    assert [r for r in sql(db, ESTIMATES) if r[1].startswith("identity")] == first  # identity's rows untouched
    # the same estimates as the run that attributed in its sweep (the images in other batches: rounding aside)
    close(sql(db, ESTIMATES), sql(reference["db"], ESTIMATES), 1e-5)
    close(sql(db, PAIRS), sql(reference["db"], PAIRS), 1e-5)
    said = []
    assert run(load_experiment(every), progress=False, echo=said.append).complete
    assert not any(line.startswith("attributing") for line in said)  # nothing left to catch up


def test_a_bfloat16_run_attributes_on_its_float32_model(reference, tiny_clip, tmp_path):
    db = tmp_path / "bf16.duckdb"
    exp = write_experiment(tmp_path / "b.toml", tiny_clip, reference["coco"], db, sweep="none", extra=EXTRAS,
                           batch_size=2, dtype="bfloat16", more=table(KINDS))
    assert run(load_experiment(exp), **QUIET).complete
    close(sql(db, ESTIMATES), sql(reference["db"], ESTIMATES), 1e-6)
    close(sql(db, PAIRS), sql(reference["db"], PAIRS), 1e-6)


# --------------------------------------------------------------------------------------------------
# Quality against the exact heads sweep, and screening.


@pytest.fixture(scope="module")
def heads_run(tiny_clip, tmp_path_factory):
    """The heads sweep (identity on each of 12 x 4 heads) with identity and zero attributed, 10 images."""
    tmp = tmp_path_factory.mktemp("attr-heads")
    coco = make_coco(tmp / "coco", n=10)
    db = tmp / "h.duckdb"
    exp = write_experiment(tmp / "h.toml", tiny_clip, coco, db, sweep="heads", batch_size=5,
                           more=table(("identity", "zero")))
    said = []
    assert run(load_experiment(exp), progress=False, echo=said.append).complete
    return {"db": db, "said": said, "exp": exp}


def test_the_summarys_figures_are_scipys_on_the_stored_rows(heads_run):
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed here")
    db = heads_run["db"]
    rows = sql(db, """
        SELECT a.image_id, a.ablation, a.estimate,
               (s.logit - o.logit) - (bs.logit - bo.logit) AS exact
        FROM attributions a
        JOIN attributed_t d ON d.image_id = a.image_id AND d.spec = 'identity'
        JOIN scores s ON s.image_id = a.image_id AND s.ablation = a.ablation
        JOIN prompt_t ps ON ps.prompt_id = d.prompt_id AND ps.prompt = s.prompt
        JOIN scores o ON o.image_id = a.image_id AND o.ablation = a.ablation
        JOIN prompt_t po ON po.prompt_id = d.other_prompt_id AND po.prompt = o.prompt
        JOIN scores bs ON bs.image_id = a.image_id AND bs.ablation = 'baseline' AND bs.prompt = ps.prompt
        JOIN scores bo ON bo.image_id = a.image_id AND bo.ablation = 'baseline' AND bo.prompt = po.prompt
        WHERE a.ablation LIKE 'identity:%' ORDER BY a.image_id, a.ablation""")
    assert len(rows) == 10 * 48
    heads = sorted({r[1] for r in rows})
    images = sorted({r[0] for r in rows})
    est = np.array([r[2] for r in rows]).reshape(len(images), len(heads))
    exact = np.array([r[3] for r in rows]).reshape(len(images), len(heads))
    mean_est, mean_exact = est.mean(0), exact.mean(0)
    rho_head = stats.spearmanr(mean_est, mean_exact).statistic
    sign_head = np.mean(np.sign(mean_est) == np.sign(mean_exact))
    recall_head = {k: len(set(np.argsort(mean_est)[:k]) & set(np.argsort(mean_exact)[:k])) / k for k in TOP_K}
    rho_image = np.mean([stats.spearmanr(est[i], exact[i]).statistic for i in range(len(images))])
    pooled = stats.spearmanr(est.reshape(-1), exact.reshape(-1)).statistic
    line = next(line for line in heads_run["said"] if line.startswith("attribution of identity"))
    assert "(48 heads, 10 images)" in line
    want = (f"per head (mean over images) rho {rho_head:.2f}, top-5 recall {recall_head[5]:.2f}, top-10 recall "
            f"{recall_head[10]:.2f}, sign {sign_head:.2f}")
    assert want in line, (want, line)
    assert f"per image (mean of each image's) rho {rho_image:.2f}" in line
    assert line.endswith(f"pooled: rho {pooled:.2f}")
    # zero has no exact sweep in this run: said so
    zero = next(line for line in heads_run["said"] if line.startswith("attribution of zero"))
    assert "no exact effect" in zero and "10 image(s)" in zero


def test_screen_prints_the_extras_of_the_heads_ranked_most_harmful(heads_run):
    db = heads_run["db"]
    out = cli("screen", "--run", "t", "--top", "5", "--kind", "zero", "--db", str(db))
    assert out.returncode == 0, out.stderr
    means = sql(db, "SELECT ablation, AVG(estimate) m FROM attributions WHERE ablation LIKE 'zero:%' GROUP BY 1 "
                    "ORDER BY m, ablation LIMIT 5")
    line = next(line for line in out.stdout.splitlines() if line.startswith("extra = "))
    assert line == "extra = [" + ", ".join(f'"{a}"' for a, _ in means) + "]"
    bad = cli("screen", "--run", "t", "--top", "5", "--kind", "uniform", "--db", str(db))
    assert bad.returncode == 2 and "no estimates of uniform" in bad.stderr
    missing = cli("screen", "--run", "nope", "--top", "5", "--db", str(db))
    assert missing.returncode == 2 and "no run named 'nope'" in missing.stderr
