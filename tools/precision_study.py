"""``python -m tools.precision_study [CONFIG ...]``: how verified low precision's bound was chosen
(docs/precision.md, "How SAFETY and CALIBRATION_IMAGES were chosen").

For each configuration, every (image, ablation) pair is computed both ways: the engine as a verified
bfloat16 run computes it (the float32 trunk, branches in bfloat16) and the float32 engine. Printed, one
Markdown row each: the largest error spread of the run's ablated pairs, the largest over its first
CALIBRATION_IMAGES images (what the bound holds before it flags any other pair), their ratio, the headroom
SAFETY leaves, the pairs flagged past the calibration images, the bfloat16 picks that differ from float32's
and how many of those the bound missed (it must be 0), the largest logit error and the smallest cosine of
an ablated embedding with float32's, and an all-bfloat16 sweep's largest spread for comparison.
Configurations: vit (the ViT-B/16-shaped random CLIP, 32 images: a few minutes), shapes, heads, attributes
(the demo CLIP on its data), siglip, clip (tiny random models).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compute.ablations import mean_needs
from compute.config import Experiment, load_experiment
from compute.dataset import open_image
from compute.demo import EXPERIMENTS, N_IMAGES, SEED, SPLIT
from compute.demo.data import write_coco
from compute.engine import SweepEngine, attention_means, means_on
from compute.models import pixel_values, with_dtype
from compute.precision import CALIBRATION_IMAGES, SAFETY, near_tie
from compute.runner import prepare
from compute.scoring import cosine_logits, logit_scale, prompt_embeddings, stacked
from tools import synthetic
from tools.synthetic_siglip import save_random_siglip

CONFIGS = ["vit", "shapes", "heads", "attributes", "siglip", "clip"]
HEADER = ("| model, sweep, prompts | pairs | largest spread in the run | over the first two images | ratio | "
          f"headroom with SAFETY {SAFETY:g} | pairs flagged | bfloat16 picks that differed from float32's | "
          "missed | largest logit error | smallest embedding cosine | all-bfloat16 largest spread |")


def logits_of(engine: SweepEngine, pixels: torch.Tensor, ablations: list, text: torch.Tensor, scale,
              keep: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(n, A, P) cosine logits of the engine's embeddings (n, A, E), which ``keep`` gets."""
    emb = stacked(engine.embeddings(pixels), ablations)
    if keep is not None:
        keep.append(emb)
    return cosine_logits(emb, text, scale)


