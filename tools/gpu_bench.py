"""``python -m tools.bench gpu``: the whole run at GPU speed, on the study's model shape.

Builds a random CLIP shaped like openai/clip-vit-base-patch16 and 5,000 photo-like JPEGs of 640 x 480
(about 150 KB each, as COCO's), then prints:
- engine only: the paper sweep (21 ablations) on batches of 256 already on the GPU, float16, with the
  logits: images/s (the rate the loop can at best reach);
- the run as a whole process (``python -m compute run``, float16, batch 256, embeddings stored as float16):
  its loop's images/s (decode workers, the engine, the selection, the store writer), the fraction of the
  engine rate it reaches, the whole process's seconds, and where startup went (imports, model load, first
  batch);
- the engine alone in bfloat16 and float32 too (on a GPU);
- exactness on the GPU: the engine against the plain method (patch the modules, rerun the model per
  ablation) in float32 on the first 64 images: the largest |logit difference| and whether every selection
  agrees;
- precision: the same images as whole processes in float32 and each low precision verified in float32
  (compute/precision.py): seconds, the ratio against float32, the pairs verified, and every selection compared
  with float32's (the bench fails if one differs).
Acceptance on an H200 (issue 12): loop >= 700 images/s and >= 70% of the engine's rate, 5,000 images in at
most 15 s as a whole process. Needs CUDA; ``--smoke`` runs the same steps with a tiny model and 64 images on
whatever device there is (the CPU here), to check the bench itself. Imports neither the dashboard nor
streamlit (the GPU machine has neither).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEPT = re.compile(r"swept (\d+) images in ([\d.]+) s: ([\d.]+) images/s \(setup ([\d.]+) s, first batch after "
                   r"([\d.]+) s, (\d+) decode workers")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_rate(clip, pixels, rounds: int) -> float:
    """Images/s of the paper sweep with its logits on ``pixels`` (one batch on the device), ``rounds`` times."""
    import torch

    from compute.ablations import sweep
    from compute.engine import SweepEngine
    from compute.scoring import cosine_logits, logit_scale, text_embeddings
    from compute.towers import n_layers_of
    from tools.synthetic import PROMPTS

    ablations = sweep("paper", n_layers_of(clip.model))
    engine = SweepEngine(clip.model, ablations)
    text = text_embeddings(clip, [t for t, _ in PROMPTS])
    scale = logit_scale(clip)
    pixels = pixels.to(clip.device, clip.dtype)

    def once() -> torch.Tensor:
        emb = engine.embeddings(pixels)
        return cosine_logits(torch.stack([emb[a] for a in ablations], dim=1), text, scale)  # (n, A, P)

    once()  # warm up: kernels chosen, memory pooled
    _sync(clip.device)
    start = time.perf_counter()
    for _ in range(rounds):
        once()
    _sync(clip.device)
    return rounds * pixels.shape[0] / (time.perf_counter() - start)


def exactness(model: Path, device: str, pixels) -> tuple[float, bool]:
    """float32, engine against the plain method on ``pixels``: (max |dlogit|, every argmax equal)."""
    import torch

    from compute.ablations import sweep
    from compute.engine import SweepEngine, plain_batch
    from compute.models import load_clip
    from compute.scoring import cosine_logits, logit_scale, text_embeddings
    from compute.towers import n_layers_of
    from tools.synthetic import PROMPTS

    clip = load_clip(str(model), device, "float32")
    ablations = sweep("paper", n_layers_of(clip.model))
    texts = [t for t, _ in PROMPTS]
    pixels = pixels.to(clip.device, torch.float32)
    emb = SweepEngine(clip.model, ablations).embeddings(pixels)
    fast = cosine_logits(torch.stack([emb[a] for a in ablations], dim=1), text_embeddings(clip, texts),
                         logit_scale(clip))
    tokens = clip.processor.tokenizer(texts, padding=True, return_tensors="pt")
    tokens = {k: v.to(clip.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    _, plain = plain_batch(clip.model, ablations, pixels, tokens)
    return float((fast - plain).abs().max()), bool(torch.equal(fast.argmax(-1), plain.argmax(-1)))


def bench_gpu(tmp: Path, smoke: bool = False) -> dict[str, float]:
    import torch

    from compute.config import load_experiment
    from compute.loader import Loader, default_workers
    from compute.models import load_clip
    from tools.synthetic import make_coco, save_random_clip, save_vit_b16_shaped_clip, write_experiment

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("the gpu section needs a CUDA GPU; `python -m tools.bench gpu --smoke` checks it on the CPU")
    device, dtype = ("cuda", "float16") if cuda else ("cpu", "float32")
    images, batch, rounds = (64, 32, 2) if smoke else (5000, 256, 10)
    cores = default_workers()
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\n== gpu{' (smoke)' if smoke else ''}: {name}, {cores} cores; paper sweep, {images} JPEGs of 640x480, "
          f"batch {batch}, {dtype} ==", flush=True)
    print(f"  torch {torch.__version__}, CUDA build {torch.version.cuda}, CUDA available: {cuda}", flush=True)

    start = time.perf_counter()
    model = (save_random_clip(tmp / "clip", layers=12, width=32, heads=4, image_size=224, patch_size=32) if smoke
             else save_vit_b16_shaped_clip(tmp / "vit-b16"))
    made_model = time.perf_counter() - start
    start = time.perf_counter()
    data = make_coco(tmp / "coco", images, size=(640, 480), photo=True, workers=cores)
    made_data = time.perf_counter() - start
    files = sorted((data / "images").glob("*.jpg"))
    kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    print(f"  made the model in {made_model:.1f} s and {images} JPEGs (mean {kb:.0f} KB) in {made_data:.1f} s",
          flush=True)

    # One batch of the real images' pixels, decoded as the run decodes them, for the engine and exactness.
    from compute.dataset import load_dataset

    exp = load_experiment(write_experiment(tmp / "bench.toml", model, data, tmp / "bench.duckdb", name="gpu-bench",
                                           batch_size=batch, categories=(), embeddings="float16", device=device,
                                           dtype=dtype))
    records = load_dataset(exp.dataset, [p.label for p in exp.prompts])
    start = time.perf_counter()
    clip = load_clip(str(model), device, dtype)
    load_s = time.perf_counter() - start
    with Loader(clip.processor.image_processor, clip.device, torch.float32, batch, cores) as loader:
        pixels = next(iter(loader.batches(records[:batch]))).pixel_values  # (batch, 3, 224, 224) float32
    engine = engine_rate(clip, pixels, rounds)
    del clip
    print(f"  engine only (batches on the device, {dtype}): {engine:8.1f} images/s", flush=True)
    rates = {}
    for other in ("bfloat16", "float32") if cuda else ():  # what each precision's arithmetic costs, unverified
        rates[f"engine_{other}_images_per_s"] = engine_rate(load_clip(str(model), device, other), pixels, 3)
        print(f"  engine only, {other}: {rates[f'engine_{other}_images_per_s']:8.1f} images/s", flush=True)

    # The imports alone: os._exit skips the interpreter's teardown, which after torch and transformers takes
    # 1-3 s more (a run skips it too: compute.__main__.exit_now).
    import_s = _timed([sys.executable, "-c",
                       "import os, compute.runner; from transformers import CLIPModel; os._exit(0)"])
    whole, stdout = _whole_run(tmp / "bench.toml")
    n, sweep_s, rate, setup_s, first_s, workers = SWEPT.search(stdout).groups()
    loop = float(rate)
    print(f"  the run as a whole process: {whole:6.1f} s for {n} images, embeddings stored (float16)")
    print(f"    its loop: {loop:8.1f} images/s = {loop / engine:.0%} of the engine's rate ({workers} decode workers)")
    print(f"    startup: imports {import_s:.1f} s (alone), model and data loaded {float(setup_s):.1f} s in the run "
          f"({load_s:.1f} s for the model alone), first batch {float(first_s):.2f} s after the loop started",
          flush=True)

    max_diff, same = exactness(model, device, pixels[:64])
    print(f"  exactness, float32 on {device}: engine vs plain max |dlogit| {max_diff:.2e}; every selection equal: "
          f"{same}", flush=True)
    if not smoke:
        ok = loop >= 700 and loop >= 0.7 * engine and whole <= 15
        print(f"  acceptance (loop >= 700 images/s, >= 70% of the engine, <= 15 s whole): {'met' if ok else 'NOT met'}")
    figures = precision_runs(tmp, model, data, batch, device, dtype, whole, tmp / "bench.duckdb")
    return {**figures, **rates, "device": name, "cores": cores, "images": int(n), "batch": batch, "jpeg_kb": kb,
            "engine_images_per_s": engine, "loop_images_per_s": loop, "loop_fraction": loop / engine,
            "whole_process_s": whole, "sweep_s": float(sweep_s), "setup_s": float(setup_s), "import_s": import_s,
            "model_load_s": load_s, "first_batch_s": float(first_s), "workers": int(workers),
            "exact_max_dlogit": max_diff, "exact_selections_equal": same}


def precision_runs(tmp: Path, model: Path, data: Path, batch: int, device: str, ran: str, ran_s: float,
                   ran_db: Path) -> dict[str, float]:
    """The same images as whole processes in float32 and each low precision (verified in float32, issue 25):
    seconds, the speed ratio against float32, the pairs verified, and every selection compared with float32's
    pair by pair (the bench fails if one differs). ``ran``: the dtype of the run above, reused."""
    from tools.synthetic import write_experiment

    dtypes = ["float32", "float16", "bfloat16"] if device == "cuda" else ["float32", "bfloat16"]
    seconds, dbs, figures = {ran: ran_s}, {ran: ran_db}, {}
    print("  precision, whole processes on the same images (low precision verified in float32):", flush=True)
    for dtype in dtypes:
        if dtype not in dbs:
            dbs[dtype] = tmp / f"bench-{dtype}.duckdb"
            toml = write_experiment(tmp / f"bench-{dtype}.toml", model, data, dbs[dtype], name="gpu-bench",
                                    batch_size=batch, categories=(), embeddings="float16", device=device,
                                    dtype=dtype)
            seconds[dtype], stdout = _whole_run(toml)
            verified = next((line.strip() for line in stdout.splitlines() if "float32 verification" in line), "")
            print(f"    {dtype:<9} {seconds[dtype]:6.1f} s  {verified}", flush=True)
        else:
            print(f"    {dtype:<9} {seconds[dtype]:6.1f} s  (the run above)", flush=True)
    picks, counts = {}, {}
    for dtype, db in dbs.items():
        picks[dtype], counts[dtype] = stored_picks(db, "gpu-bench")
    for dtype in dtypes[1:]:
        differ = sum(a != b for a, b in zip(picks["float32"], picks[dtype], strict=True))
        pairs = sum(counts[dtype].values())
        verified = pairs - counts[dtype].get(None, 0)
        ratio = seconds["float32"] / seconds[dtype]
        print(f"    {dtype}: {ratio:.2f}x faster than float32; {verified:,} of {pairs:,} pairs verified in float32 "
              f"({verified / pairs:.1%}); selections identical to float32's: {pairs - differ:,} of {pairs:,}",
              flush=True)
        figures |= {f"{dtype}_whole_s": seconds[dtype], f"{dtype}_speedup": ratio,
                    f"{dtype}_verified_fraction": verified / pairs, f"{dtype}_selections_differing": differ}
        if differ:
            raise SystemExit(f"precision: {differ} selection(s) of the {dtype} run differ from float32's")
    return figures | {"float32_whole_s": seconds["float32"]}


def stored_picks(db: Path, name: str) -> tuple[list, dict]:
    """Run ``name`` of store ``db``: its selections, (image, prompt) per (image, ablation) in order, to compare
    pair by pair with another precision's; and its pairs per verification reason (store.verified_counts)."""
    from compute import store

    with store.connect(db, read_only=True) as con:
        run_id = store.find_run(con, name).run_id
        return store.selected_prompts(con, run_id), store.verified_counts(con, run_id)


def _whole_run(toml: Path) -> tuple[float, str]:
    """``python -m compute run toml`` as a process: (seconds, its stdout); fails loudly."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": _pythonpath()}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compute", "run", str(toml), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run failed ({toml.name}):\n{proc.stderr[-3000:]}")
    if SWEPT.search(proc.stdout) is None:
        raise SystemExit(f"no 'swept ...' line in the run's output:\n{proc.stdout[-2000:]}")
    return seconds, proc.stdout


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start
