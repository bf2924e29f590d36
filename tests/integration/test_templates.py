"""Prompt templates and ensembles on a real (tiny, random) CLIP: an ensemble's text embedding is the normalised
mean of its texts' normalised embeddings; a run and a rescore with an ensemble store the logits of that
embedding; the plain method agrees with the engine on such a run."""

from __future__ import annotations

import numpy as np
import torch
from helpers import sql

from compute import store
from compute.__main__ import main
from compute.models import load_clip
from compute.prompts import Prompt
from compute.rescore import rescore
from compute.scoring import prompt_embeddings, text_embeddings
from tools.synthetic import make_coco, write_experiment

ENSEMBLE = ["a photo of a {label}", "a drawing of a {label}", "a {label} in the picture"]
TEMPLATES = ('[[templates]]\nensemble = ["a photo of a {label}", "a drawing of a {label}", "a {label} in the picture"]'
             '\nlabels = ["cat", "dog"]\n')


def one_by_one(clip, text: str) -> np.ndarray:
    """A text's normalised embedding, alone in its batch, in float64: independent of the batching under test."""
    tokens = clip.processor.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        emb = clip.model.get_text_features(**tokens).pooler_output[0].double().numpy()
    return emb / np.linalg.norm(emb)


def test_an_ensemble_embedding_is_the_normalised_mean_and_a_single_prompt_is_untouched(tiny_clip):
    clip = load_clip(str(tiny_clip), "cpu")
    texts = [t.replace("{label}", "cat") for t in ENSEMBLE]
    got = prompt_embeddings(clip, [["a photo of a dog"], texts, "a photo of a bird"]).double().numpy()
    mean = np.mean([one_by_one(clip, t) for t in texts], axis=0)
    assert np.allclose(got[1], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(got[2], one_by_one(clip, "a photo of a bird"), atol=1e-6)
    assert not np.allclose(got[1], one_by_one(clip, texts[0]), atol=1e-3)  # the mean, not its first text
    # A prompt of one text is exactly what text_embeddings gives for the same batch: old runs keep their numbers.
    plain = text_embeddings(clip, ["a photo of a dog", "a photo of a bird"])
    alone = prompt_embeddings(clip, [["a photo of a dog"], ["a photo of a bird"]])
    assert torch.equal(plain, alone)


def test_a_run_with_an_ensemble_stores_its_logits_and_the_plain_method_agrees(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=6)
    clip = load_clip(str(tiny_clip), "cpu")
    dbs = {}
    for method in ("engine", "plain"):
        dbs[method] = tmp_path / f"{method}.duckdb"
        exp = write_experiment(tmp_path / f"{method}.toml", tiny_clip, coco, dbs[method], sweep="singles",
                               prompts=[("a photo of a bird", "bird")], more=TEMPLATES, batch_size=3)
        assert main(["run", str(exp), "--method", method, "--no-progress"]) == 0
    prompts = [p for (p,) in sql(dbs["engine"], "SELECT prompt FROM prompt_t ORDER BY prompt_id")]
    assert prompts == ["a photo of a bird", "mean of 3: a photo of a cat / a drawing of a cat / a cat in the picture",
                       "mean of 3: a photo of a dog / a drawing of a dog / a dog in the picture"]
    query = "SELECT image_id, ablation, prompt, logit FROM scores ORDER BY image_id, ablation, prompt"
    fast, plain = sql(dbs["engine"], query), sql(dbs["plain"], query)
    assert [r[:3] for r in fast] == [r[:3] for r in plain]
    assert max(abs(a[3] - b[3]) for a, b in zip(fast, plain, strict=True)) < 1e-4
    # The stored logits are those of the ensemble's mean embedding against the stored image embeddings.
    text = np.stack([one_by_one(clip, "a photo of a bird")] + [
        (m := np.mean([one_by_one(clip, t.replace("{label}", lab)) for t in ENSEMBLE], axis=0)) / np.linalg.norm(m)
        for lab in ("cat", "dog")])
    with store.connect(dbs["engine"], read_only=True) as con:
        keys, emb = store.embeddings(con, 1, list(range(1, 7)), "float32")
    logits = {(i, a, p): x for i, a, p, x in sql(
        dbs["engine"], "SELECT image_id, ablation_id, prompt_id, logit FROM score_t")}
    scale = float(clip.logit_scale)
    assert len(keys) == 6 * 13
    for (image_id, ablation_id), vector in zip(keys, emb, strict=True):
        e = vector.astype(np.float64)
        expected = scale * text @ (e / np.linalg.norm(e))
        assert np.allclose([logits[(image_id, ablation_id, p)] for p in range(3)], expected, atol=1e-4)


def test_rescore_with_an_ensemble_equals_a_run_with_it(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=6)
    db = tmp_path / "s.duckdb"
    parent = write_experiment(tmp_path / "p.toml", tiny_clip, coco, db, name="parent", sweep="singles")
    assert main(["run", str(parent), "--no-progress"]) == 0
    direct = write_experiment(tmp_path / "d.toml", tiny_clip, coco, db, name="direct", sweep="singles",
                              prompts=[("a photo of a bird", "bird")], more=TEMPLATES)
    assert main(["run", str(direct), "--no-progress"]) == 0
    prompts = [Prompt("a photo of a bird", "bird")] + [
        Prompt(f"mean of 3: {' / '.join(t.replace('{label}', lab) for t in ENSEMBLE)}", lab,
               [t.replace("{label}", lab) for t in ENSEMBLE]) for lab in ("cat", "dog")]
    rescore(db, "parent", prompts, "again", progress=False, echo=lambda _: None)
    query = ("SELECT image_id, ablation, prompt, logit FROM scores WHERE run = ? ORDER BY image_id, ablation, prompt")
    a, b = sql(db, query, ["direct"]), sql(db, query, ["again"])
    assert [r[:3] for r in a] == [r[:3] for r in b] and len(a) == 6 * 13 * 3
    assert max(abs(x[3] - y[3]) for x, y in zip(a, b, strict=True)) < 1e-4
