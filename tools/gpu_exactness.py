"""``python -m tools.gpu_exactness``: the engine against the plain method on the GPU, every kind and family.

The CPU tests hold the engine to the plain method (patch the modules, rerun the model per ablation) on tiny
models; on a GPU other kernels run (SDPA's fused kernels, masks, float16 matmuls), so this checks the same
on the study's shapes there: a ViT-B/16-shaped random CLIP and a SigLIP-B/16-shaped random SigLIP, in
float32, on a batch of random images, for the paper sweep and, for every registered kind with every target
the tower takes, whole layers, every head of a few layers, and mixed forms. Prints the largest |logit difference|
per family and group, and whether every selection agrees. ``--smoke``: tiny models, on whatever device.
Needs neither the dashboard nor streamlit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE = 1e-4  # as the CPU tests


def groups(n_layers: int, n_heads: int, cls: bool) -> dict[str, list[str]]:
    """Ablation texts by group, for a tower of n_layers x n_heads (with or without a CLS token): every
    registered kind with every target the tower takes (compute.kinds.kind_targets)."""
    from compute.kinds import kind_targets

    some = sorted({1, n_layers // 2, n_layers})
    forms = [(kind, f"/{target}" if target else "") for kind, target in kind_targets(cls)]
    mid = some[1]
    return {
        "layers": [f"{k}:{layer}{t}" for k, t in forms for layer in some] + [f"{k}:1,5,9{t}" for k, t in forms],
        "heads": [f"{k}:{layer}{t}/h{h}" for k, t in forms for layer in some for h in range(n_heads)],
        "mixed": [f"{k}:{mid - 1}-{mid + 2}{t}/h0,h2" for k, t in forms] + [f"{k}:1-{n_layers}{t}/h1" for k, t in forms],
    }


def check(model_dir: Path, device: str, n_images: int, seed: int = 0) -> dict[str, dict[str, float]]:
    import torch

    from compute.ablations import mean_needs, parse_ablation, sweep
    from compute.engine import SweepEngine, attention_means, plain_batch
    from compute.models import load_clip
    from compute.scoring import cosine_logits, logit_scale, text_embeddings, text_tokens
    from compute.towers import has_cls, n_heads_of, n_layers_of
    from tools.synthetic import PROMPTS

    clip = load_clip(str(model_dir), device, "float32")
    layers, heads, cls = n_layers_of(clip.model), n_heads_of(clip.model), has_cls(clip.model)
    size = int(clip.model.config.vision_config.image_size)
    torch.manual_seed(seed)
    pixels = torch.randn(n_images, 3, size, size, device=clip.device)  # (n, 3, size, size)
    texts = [t for t, _ in PROMPTS]
    text = text_embeddings(clip, texts)
    tokens = text_tokens(clip, texts)
    scale = logit_scale(clip)
    out = {}
    named = {"paper": [a.label for a in sweep("paper", layers)], **groups(layers, heads, cls)}
    for group, labels in named.items():
        ablations = [parse_ablation(t, layers, heads, cls) for t in labels]
        means = attention_means(clip.model, [pixels], mean_needs(ablations))
        start = time.perf_counter()
        emb = SweepEngine(clip.model, ablations, means).embeddings(pixels)
        fast = cosine_logits(torch.stack([emb[a] for a in ablations], dim=1), text, scale)  # (n, A, P)
        _, plain = plain_batch(clip.model, ablations, pixels, tokens, means)
        diff = float((fast - plain).abs().max())
        same = bool(torch.equal(fast.argmax(-1), plain.argmax(-1)))
        out[group] = {"ablations": len(ablations), "max_dlogit": diff, "selections_equal": same,
                      "seconds": time.perf_counter() - start}
        print(f"  {clip.family:<6} {group:<9} {len(ablations):>4} ablations: max |dlogit| {diff:.2e}, "
              f"selections equal: {same}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_exactness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on whatever device there is")
    parser.add_argument("--images", type=int, default=16, help="random images per check (default 16)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import torch

    from tools.synthetic import save_random_clip, save_vit_b16_shaped_clip
    from tools.synthetic_siglip import save_random_siglip, save_siglip_b16_shaped

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("needs a CUDA GPU; --smoke runs the same checks with tiny models on the CPU")
    print(f"== exactness on {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}, float32, "
          f"{args.images} images ==", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="clip-lab-exact-") as tmp:
        if args.smoke:
            models = {"clip": save_random_clip(Path(tmp) / "clip", layers=12, width=32, heads=4),
                      "siglip": save_random_siglip(Path(tmp) / "siglip", layers=12, width=32, heads=4)}
        else:
            models = {"clip": save_vit_b16_shaped_clip(Path(tmp) / "clip"),
                      "siglip": save_siglip_b16_shaped(Path(tmp) / "siglip")}
        for family, path in models.items():
            results[family] = check(path, device, args.images)
    worst = max(g["max_dlogit"] for r in results.values() for g in r.values())
    agree = all(g["selections_equal"] for r in results.values() for g in r.values())
    print(f"  worst |dlogit| {worst:.2e} (tolerance {TOLERANCE:g}); every selection equal: {agree}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if worst <= TOLERANCE and agree else 1


if __name__ == "__main__":
    sys.exit(main())