@torch.inference_mode()
def study(label: str, exp: Experiment, n: int, batch_size: int) -> str:
    """One configuration: ``n`` images of ``exp`` in batches of ``batch_size`` -> its Markdown row."""
    exp.dataset.limit, exp.model.dtype, exp.model.captioner = n, "float32", "none"
    prep = prepare(exp)
    clip, ablations = prep.clip, prep.ablations
    fast = with_dtype(clip, "bfloat16")
    text = prompt_embeddings(clip, [p.texts for p in exp.prompts])  # (P, E) normalised
    scale = logit_scale(clip)
    images = prep.images[:n]
    batches = [pixel_values(clip, [open_image(r.path) for r in images[i:i + batch_size]])
               for i in range(0, len(images), batch_size)]
    needs = mean_needs(ablations)
    means = attention_means(clip.model, batches, needs) if any(needs.values()) else {}
    m32, m16 = means_on(means, "cpu", torch.float32), means_on(means, "cpu", torch.bfloat16)
    verified = SweepEngine(fast.model, ablations, m16, trunk=clip.model)
    all_low = SweepEngine(fast.model, ablations, m16)
    exact = SweepEngine(clip.model, ablations, m32)
    embs: dict[str, list[torch.Tensor]] = {"low": [], "exact": []}
    low = torch.cat([logits_of(verified, px, ablations, text, scale, embs["low"]) for px in batches])[:, 1:]
    pure = torch.cat([logits_of(all_low, px.bfloat16(), ablations, text, scale) for px in batches])[:, 1:]
    ex = torch.cat([logits_of(exact, px, ablations, text, scale, embs["exact"]) for px in batches])[:, 1:]
    err, pure_err = low - ex, pure - ex  # (n, A-1, P)
    cosine = min(float(torch.nn.functional.cosine_similarity(low_emb[:, 1:], ex_emb[:, 1:], dim=-1).min())
                 for low_emb, ex_emb in zip(embs["low"], embs["exact"], strict=True))
    spread = err.amax(-1) - err.amin(-1)  # (n, A-1)
    first, largest = float(spread[:CALIBRATION_IMAGES].max()), float(spread.max())
    flagged = near_tie(low, SAFETY * first, torch.finfo(torch.bfloat16).eps, scale.bias)  # (n, A-1)
    flagged[:CALIBRATION_IMAGES] = True  # the calibration images hold float32's values
    differ = low.argmax(-1) != ex.argmax(-1)
    missed = int((differ & ~flagged).sum())
    return (f"| {label} | {len(images)} x {len(ablations)} | {largest:.3g} | {first:.3g} | {largest / first:.2f} | "
            f"{SAFETY * first / largest:.1f}x | {float(flagged[CALIBRATION_IMAGES:].float().mean()):.1%} | "
            f"{int(differ.sum())} | {missed} | {float(err.abs().max()):.3g} | {cosine:.6f} | "
            f"{float((pure_err.amax(-1) - pure_err.amin(-1)).max()):.3g} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.precision_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", metavar="CONFIG",
                        help=f"which to study: {', '.join(CONFIGS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
    args.configs = args.configs or CONFIGS
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="precision-study-"))
    demo_data = tmp / "shapes"

    def demo(index: int) -> Experiment:
        if not demo_data.exists():
            write_coco(demo_data, SPLIT, N_IMAGES, SEED)
        exp = load_experiment(EXPERIMENTS[index])
        exp.model.device = "cpu"
        exp.dataset.images = demo_data / SPLIT
        exp.dataset.annotations = demo_data / "annotations" / exp.dataset.annotations.name
        return exp

    def synthetic_exp(name: str, model: Path, n: int, batch_size: int, **kwargs) -> Experiment:
        """make_coco's images (``kwargs`` without "bench": the tests' tiny ones), the experiment's default
        prompts (with "bench": the bench's noise JPEGs and its four prompts)."""
        bench = kwargs.pop("bench", False)
        images = {"size": (256, 256), "noise": True} if bench else {}
        data = synthetic.make_coco(tmp / f"{name}-data", n=n, **images)
        more = {"categories": ()} if bench else {}
        return load_experiment(synthetic.write_experiment(tmp / f"{name}.toml", model, data, tmp / f"{name}.duckdb",
                                                          name=name, batch_size=batch_size, **more))

    print(HEADER, flush=True)
    for config in args.configs:
        if config == "vit":
            model = synthetic.save_vit_b16_shaped_clip(tmp / "vit")
            row = study("ViT-B/16-shaped random CLIP, paper, 4", synthetic_exp("vit", model, 32, 16, bench=True), 32, 16)
        elif config in ("shapes", "attributes", "heads"):
            index, label = {"shapes": (0, "paper, 5 shapes"), "attributes": (1, "paper, 35 attribute prompts"),
                            "heads": (2, "heads, 5 shapes")}[config]
            row = study(f"demo CLIP, {label}", demo(index), 64, 32)
        elif config == "siglip":
            row = study("tiny random SigLIP, paper, 4", synthetic_exp("siglip", save_random_siglip(tmp / "siglip"),
                                                                       24, 8), 24, 8)
        else:
            model = synthetic.save_random_clip(tmp / "clip", perturb=0.2)
            row = study("tiny random CLIP (perturbed), paper, 4", synthetic_exp("clip", model, 24, 8), 24, 8)
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
