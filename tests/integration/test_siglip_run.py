"""A whole SigLIP run (conftest.siglip_store: the paper and flow sweeps of a tiny SiglipModel with BLIP
captions, and its rescore), through the same experiment file, store, export and dashboard as CLIP: the stored
logits are the model's own, the run records its family, and every page draws it."""

from __future__ import annotations

import pytest
import torch
from helpers import APP, SIGLIP_EXTRAS, sql
from streamlit.testing.v1 import AppTest

from compute.__main__ import main
from compute.dataset import open_image
from compute.models import BACKEND
from compute.store import DB_ENV
from dashboard.pages import DEFAULT, page_info
from tools.synthetic import write_experiment

N_LAYERS = 6  # the tiny SigLIP


def own_logits(model_path: str, paths: list[str], texts: list[str]) -> torch.Tensor:
    """The model's own logits_per_image, fed by its own processor as documented (padding to max_length)."""
    from transformers import SiglipModel, SiglipProcessor

    model = SiglipModel.from_pretrained(model_path).eval()
    processor = SiglipProcessor.from_pretrained(model_path, **BACKEND)
    inputs = processor(text=texts, images=[open_image(p) for p in paths], padding="max_length",
                       max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs).logits_per_image  # (images, prompts)


def stored_logits(db, run: str, ablation: str = "baseline") -> tuple[list[str], list[str], torch.Tensor]:
    rows = sql(db, """SELECT i.path, p.prompt, s.logit FROM score_t s
                      JOIN run_t r USING (run_id)
                      JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
                      JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
                      JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
                      WHERE r.run = ? AND a.ablation = ? ORDER BY s.image_id, s.prompt_id""", [run, ablation])
    paths = list(dict.fromkeys(r[0] for r in rows))
    prompts = list(dict.fromkeys(r[1] for r in rows))
    return paths, prompts, torch.tensor([r[2] for r in rows]).view(len(paths), len(prompts))


@pytest.mark.parametrize("run", ["sig", "sig-new"])
def test_stored_logits_are_the_models_own_scale_times_cosine_plus_bias(siglip_store, run):
    model = sql(siglip_store, "SELECT model FROM runs WHERE run = ?", [run])[0][0]
    paths, prompts, logits = stored_logits(siglip_store, run)
    assert len(paths) == 8 and len(prompts) == (4 if run == "sig" else 2)
    torch.testing.assert_close(logits, own_logits(model, paths, prompts), atol=1e-4, rtol=1e-5)
    # prob stays the softmax over the run's prompts (the bias cancels in it), the selection its argmax
    probs = dict(((i, p), (logit, prob)) for i, p, logit, prob in sql(siglip_store, """
        SELECT image_id, prompt, logit, prob FROM scores WHERE run = ? AND ablation = 'baseline'""", [run]))
    for image in {i for i, _ in probs}:
        row = torch.tensor([probs[(image, p)][0] for p in prompts])
        torch.testing.assert_close(torch.tensor([probs[(image, p)][1] for p in prompts]), row.softmax(-1))


def test_the_run_records_its_family_and_the_sweeps_a_tower_without_cls_has(siglip_store):
    import json

    for run in ("sig", "sig-new"):
        config = json.loads(sql(siglip_store, "SELECT config FROM runs WHERE run = ?", [run])[0][0])
        assert config["vision"]["family"] == "siglip" and config["vision"]["cls_token"] is False
        assert config["vision"]["tokens"] == 16 and config["vision"]["logit_bias"] == pytest.approx(-1.7, abs=0.5)
    ablations = [r[0] for r in sql(siglip_store, """SELECT ablation FROM ablation_t JOIN run_t USING (run_id)
                                                    WHERE run = 'sig' ORDER BY ablation_id""")]
    flow = [a for a in ablations if a.startswith("knockout:") and "/h" not in a]
    assert flow == [f"knockout:{layer}/patches>patches" for layer in range(1, N_LAYERS + 1)]
    assert ablations[-len(SIGLIP_EXTRAS):] == list(SIGLIP_EXTRAS)
    # every (image, ablation) scored and captioned, the caption judged by SigLIP's own cosine
    assert sql(siglip_store, "SELECT COUNT(*), COUNT(caption) FROM selections WHERE run = 'sig'")[0] == (
        8 * len(ablations), 8 * len(ablations))


