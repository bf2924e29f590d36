"""Low precision with float32's answer (compute.precision): a bfloat16 run selects exactly what the float32 run
selects, on a tiny CLIP and a tiny SigLIP saved and reloaded, on the demo runs and through a Ray actor; its
unverified numbers stay within the measured tolerance, its verified pairs and judge hold float32's values, its
mean pass is float32's; a low-precision copy computes quick_gelu through SiLU, the same function; constructed
near ties show verification turning a low-precision pick back to float32's; ``--dtype auto`` picks bfloat16 on
a CPU whose flags say it runs it well, and records why."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sql

from compute import devices, precision
from compute.__main__ import main
from compute.ablations import sweeps
from compute.config import load_experiment
from compute.dataset import ImageRecord, open_image
from compute.engine import SweepEngine
from compute.models import fold_quick_gelu, load_clip, pixel_values, with_dtype
from compute.runner import run
from compute.scoring import cosine_logits, logit_scale, stacked
from compute.towers import has_cls, n_heads_of, n_layers_of
from tools.synthetic import make_coco, write_experiment

QUIET = {"progress": False, "echo": lambda _: None, "workers": 0}
# More prompts than labels, several alike, so that some top-two margins fall within the rounding.
PROMPTS = [("a photo of a dog", "dog"), ("a photo of a cat", "cat"), ("a photo of a bird", "bird"),
           ("a photo of a car", "car"), ("a photo of a black dog", "dog"), ("a photo of a black cat", "cat"),
           ("a photo of a small bird", "bird"), ("a photo of a red car", "car")]
EXTRA = ("mean:3", "zero:2/h1", "uniform:4")
PICKS = "SELECT image_id, ablation_id, prompt_id, correct FROM selection_t ORDER BY ALL"
ROWS = ("SELECT s.image_id, s.ablation_id, s.verified, s.score_baseline, list(c.logit ORDER BY c.prompt_id) "
        "FROM selection_t s JOIN score_t c USING (run_id, image_id, ablation_id) GROUP BY ALL ORDER BY 1, 2")
TOLERANCE = 0.25  # logits of unverified pairs: the largest error measured on these models was 0.13 (docs/precision.md)


def run_both(model: Path, coco: Path, tmp: Path, **kwargs) -> tuple[Path, Path, list[str]]:
    """The same experiment in float32 and in bfloat16 (verified); -> (float32 store, bfloat16 store, what the
    bfloat16 run said)."""
    said: list[str] = []
    dbs = []
    for dtype in ("float32", "bfloat16"):
        db = tmp / f"{dtype}.duckdb"
        exp = write_experiment(tmp / f"{dtype}.toml", model, coco, db, dtype=dtype, embeddings="float32", **kwargs)
        result = run(load_experiment(exp), **{**QUIET, "echo": said.append if dtype == "bfloat16" else QUIET["echo"]})
        assert result.complete
        dbs.append(db)
    return dbs[0], dbs[1], said


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_bfloat16_run_selects_what_the_float32_run_selects(family, tiny_clip, tiny_siglip, tmp_path):
    """Every pair's pick and correctness equal; the judge and the verified pairs are float32's (the unablated
    pairs bit for bit: the engine's float32 trunk); the other logits within the tolerance; the mean statistics
    are the float32 pass's, bit for bit; the decomposition, which reads the trunk, is the float32 run's."""
    model = tiny_clip if family == "clip" else tiny_siglip
    coco = make_coco(tmp_path / "coco", n=20)
    f32, bf16, said = run_both(model, coco, tmp_path, prompts=PROMPTS, extra=EXTRA, batch_size=6,
                               more="[decomposition]\nenabled = true\n")
    assert sql(bf16, PICKS) == sql(f32, PICKS)
    assert sql(bf16, "SELECT name, layer, data FROM stat_t ORDER BY ALL") == \
        sql(f32, "SELECT name, layer, data FROM stat_t ORDER BY ALL")

    want, got = sql(f32, ROWS), sql(bf16, ROWS)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    reasons = [r[2] for r in got]
    n_ablations = sql(bf16, "SELECT COUNT(*) FROM ablation_t")[0][0]
    assert reasons.count("baseline") == 20  # every image's unablated pass, the judge
    assert reasons.count("sample") == precision.CALIBRATION_IMAGES * (n_ablations - 1)
    assert reasons.count(None) > 0  # most pairs keep their low-precision values
    assert all(r[2] is None for r in sql(f32, ROWS))  # a float32 run verifies nothing
    for (_, _, reason, judge, logits), (_, _, _, judge32, logits32) in zip(got, want, strict=True):
        assert abs(judge - judge32) < 1e-5  # score_baseline: the float32 unablated embedding
        err = np.abs(np.array(logits) - np.array(logits32)).max()
        assert err < (1e-4 if reason is not None else TOLERANCE), (reason, err)
        assert reason != "baseline" or logits == logits32
    contributions = "SELECT image_id, component, layer, head, prompt, logit FROM contributions ORDER BY ALL"
    assert sql(bf16, contributions) and sql(bf16, contributions) == sql(f32, contributions)
    assert max(np.abs(np.array(r[4]) - np.array(w[4])).max() for r, w in zip(got, want, strict=True)) > 1e-4
    line = next(line for line in said if line.startswith("bfloat16 with float32 verification: "))
    took = re.search(r"float32 recomputation took ([\d.e+-]+) s of the sweep's ([\d.e+-]+) s$", line)  # what verifying cost
    assert took and 0 < float(took[1]) <= float(took[2]), line
    assert any(line.startswith("precision: bfloat16, verified in float32: ") for line in said)
    config = json.loads(sql(bf16, "SELECT config FROM runs")[0][0])
    assert config["dtype"] == {"asked": "bfloat16", "used": "bfloat16", "why": "asked for", "verified": True}


def test_margin_verification_happens_and_changes_nothing_a_float32_run_would_not(tiny_clip, tmp_path):
    """On a run long enough to pass its calibration images, some pairs are recomputed for their margin."""
    coco = make_coco(tmp_path / "coco", n=24)
    f32, bf16, said = run_both(tiny_clip, coco, tmp_path, prompts=PROMPTS, batch_size=8)
    assert sql(bf16, PICKS) == sql(f32, PICKS)
    margin = sql(bf16, "SELECT COUNT(*) FROM selection_t WHERE verified = 'margin'")[0][0]
    assert 0 < margin < 24 * 20  # some near ties, not every pair


def test_the_plain_method_in_bfloat16_is_verified_too(tiny_clip, tmp_path):
    """--method plain (the model's own logits, its text tower in bfloat16 too) selects float32's picks."""
    coco = make_coco(tmp_path / "coco", n=6)
    dbs = {}
    for dtype in ("float32", "bfloat16"):
        dbs[dtype] = tmp_path / f"{dtype}.duckdb"
        exp = write_experiment(tmp_path / f"{dtype}.toml", tiny_clip, coco, dbs[dtype], dtype=dtype, prompts=PROMPTS,
                               extra=("mean:3",), batch_size=3)
        assert run(load_experiment(exp), method="plain", **QUIET).complete
    assert sql(dbs["bfloat16"], PICKS) == sql(dbs["float32"], PICKS)
    assert sql(dbs["bfloat16"], "SELECT COUNT(*) FROM selection_t WHERE verified = 'baseline'") == [(6,)]


# --------------------------------------------------------------------------------------------------
# Constructed near ties.


def near_tie_prompts(u32: torch.Tensor, u16: torch.Tensor) -> torch.Tensor:
    """Two unit text vectors whose logits for the image embedding u32 (float32's, unit) and u16 (bfloat16's,
    unit) are ordered differently: their difference d has u32.d < 0 < u16.d, by a fraction of the rounding
    error r = u16 - u32. -> (2, E)."""
    r = u16 - u32
    r_perp = r - (r @ u32) * u32
    d = r_perp - 0.5 * (r_perp @ r_perp) * u32  # u32.d = -|r_perp|^2/2, u16.d ~ +|r_perp|^2/2
    m = u32 - (u32 @ d) / (d @ d) * d  # orthogonal to d, so |m + d| = |m - d|: the logits differ by 2 u.d / |m+d|
    pair = torch.stack([m + d, m - d])
    return pair / pair.norm(dim=-1, keepdim=True)


def test_verification_turns_a_near_tie_back_to_float32s_pick(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=8)
    exact = load_clip(str(tiny_clip), "cpu")
    fast = with_dtype(exact, "bfloat16")
    ablations = sweeps("paper", n_layers_of(exact.model), n_heads_of(exact.model), has_cls(exact.model))
    pixels = pixel_values(exact, [open_image(p) for p in sorted((coco / "images").glob("*.jpg"))])
    e32 = stacked(SweepEngine(exact.model, ablations).embeddings(pixels), ablations)  # (8, A, E)
    # what a verified run computes in low precision: the trunk (the unablated path) on the float32 model, every
    # branch in bfloat16 from the trunk's state
    e16 = stacked(SweepEngine(fast.model, ablations, trunk=exact.model).embeddings(pixels), ablations)
    unit = lambda e: e / e.norm(dim=-1, keepdim=True)  # noqa: E731
    image, ablation = 5, 7  # past the calibration images; an ablated pair (the baseline is always float32's)
    text = near_tie_prompts(unit(e32[image, ablation]), unit(e16[image, ablation]))
    scale = logit_scale(exact)
    want = cosine_logits(e32, text, scale).argmax(dim=-1)  # (8, A): float32's picks
    keep = list(range(len(ablations)))

    assert torch.equal(e16[:, 0], e32[:, 0])  # the trunk's unablated pass is float32's own, bit for bit
    low = cosine_logits(e16, text, scale).argmax(dim=-1)
    assert low[image, ablation] != want[image, ablation]  # the rounding flipped the constructed pair
    plain = precision.VerifiedSweep(exact, fast, ablations, {}, keep, text, scale, verify=False)(pixels)
    assert plain.verified is None and not plain.embeddings[:, 0].equal(e32[:, 0])  # unverified: all in bfloat16

    sweep = precision.VerifiedSweep(exact, fast, ablations, {}, keep, text, scale)
    swept = sweep(pixels)
    assert torch.equal(cosine_logits(swept.embeddings, text, scale).argmax(dim=-1), want)
    assert int(swept.verified[image, ablation]) == precision.MARGIN
    exact_pairs = swept.verified != 0
    assert torch.allclose(swept.embeddings[exact_pairs], e32[exact_pairs], atol=1e-5)
    assert torch.equal(swept.embeddings[~exact_pairs], e16[~exact_pairs])  # the rest as the low precision made it
    stats = sweep.stats
    assert stats.margin >= 1 and stats.sample == precision.CALIBRATION_IMAGES * (len(ablations) - 1)
    assert stats.bound == precision.SAFETY * stats.spread > 0


def test_low_precision_copies_fold_quick_gelu_into_silu_and_compute_the_same_function(tiny_clip, tiny_openclip):
    from transformers.activations import QuickGELUActivation

    exact = load_clip(str(tiny_clip), "cpu")
    size = exact.model.config.vision_config.image_size
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    ids = exact.processor(text=["a photo of a dog", "a cat"], return_tensors="pt", padding=True)["input_ids"]

    def towers(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            image = model.vision_model(pixel_values=pixels.to(dtype)).pooler_output.float()  # (4, width)
            text = model.text_model(input_ids=ids).pooler_output.float()  # (2, width)
        return image, text

    image, text = towers(exact.model)
    folded = copy.deepcopy(exact.model)
    n_mlps = exact.model.config.vision_config.num_hidden_layers + exact.model.config.text_config.num_hidden_layers
    assert fold_quick_gelu(folded) == n_mlps
    for got, want in zip(towers(folded), (image, text), strict=True):  # the same function, up to float32 rounding
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert fold_quick_gelu(folded) == 0  # nothing left to fold

    fast = with_dtype(exact, "bfloat16")  # the low-precision copy is folded, the float32 model is not
    acts = lambda model: {type(m.activation_fn).__name__ for m in model.modules() if hasattr(m, "fc1")}  # noqa: E731
    assert acts(exact.model) == {QuickGELUActivation.__name__} and acts(fast.model) == {"SiLU"}
    cos = torch.nn.functional.cosine_similarity(towers(fast.model, torch.bfloat16)[0], image, dim=-1)
    assert float(cos.min()) > 0.999  # bfloat16's rounding, not a different function
    assert fold_quick_gelu(load_clip(str(tiny_openclip), "cpu").model) == 0  # exact GELU is left as it is


# --------------------------------------------------------------------------------------------------
# The demo runs, and the Ray actor.


@pytest.mark.slow
def test_the_demo_runs_select_identically_in_bfloat16_and_float32(tmp_path):
    from compute.demo import EXPERIMENTS, SEED, SPLIT
    from compute.demo.data import write_coco

    data = tmp_path / "shapes"
    write_coco(data, SPLIT, 24, SEED)
    picks = {}
    for dtype in ("float32", "bfloat16"):
        db = tmp_path / f"{dtype}.duckdb"
        for path in EXPERIMENTS:
            exp = load_experiment(path)
            exp.model.captioner, exp.model.device, exp.model.dtype = "none", "cpu", dtype
            # the selections are compared here; a bfloat16 run's decomposition is tested above (tiny CLIP and
            # SigLIP) and its attribution in test_attribution_run
            exp.decomposition.enabled, exp.attribution.kinds = False, []
            exp.dataset.images = data / SPLIT
            exp.dataset.annotations = data / "annotations" / exp.dataset.annotations.name
            exp.dataset.limit, exp.store.db = 24, db
            assert run(exp, **QUIET).complete
        picks[dtype] = sql(db, "SELECT r.run, s.image_id, s.ablation_id, s.prompt_id, s.correct FROM selection_t s "
                               "JOIN run_t r USING (run_id) ORDER BY ALL")
    assert len(picks["float32"]) == 24 * (24 + 21 + 85 + 4 + 49)  # shapes, attributes, heads + flow, zero heads
    assert picks["bfloat16"] == picks["float32"]


def test_a_ray_actor_verifies_its_own_batches(tiny_clip, tmp_path):
    """The Ray actor, called as Ray Data calls it (no Ray needed): in bfloat16 its batches carry which pairs
    hold float32 values, and its picks are the float32 actor's."""
    from compute.distributed import to_result
    from compute.pixels import recipe
    from compute.ray_decode import decode
    from compute.ray_workers import SweepActor, SweepPlan, input_rows

    coco = make_coco(tmp_path / "coco", n=12)
    exact = load_clip(str(tiny_clip), "cpu")
    ablations = sweeps("paper", n_layers_of(exact.model), n_heads_of(exact.model), has_cls(exact.model))
    records = [ImageRecord(i, f"{i:012d}.jpg", coco / "images" / f"{i:012d}.jpg", ("cat",), coco / "images")
               for i in range(1, 13)]
    rows = input_rows(records, [label for _, label in PROMPTS])
    batch = {k: np.array([r[k] for r in rows]) if k != "path" else np.array([r[k] for r in rows], dtype=object)
             for k in rows[0]}
    shipped = recipe(exact.image_processor, ship_uint8=True)
    decoded = decode(batch, shipped.without_processor())
    keep = list(range(len(ablations)))
    results = {}
    for dtype in ("float32", "bfloat16"):
        plan = SweepPlan(str(tiny_clip), "cpu", dtype, ablations, keep, {}, [t for t, _ in PROMPTS], "none", shipped)
        actor = SweepActor(plan)
        results[dtype] = [to_result(actor({k: v[i:i + 6] for k, v in decoded.items()}), keep, set())
                          for i in (0, 6)]
    for low, full in zip(results["bfloat16"], results["float32"], strict=True):
        assert np.array_equal(low.selection.prompt_id, full.selection.prompt_id)
        assert full.selection.verified is None
        assert (low.selection.verified[:, 0] == precision.BASELINE).all()
    assert (results["bfloat16"][0].selection.verified[:precision.CALIBRATION_IMAGES, 1:] == precision.SAMPLE).all()


# --------------------------------------------------------------------------------------------------
# auto.


def test_dtype_auto_picks_bfloat16_where_the_cpu_flags_say_so_and_records_why(tiny_clip, tmp_path, monkeypatch,
                                                                             capsys):
    coco = make_coco(tmp_path / "coco", n=6)
    db = tmp_path / "auto.duckdb"
    exp = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, batch_size=3)
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"fpu", "avx512f", "avx512_bf16"})
    assert main(["run", str(exp), "--dtype", "auto", "--no-progress", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "precision: bfloat16 (auto: CPU with AVX512-BF16), verified in float32: " in out
    config = json.loads(sql(db, "SELECT config FROM runs")[0][0])
    assert config["dtype"] == {"asked": "auto", "used": "bfloat16", "why": "CPU with AVX512-BF16", "verified": True}
    assert config["identity"]["dtype"] == "auto"
    assert main(["list", "--db", str(db)]) == 0
    assert " bfloat16 verified (auto) " in capsys.readouterr().out

    # Without those flags auto is float32: exact, nothing verified (another run: auto resolves per invocation).
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"fpu", "avx2"})
    exp2 = write_experiment(tmp_path / "e2.toml", tiny_clip, coco, db, name="t2", batch_size=3, dtype="auto")
    assert main(["run", str(exp2), "--no-progress", "--workers", "0"]) == 0
    config = json.loads(sql(db, "SELECT config FROM runs WHERE run = 't2'")[0][0])
    assert config["dtype"]["used"] == "float32" and not config["dtype"]["verified"]
    assert sql(db, "SELECT COUNT(*) FROM selections WHERE run = 't2'") == [(6 * 21,)]
    assert sql(db, "SELECT COUNT(*) FROM selection_t s JOIN run_t r USING (run_id) WHERE r.run = 't2' "
                   "AND s.verified IS NOT NULL") == [(0,)]