def test_caption_scores_are_siglip_cosines_of_the_unablated_image(siglip_store):
    from transformers import SiglipModel, SiglipProcessor

    model_path = sql(siglip_store, "SELECT model FROM runs WHERE run = 'sig'")[0][0]
    path, caption, score = sql(siglip_store, """SELECT i.path, s.caption, s.caption_score FROM selections s
        JOIN image_t i ON i.image_id = s.image_id JOIN run_t r ON r.run_id = i.run_id AND r.run = s.run
        WHERE s.run = 'sig' AND s.ablation = 'identity:3' ORDER BY s.image_id LIMIT 1""")[0]
    model = SiglipModel.from_pretrained(model_path).eval()
    processor = SiglipProcessor.from_pretrained(model_path, **BACKEND)
    inputs = processor(text=[caption], images=[open_image(path)], padding="max_length", truncation=True,
                       max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    assert score == pytest.approx(float(out.image_embeds[0] @ out.text_embeds[0]), abs=1e-5)


def test_a_cls_knockout_on_siglip_is_one_line_exit_2_and_writes_nothing(tiny_siglip, tiny_coco, tmp_path, capsys):
    path = write_experiment(tmp_path / "bad.toml", tiny_siglip, tiny_coco, tmp_path / "bad.duckdb",
                            extra=("knockout:3/patches>cls",))
    assert main(["run", str(path), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ablation 'knockout:3/patches>cls'")
    assert "needs a CLS token, and this vision tower has none" in lines[0]
    assert not (tmp_path / "bad.duckdb").exists()


def test_the_figure_pack_says_which_family_made_it(siglip_store, tmp_path):
    from analysis.figures import write_pack

    written = {p.name for p in write_pack(siglip_store, "sig", tmp_path, formats=("svg",), image_id=3,
                                          image_ablation="identity:2")}
    readme = (tmp_path / "README.md").read_text()
    assert "Vision tower: SigLIP vision tower (no CLS token" in readme and "logit_bias" in readme
    assert "image3_attention_identity_2.png" in written and "flow.svg" in written
    assert sql(siglip_store, "SELECT model FROM runs WHERE run = 'sig'")[0][0] in readme


@pytest.fixture
def page(siglip_store, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(siglip_store))

    def open_page(name: str, **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update({"run": "sig", **params})
        at.run()
        if name != DEFAULT:
            at.switch_page(page_info(name).path).run()
        assert not at.exception, at.exception[0].value
        return at

    return open_page


@pytest.mark.parametrize("name", ["overview", "layers", "heads", "failures", "compare", "prompt_lab", "export"])
def test_every_page_draws_a_siglip_run_and_the_sidebar_names_the_family(page, name):
    at = page(name)
    assert any("SigLIP vision tower" in c.value for c in at.sidebar.caption)
    assert not at.warning


def test_flow_page_shows_the_one_knockout_a_tower_without_cls_has(page):
    at = page("flow")
    legend = "\n".join(m.value for m in at.markdown)
    assert "a patch reads only itself: this tower has no CLS token" in legend and "patches>cls" not in legend


def test_image_page_draws_siglip_attention_maps_with_the_pooling_head(page):
    at = page("image", image="3", ablation="knockout:5/patches>patches/h0,h2")
    assert not at.warning  # the maps were computed, not refused
    captions = "\n".join(c.value for c in at.caption)
    assert "averaged over every query token" in captions and "siglip vision tower" in captions
